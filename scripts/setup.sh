#!/usr/bin/env bash
# Installs everything Wharf needs on a Debian machine: OS packages that are missing,
# then the Python virtualenv at .venv with Wharf and its pinned dependency ranges.
# Idempotent; `make` runs it when pyproject.toml or this file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=4
step() { echo "setup: [$1/$STEPS] $2"; }  # numbered steps; pip shows its own progress on a terminal

step 1 "OS packages (Java, Maven, Mosquitto, ClickHouse, Chromium)"

need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
[ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null || need+=(mosquitto)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
[ -x /usr/sbin/clickhouse-server ] || need+=(clickhouse-server)
command -v clickhouse-client >/dev/null || need+=(clickhouse-client)
command -v chromium >/dev/null || need+=(chromium)          # the dashboard's browser test
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing OS packages: ${need[*]}"
  $SUDO apt-get update -qq
  # The packages' own services are not used (Wharf starts its own instances); keep apt from starting them.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null; $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

PYTHON="${PYTHON:-python3}"
step 2 "Python virtualenv at .venv"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
step 3 "Python packages into .venv, from pyproject.toml (first time: a few minutes, torch is large)"
.venv/bin/python -m pip install -q -e ".[dev]"
step 4 "checking the installed packages (pip check)"
.venv/bin/python -m pip check
echo "setup: done; the CLI is .venv/bin/wharf"
