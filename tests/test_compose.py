"""docker-compose.yml, Dockerfile and deploy/ checked against the code.

No Docker engine is needed: the compose file is parsed with PyYAML and every
value that Wharf reads (WHARF_* settings, topics, MQTT users and ACL, listeners,
ports, ClickHouse credentials) is compared with what the code defines or
generates for the native stack (`wharf infra up`). `docker compose config` is
run as well when a compose client is installed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import yaml  # noqa: E402 - pyyaml is a dev dependency

from wharf.infra.kafka import KAFKA_VERSION  # noqa: E402
from wharf.infra.mosquitto import acl_text  # noqa: E402
from streams.runtime.topics import SPECS  # noqa: E402
from schemas.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
MOSQUITTO_DIR = ROOT / "deploy" / "mosquitto"
GRAFANA_DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"

# Services that run the repo's image (Wharf's own code, configured by WHARF_*).
WHARF_SERVICES = ("kafka-init", "mosquitto-init", "wharf-worker", "wharf-bridge")
# The operator's .env (never committed): what Compose interpolates into ${NAME:?...} references.
DOTENV = {"WHARF_MQTT_BRIDGE_PASSWORD": "compose-bridge-pw-1", "WHARF_CLICKHOUSE_PASSWORD": "compose-ch-pw-2",
          "WHARF_MQTT_DEVICES": "dev-001:compose-dev-pw-3", "WHARF_MQTT_DEVICE_REGISTRY": "dev-001=site-1/zone-a",
          "WHARF_WEB_OPERATOR_TOKENS": "compose-operator-token-4", "WHARF_WEB_API_KEYS": "compose-api-key-5",
          "WHARF_WEB_METRICS_TOKENS": "compose-metrics-token-6"}
_REF = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def interpolate(value: str) -> str:
    """Compose's ${NAME}, ${NAME:?message} and ${NAME:-default} with DOTENV; $$ is a literal $ for the container."""
    def one(m: re.Match) -> str:
        if m.group(1) in DOTENV:
            return DOTENV[m.group(1)]
        default = re.match(r"\$\{\w+:?-([^}]*)\}", m.group(0))
        assert default, f"{m.group(0)} has no value in the test .env"
        return default.group(1)
    return _REF.sub(one, value).replace("$$", "$")


