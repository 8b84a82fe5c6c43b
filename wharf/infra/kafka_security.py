"""SASL/SCRAM and ACLs of the local Kafka (`kafka_security = "sasl_scram"`).

Listener layout, all on 127.0.0.1 (every client of this broker is local, so a
PLAINTEXT listener beside SASL would be a way around it; there is none):

| listener | protocol | mechanism | who |
|---|---|---|---|
| `SASL_PLAINTEXT` (WHARF_KAFKA_BOOTSTRAP) | SASL_PLAINTEXT | SCRAM-SHA-512 | every client; also inter-broker, as the admin |
| `CONTROLLER` (WHARF_KAFKA_CONTROLLER_PORT) | SASL_PLAINTEXT | PLAIN | the admin only (the broker itself) |

The controller listener uses PLAIN with one static user because KRaft controllers cannot
use SCRAM (its credentials live in the metadata the controller serves), and a PLAINTEXT
controller listener would need `User:ANONYMOUS` as a super user: anyone local could
then write ACLs through it. SCRAM credentials of both users are written into the
metadata when the storage is formatted (`--add-scram`), before the broker first starts.

`StandardAuthorizer` with `allow.everyone.if.no.acl.found=false`: the admin is the only
super user; Wharf's user (WHARF_KAFKA_USER) gets prefixed ACLs on Wharf's topics and
consumer groups (`acl_specs`), written with Kafka's `AclCommand` at `wharf infra up`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from wharf.infra.process import ServiceError
from schemas.secrets import SecretMissing, kafka_admin_password, kafka_password, write_private
from schemas.settings import Settings

ADMIN_USER = "admin"  # no '-': JAAS option names (user_<name>) are plain words
SCRAM = "SCRAM-SHA-512"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
TOPIC_OPS = ("Read", "Write", "Create", "Describe", "DescribeConfigs")
GROUP_OPS = ("Read", "Describe", "Delete")


def broker_lines(settings: Settings, host: str, port: int) -> list[str]:
    """server.properties lines of the listeners, SASL and authorizer (the file is 0600: it holds the admin password)."""
    admin = kafka_admin_password(settings)
    c = settings.kafka_controller_port
    return [
        f"listeners=SASL_PLAINTEXT://{host}:{port},CONTROLLER://127.0.0.1:{c}",
        f"advertised.listeners=SASL_PLAINTEXT://{host}:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=SASL_PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        f"sasl.enabled.mechanisms={SCRAM}",
        f"sasl.mechanism.inter.broker.protocol={SCRAM}",
        f"listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule"
        f' required username="{ADMIN_USER}" password="{admin}";',
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule"
        f' required username="{ADMIN_USER}" password="{admin}" user_{ADMIN_USER}="{admin}";',
        f"authorizer.class.name={AUTHORIZER}",
        f"super.users=User:{ADMIN_USER}",
        "allow.everyone.if.no.acl.found=false",
    ]


def scram_users(settings: Settings) -> dict[str, str]:
    """User -> password of the SCRAM credentials to format the storage with ({} before the secrets exist)."""
    try:
        return {ADMIN_USER: kafka_admin_password(settings), settings.kafka_user: kafka_password(settings)}
    except SecretMissing:
        if settings.kafka_security == "sasl_scram":
            raise
        return {}  # plaintext without generated secrets (a bare Kafka(settings).start()): nobody logs in


def format_args(users: dict[str, str]) -> list[str]:
    return [arg for name, pw in users.items() for arg in ("--add-scram", f"{SCRAM}=[name={name},password={pw}]")]


def check_formatted_users(settings: Settings, marker: Path) -> None:
    """SCRAM credentials are only written at format time: refuse to start SASL on data formatted without them."""
    have = set(marker.read_text().split()) if marker.exists() else set()
    need = {ADMIN_USER, settings.kafka_user}
    if not need <= have:
        raise ServiceError(f"kafka: the data in {marker.parent} was formatted without SCRAM users {sorted(need - have)}; "
                           f"`wharf infra down`, remove {marker.parent} (its topics are lost) and `wharf infra up` again")


@dataclass(frozen=True)
class AclSpec:
    """One AclCommand call: these operations for Wharf's user on every resource named by a prefix."""

    resource: str  # "topic" or "group"
    prefixes: tuple[str, ...]
    operations: tuple[str, ...]


def acl_specs(settings: Settings) -> list[AclSpec]:
    """Wharf's topics (`wharf.`), its app's internal topics (`<app_id>-`: changelogs, Faust's assignor) and
    consumer groups (`<app_id>`, `wharf`); the benchmarks' throwaway topics (`bench.`, `bench-<run>-`), which
    they also delete (the commerce bench app: `wharf-bench-<tag>-`), and groups."""
    app = settings.app_id
    return [
        AclSpec("topic", tuple(dict.fromkeys(("wharf.", f"{app}-"))), TOPIC_OPS),
        AclSpec("topic", ("bench.", "bench-", "wharf-bench-"), (*TOPIC_OPS, "Delete")),
        AclSpec("group", tuple(dict.fromkeys((app, "wharf", "bench"))), GROUP_OPS),
    ]


def write_acls(settings: Settings, java: str, libs: str, bootstrap: str, state: Path) -> bool:
    """Add the ACLs of `acl_specs` (ACLs live in the metadata log; a marker skips the JVMs when they were already
    written for these specs); returns whether any were written."""
    specs = acl_specs(settings)
    digest = hashlib.sha256(json.dumps([settings.kafka_user, *map(asdict, specs)]).encode()).hexdigest()
    marker = state / "acls-written"
    if marker.exists() and marker.read_text().strip() == digest:
        return False
    client = state / "admin-client.properties"
    write_private(client, "\n".join([
        "security.protocol=SASL_PLAINTEXT", f"sasl.mechanism={SCRAM}",
        f'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN_USER}" '
        f'password="{kafka_admin_password(settings)}";', ""]))
    for spec in specs:
        argv = [java, "-cp", libs, "kafka.admin.AclCommand", "--bootstrap-server", bootstrap, "--command-config", str(client),
                "--add", "--allow-principal", f"User:{settings.kafka_user}", "--allow-host", "*", "--resource-pattern-type", "prefixed"]
        argv += [a for op in spec.operations for a in ("--operation", op)]
        argv += [a for p in spec.prefixes for a in (f"--{spec.resource}", p)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ServiceError(f"kafka: writing ACLs failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    marker.write_text(digest + "\n")
    return True
