#!/usr/bin/env bash
# The test run: start the real servers on test ports, run pytest, stop the servers.
# Fails loudly if a server does not start; pytest's "no tests collected" (exit 5) is a failure too.
set -uo pipefail
cd "$(dirname "$0")/.."
export WHARF_CONFIG="${WHARF_CONFIG:-tests/wharf-test.toml}"
export PYTHONUNBUFFERED=1
started=$(date +%s)

.venv/bin/wharf infra down >/dev/null 2>&1 || true
if ! .venv/bin/wharf infra up --services kafka,mosquitto,clickhouse; then
  echo "test: a service failed to start (see the message above and its log); not running the tests" >&2
  .venv/bin/wharf infra down || true
  exit 1
fi
.venv/bin/wharf infra status

.venv/bin/python -m pytest "$@"
rc=$?
.venv/bin/wharf infra down || true
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests" >&2
  rc=1
fi
echo "test: finished with exit code $rc in $(( $(date +%s) - started ))s"
exit "$rc"