# --- helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]) -> Settings:
    """Settings as a container with exactly `env` sees them: no other WHARF_* variable, no TOML file."""
    import os

    for name in list(os.environ):
        if name.startswith("WHARF_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WHARF_CONFIG", str(tmp_path / "no-such-wharf.toml"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def dockerfile_env() -> dict[str, str]:
    """WHARF_* variables set by ENV lines of the Dockerfile (KEY=VALUE form, with continuations)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line):
                out[key] = value
    return {k: v for k, v in out.items() if k.startswith("WHARF_")}


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def listeners(spec: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    out = {}
    for item in spec.split(","):
        name, _, addr = item.strip().partition("://")
        out[name] = host_port(addr)
    return out


def published(service: dict) -> dict[int, int]:
    """{container port: host port} of the service's `ports` (short syntax)."""
    out = {}
    for item in service.get("ports", []):
        parts = str(item).split("/")[0].split(":")
        out[int(parts[-1])] = int(parts[-2])
    return out


def service_names(service_name: str, service: dict) -> set[str]:
    """Names under which other containers reach a service."""
    return {service_name, *([service["hostname"]] if "hostname" in service else [])}


def properties(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def conf_lines(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.append((key, value.strip()))
    return out


def wharf_commands() -> set[str]:
    import typer

    from wharf.cli import app

    return set(typer.main.get_command(app).commands)


# --- the file itself -----------------------------------------------------------


def test_compose_has_the_stack(services: dict) -> None:
    assert {"kafka", "kafka-init", "mosquitto", "clickhouse", "wharf-worker", "wharf-bridge"} <= set(services)


def test_named_volumes_are_declared(compose: dict, services: dict) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = str(vol).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source!r} is not declared under top-level volumes"
            else:
                assert (ROOT / source).exists(), f"{name}: bind-mount source {source} does not exist"


def test_images_are_pinned(services: dict) -> None:
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    repo, _, tag = services["clickhouse"]["image"].partition(":")
    assert repo == "clickhouse/clickhouse-server"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)*", tag), f"ClickHouse image tag {tag!r} is not a numeric version"
    for name in WHARF_SERVICES:
        assert services[name]["build"]["context"] == "."
        assert services[name]["build"].get("dockerfile", "Dockerfile") == "Dockerfile"


# --- settings ------------------------------------------------------------------


def test_every_wharf_variable_is_a_setting_and_valid(services: dict, monkeypatch, tmp_path) -> None:
    fields = {f"WHARF_{name.upper()}" for name in Settings.model_fields}
    sources = {f"service {name}": env_of(svc) for name, svc in services.items()}
    sources["Dockerfile"] = dockerfile_env()
    for where, env in sources.items():
        unknown = {k for k in env if k.startswith("WHARF_")} - fields
        assert not unknown, f"{where}: {sorted(unknown)} are not settings in schemas/settings.py"
    for name in WHARF_SERVICES:
        env = {**dockerfile_env(), **env_of(services[name])}
        isolated_settings(monkeypatch, tmp_path, env)  # raises if a value does not validate


def container_settings(services: dict, name: str, monkeypatch, tmp_path) -> Settings:
    return isolated_settings(monkeypatch, tmp_path, {**dockerfile_env(), **env_of(services[name])})


# --- Kafka ---------------------------------------------------------------------


def test_kafka_is_single_node_kraft(services: dict) -> None:
    env = env_of(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1
    node, _, addr = voters[0].partition("@")
    assert node == env["KAFKA_NODE_ID"]
    lst = listeners(env["KAFKA_LISTENERS"])
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    host, port = host_port(addr)
    assert host in service_names("kafka", services["kafka"]) and lst[controller][1] == port
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in lst
    protocol_map = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(lst) == set(protocol_map)
    assert set(listeners(env["KAFKA_ADVERTISED_LISTENERS"])) <= set(lst) - {controller}
    assert "healthcheck" in services["kafka"]
    assert any(str(v).endswith(":" + env["KAFKA_LOG_DIRS"]) for v in services["kafka"]["volumes"]), "Kafka data is not on a volume"


def test_kafka_matches_the_native_broker_config(services: dict, monkeypatch, tmp_path) -> None:
    """Every broker property `wharf infra up` sets, except addresses and paths, is set the same way here."""
    from wharf.infra.kafka import Kafka

    settings = isolated_settings(monkeypatch, tmp_path, {"WHARF_STATE_DIR": str(tmp_path / "state")})
    kafka = Kafka(settings)
    kafka._write_config()
    native = properties(kafka.dir / "server.properties")
    env = env_of(services["kafka"])
    from_env = {k[len("KAFKA_"):].lower().replace("_", "."): v for k, v in env.items() if k.startswith("KAFKA_")}
    addresses = {"listeners", "advertised.listeners", "controller.quorum.voters", "log.dirs", "listener.security.protocol.map",
                 "inter.broker.listener.name", "controller.listener.names"}
    for key, value in native.items():
        if key in addresses:
            continue
        assert key in from_env, f"kafka: {key}={value} (wharf/infra/kafka.py) is not set in docker-compose.yml"
        assert from_env[key] == value, f"kafka: {key} is {from_env[key]!r} in compose, {value!r} natively"
    assert env["KAFKA_HEAP_OPTS"].split()[0] == f"-Xmx{settings.kafka_heap}"


def test_wharf_reaches_kafka_on_the_internal_listener(services: dict, monkeypatch, tmp_path) -> None:
    env = env_of(services["kafka"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(env["KAFKA_LISTENERS"])
    for name in (n for n in WHARF_SERVICES if n != "mosquitto-init"):  # it only writes Mosquitto's files
        s = container_settings(services, name, monkeypatch, tmp_path)
        host, port = host_port(s.kafka_bootstrap)
        assert host in service_names("kafka", services["kafka"]), f"{name}: bootstrap {s.kafka_bootstrap} is not the kafka service"
        matching = [lname for lname, addr in advertised.items() if addr == (host, port)]
        assert matching, f"{name}: {s.kafka_bootstrap} is not an advertised listener of kafka"
        assert bound[matching[0]][1] == port
        deps = services[name].get("depends_on", {})
        assert "kafka" in deps or deps.get("kafka-init", {}).get("condition") == "service_completed_successfully"


def test_host_listener_matches_the_default_bootstrap(services: dict, monkeypatch, tmp_path) -> None:
    """A `wharf` CLI on the host, with default settings, reaches the compose broker."""
    defaults = isolated_settings(monkeypatch, tmp_path, {})
    host, port = host_port(defaults.kafka_bootstrap)
    env = env_of(services["kafka"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    assert (host, port) in advertised.values()
    name = next(n for n, addr in advertised.items() if addr == (host, port))
    assert published(services["kafka"]).get(listeners(env["KAFKA_LISTENERS"])[name][1]) == port


def test_kafka_init_creates_exactly_wharfs_topics(services: dict, monkeypatch, tmp_path) -> None:
    """Run kafka-init's own command with ensure_topics replaced by a recorder."""
    import wharf.infra.kafka
    import schemas.settings
    from streams.runtime.topics import topic_names

    init = services["kafka-init"]
    assert init["entrypoint"] == ["python", "-c"]
    (code,) = init["command"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init.get("restart", "no") == "no"

    container = container_settings(services, "kafka-init", monkeypatch, tmp_path)
    calls = []

    async def record(settings, names, partitions, configs=None):  # noqa: ANN001
        calls.append((settings.kafka_bootstrap, list(names), partitions))
        return list(names)

    monkeypatch.setattr(wharf.infra.kafka, "ensure_topics", record)
    monkeypatch.setattr(schemas.settings, "get_settings", lambda: container)
    exec(compile(code, "kafka-init", "exec"), {"__name__": "__main__"})

    defaults = isolated_settings(monkeypatch, tmp_path, {})
    assert calls == [(container.kafka_bootstrap, topic_names(defaults), defaults.topic_partitions)]
    assert len(set(calls[0][1])) == len(SPECS)


def test_wharf_services_wait_for_topics(services: dict) -> None:
    for name in ("wharf-worker", "wharf-bridge"):
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


# --- Mosquitto -----------------------------------------------------------------


def mosquitto_conf() -> list[tuple[str, str]]:
    return conf_lines((MOSQUITTO_DIR / "mosquitto.conf").read_text())


def _passwd_ok(password: str, entry: str) -> bool:
    parts = entry.split("$")
    if parts[1] == "7":  # $7$iterations$salt$hash: PBKDF2-HMAC-SHA512 (mosquitto >= 2.0)
        iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
        return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(digest)) == digest
    raise AssertionError(f"unknown mosquitto password hash type ${parts[1]}$")


def run_mosquitto_init(services: dict, monkeypatch, tmp_path) -> tuple[Settings, Path]:
    """Run mosquitto-init's own command (the operator's .env: DOTENV) into a folder; return its settings and the folder."""
    import sys

    import schemas.settings

    init = services["mosquitto-init"]
    assert init["entrypoint"] == ["python", "-c"] and init.get("restart", "no") == "no"
    code, target = init["command"]
    assert any(str(v).endswith(":" + target) for v in init["volumes"])
    container = container_settings(services, "mosquitto-init", monkeypatch, tmp_path)
    monkeypatch.setattr(schemas.settings, "get_settings", lambda: container)
    out = tmp_path / "mosquitto-config"
    out.mkdir()
    monkeypatch.setattr(sys, "argv", ["-c", str(out)])
    exec(compile(code, "mosquitto-init", "exec"), {"__name__": "__main__"})
    return container, out


def test_mosquitto_init_writes_the_acl_and_passwords_from_the_operators_env(services: dict, monkeypatch, tmp_path) -> None:
    s, out = run_mosquitto_init(services, monkeypatch, tmp_path)
    assert (out / "acl").read_text() == acl_text(s)
    assert "user dev-001\ntopic write wharf/site-1/zone-a/dev-001/telemetry" in (out / "acl").read_text()
    devices = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    services_ = dict(line.split(":", 1) for line in (out / "passwd-services").read_text().splitlines())
    assert set(devices) == {"dev-001"} and set(services_) == {s.mqtt_bridge_user}
    assert _passwd_ok("compose-dev-pw-3", devices["dev-001"]) and not _passwd_ok("dev-001-secret", devices["dev-001"])
    assert _passwd_ok("compose-bridge-pw-1", services_[s.mqtt_bridge_user])
    assert {"ca.crt", "server.crt", "server.key"} <= {p.name for p in (out / "tls").iterdir()}


def test_no_usable_default_password_is_committed(services: dict) -> None:
    assert not (MOSQUITTO_DIR / "passwd").exists() and not (MOSQUITTO_DIR / "acl").exists()
    text = COMPOSE.read_text() + "".join(f.read_text() for f in GRAFANA_DATASOURCES.glob("*.y*ml"))
    for literal in ("wharf-secret", "wharf-bridge-secret", "-secret"):
        assert literal not in text
    raw = {k: str(v) for svc in services.values() for k, v in (svc.get("environment") or {}).items()}
    for key, value in raw.items():
        if "PASSWORD" in key or key == "WHARF_MQTT_DEVICES":
            assert value.startswith("${") and ":?" in value, f"{key} is not taken from the operator's .env"
    assert _REF.search(raw["WHARF_CLICKHOUSE_URL"]), "the ClickHouse URL's password is not from .env"


def test_mosquitto_service_uses_the_committed_files(services: dict, monkeypatch, tmp_path) -> None:
    svc = services["mosquitto"]
    conf = dict(mosquitto_conf())
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in svc["volumes"]}
    mount_point = next(target for target, source in mounts.items() if source.rstrip("/") in ("./deploy/mosquitto", "deploy/mosquitto"))
    generated = next(target for target, source in mounts.items() if source == "mosquitto-config")
    command = " ".join(svc["command"])
    assert f"-c {mount_point}/mosquitto.conf" in command
    installed = {k: v for k, v in mosquitto_conf() if k in ("password_file", "acl_file", "certfile", "keyfile")}
    for key, target in mosquitto_conf():
        if key in installed:
            name = Path(target).name
            assert f"{generated}/" in command and name in command and str(Path(target).parent) in command, f"{key} {target} is not installed"
    assert svc["depends_on"]["mosquitto-init"]["condition"] == "service_completed_successfully"
    assert conf["allow_anonymous"] == "false" and conf["persistence"] == "true"
    assert any(target == conf["persistence_location"].rstrip("/") and not source.startswith(".") for target, source in mounts.items())


def test_wharf_reaches_mosquitto(services: dict, monkeypatch, tmp_path) -> None:
    ports = [int(v.split()[0]) for k, v in mosquitto_conf() if k == "listener"]
    for name in ("wharf-bridge",):
        s = container_settings(services, name, monkeypatch, tmp_path)
        assert s.mqtt_host in service_names("mosquitto", services["mosquitto"])
        assert {s.mqtt_port, s.mqtt_bridge_port, s.mqtt_tls_port} == set(ports)
        assert services[name]["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    defaults = isolated_settings(monkeypatch, tmp_path, {})
    assert published(services["mosquitto"]).get(defaults.mqtt_port) == defaults.mqtt_port
    assert published(services["mosquitto"]).get(defaults.mqtt_tls_port) == defaults.mqtt_tls_port
    assert defaults.mqtt_bridge_port not in published(services["mosquitto"]), "the bridge listener is for containers only"
    kind, check = services["mosquitto"]["healthcheck"]["test"]
    args = dict(re.findall(r"(-\w) (\S+)", check))
    assert kind == "CMD-SHELL" and args["-u"] == defaults.mqtt_bridge_user and args["-p"] == str(defaults.mqtt_bridge_port)
    assert args["-P"] == '"$$WHARF_MQTT_BRIDGE_PASSWORD"' and "WHARF_MQTT_BRIDGE_PASSWORD" in services["mosquitto"]["environment"]


def test_mosquitto_matches_the_native_broker_config(monkeypatch, tmp_path) -> None:
    """Every directive `wharf infra up` writes, except addresses, paths and the OS user, is the same here."""
    from wharf.infra.mosquitto import Mosquitto
    from schemas.secrets import ensure_secrets

    settings = isolated_settings(monkeypatch, tmp_path, {"WHARF_STATE_DIR": str(tmp_path / "state")})
    ensure_secrets(settings)
    broker = Mosquitto(settings)
    broker._write_config()
    local_only = {"user", "listener", "password_file", "acl_file", "persistence_location", "log_dest", "certfile", "keyfile"}
    native = sorted(kv for kv in conf_lines((broker.dir / "mosquitto.conf").read_text()) if kv[0] not in local_only)
    compose_side = sorted(kv for kv in mosquitto_conf() if kv[0] not in local_only)
    assert compose_side == native


# --- ClickHouse ----------------------------------------------------------------


def test_wharf_reaches_clickhouse_with_its_user(services: dict, monkeypatch, tmp_path) -> None:
    ch = env_of(services["clickhouse"])
    native_port = 9000  # the image's tcp_port; compose does not override it
    assert published(services["clickhouse"]).get(native_port) is not None
    for name in WHARF_SERVICES:
        s = container_settings(services, name, monkeypatch, tmp_path)
        url = urlparse(s.clickhouse_url)
        assert url.scheme == "clickhouse"
        assert url.hostname in service_names("clickhouse", services["clickhouse"])
        assert url.port == native_port
        assert unquote(url.username or "") == ch["CLICKHOUSE_USER"]
        assert unquote(url.password or "") == ch["CLICKHOUSE_PASSWORD"]
        assert url.path.lstrip("/") == ch["CLICKHOUSE_DB"]
    assert services["wharf-worker"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    kind, check = services["clickhouse"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and '"$$CLICKHOUSE_USER"' in check and '"$$CLICKHOUSE_PASSWORD"' in check
    assert any(str(v).endswith(":/var/lib/clickhouse") for v in services["clickhouse"]["volumes"])


def test_grafana_datasource_points_at_clickhouse(services: dict) -> None:
    assert "grafana" in services
    ch = env_of(services["clickhouse"])
    files = sorted(GRAFANA_DATASOURCES.glob("*.y*ml"))
    assert files, "grafana: no provisioned data source"
    sources = [ds for f in files for ds in yaml.safe_load(f.read_text())["datasources"]]
    (ds,) = [d for d in sources if d["type"] == "grafana-clickhouse-datasource"]
    assert ds["jsonData"]["host"] in service_names("clickhouse", services["clickhouse"])
    assert (ds["jsonData"]["protocol"], int(ds["jsonData"]["port"])) == ("native", 9000)
    assert ds["jsonData"]["username"] == ch["CLICKHOUSE_USER"]
    assert ds["secureJsonData"]["password"] == "$WHARF_CLICKHOUSE_PASSWORD"  # Grafana reads it from its environment
    assert env_of(services["grafana"])["WHARF_CLICKHOUSE_PASSWORD"] == ch["CLICKHOUSE_PASSWORD"]
    assert ds["jsonData"]["defaultDatabase"] == ch["CLICKHOUSE_DB"]
    assert "grafana-clickhouse-datasource" in env_of(services["grafana"]).get("GF_PLUGINS_PREINSTALL", "")


def test_prometheus_scrapes_the_worker_with_its_token_and_the_bridge(services: dict, monkeypatch, tmp_path) -> None:
    worker = container_settings(services, "wharf-worker", monkeypatch, tmp_path)
    bridge = container_settings(services, "wharf-bridge", monkeypatch, tmp_path)
    prom = services["prometheus"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["wharf-worker"]["static_configs"][0]["targets"] == [f"wharf-worker:{worker.web_port}"]
    assert jobs["wharf-bridge"]["static_configs"][0]["targets"] == [f"wharf-bridge:{bridge.bridge_metrics_port}"]
    assert bridge.bridge_metrics_port and bridge.bridge_metrics_port not in published(services["wharf-bridge"]), "no credential: not published"
    # The worker accepts the token Prometheus writes to its credentials file (the first of the list).
    auth = jobs["wharf-worker"]["authorization"]
    assert auth["type"] == "Bearer" and auth["credentials_file"] in " ".join(prom["command"])
    assert env_of(prom)["WHARF_WEB_METRICS_TOKENS"] == worker.web_metrics_tokens.get_secret_value()
    assert any(str(v).startswith("./deploy/prometheus/prometheus.yml:") for v in prom["volumes"])
    sources = [ds for f in sorted(GRAFANA_DATASOURCES.glob("*.y*ml")) for ds in yaml.safe_load(f.read_text())["datasources"]]
    (ds,) = [d for d in sources if d["type"] == "prometheus"]
    assert ds["url"] == "http://prometheus:9090" and "127.0.0.1:9090:9090" in prom["ports"]


# --- the Wharf services --------------------------------------------------------


def test_worker_serves_its_web_port(services: dict, monkeypatch, tmp_path) -> None:
    svc = services["wharf-worker"]
    s = container_settings(services, "wharf-worker", monkeypatch, tmp_path)
    assert s.web_host == "0.0.0.0", "the worker must bind all interfaces for the published port to reach it"
    assert published(svc).get(s.web_port) is not None
    # Other workers reach it at its advertised address: its route to Kafka, here (no `kafka` host) its host name.
    assert s.kafka_bootstrap.startswith("kafka:") and s.advertised_web_host() not in ("0.0.0.0", "::", "")
    assert any(str(v).endswith(":" + str(s.state_dir)) for v in svc.get("volumes", [])), "worker state is not on a volume"


def test_commands_are_wharf_subcommands(services: dict) -> None:
    commands = wharf_commands()
    assert services["wharf-worker"]["command"][0] == "worker" and "worker" in commands
    assert "bridge" in commands
    assert services["wharf-bridge"]["command"][0] == "bridge"


# --- Dockerfile ----------------------------------------------------------------


def test_dockerfile_builds_the_wharf_cli() -> None:
    text = DOCKERFILE.read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["wharf"] == "wharf.cli:main"
    from wharf.cli import main  # noqa: F401 - the console script's target exists

    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and froms[-1] == "python:3.11-slim"
    from packaging.specifiers import SpecifierSet

    assert "3.11" in SpecifierSet(pyproject["project"]["requires-python"])
    entrypoints = re.findall(r"^ENTRYPOINT\s+(.+)$", text, re.M)
    assert entrypoints and yaml.safe_load(entrypoints[-1]) == ["wharf"]
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert re.search(r"pip install[^\n]*\s\.(\s|$)", text), "the Dockerfile does not install the project"
    assert "download.pytorch.org/whl/cpu" in text
    state_dir = dockerfile_env()["WHARF_STATE_DIR"]
    assert f"chown {users[-1]}" in text and state_dir in text


def test_dockerignore_keeps_local_state_out_but_the_code_in() -> None:
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {".venv", ".wharf", ".git"} <= ignored
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    for needed in ["pyproject.toml", *packages]:
        assert needed not in ignored, f".dockerignore excludes {needed}, which the image build needs"
