"""Apache Kafka 3.9.1 in KRaft mode: one combined broker+controller on 127.0.0.1.

The jars come from Maven Central (pom.xml beside this file, fetched once into the
cache folder); the node is formatted with `kafka.tools.StorageTool` on first
start and run with `kafka.Kafka`. With `kafka_security = "sasl_scram"` it has a SASL/SCRAM
listener and ACLs instead of the PLAINTEXT one (wharf/infra/kafka_security.py).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wharf.infra import kafka_security
from wharf.infra.process import ManagedProcess, ServiceError, ensure_ports_free, port_open
from streams.runtime.kafka_auth import as_user, kafka_client
from schemas.secrets import write_private
from schemas.settings import Settings

KAFKA_VERSION = "3.9.1"
POM = Path(__file__).with_name("pom.xml")


def libs_dir(settings: Settings) -> Path:
    return settings.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_jars(settings: Settings) -> Path:
    libs = libs_dir(settings)
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists() and (libs / "slf4j-reload4j-1.7.36.jar").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("kafka: Maven (`mvn`) is not installed; run `scripts/setup.sh` (apt-get install maven)")
    libs.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={libs}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ServiceError(f"kafka: fetching jars from Maven Central failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return libs


def _host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port)


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ServiceError("kafka: Java is not installed; run `scripts/setup.sh` (apt-get install openjdk-17-jre-headless)")
    return java


class Kafka:
    name = "kafka"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dir = settings.state_dir / "kafka"
        self.data = self.dir / "data"
        self.host, self.port = _host_port(settings.kafka_bootstrap)
        self.process = ManagedProcess(
            name="kafka",
            argv=[
                _java() if shutil.which("java") else "java",
                f"-Xmx{settings.kafka_heap}",
                f"-Xms{settings.kafka_heap}",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                f"-Dkafka.logs.dir={self.dir / 'logs'}",
                "-cp",
                f"{libs_dir(settings)}/*",
                "kafka.Kafka",
                str(self.dir / "server.properties"),
            ],
            workdir=self.dir,
        )

    @property
    def where(self) -> str:
        auth = ", SASL/SCRAM" if self.sasl else ""
        return f"{self.host}:{self.port} (controller :{self.settings.kafka_controller_port}{auth}), data {self.data}"

    @property
    def sasl(self) -> bool:
        return self.settings.kafka_security == "sasl_scram"

    def admin_settings(self) -> Settings:
        """These settings as the broker's super user: what `up` itself does (topics, ACLs, readiness) needs it."""
        if not self.sasl:
            return self.settings
        from schemas.secrets import kafka_admin_password

        return as_user(self.settings, kafka_security.ADMIN_USER, kafka_admin_password(self.settings))

    def _listener_lines(self) -> list[str]:
        if self.sasl:
            return kafka_security.broker_lines(self.settings, self.host, self.port)
        return [
            f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://127.0.0.1:{self.settings.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ]

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        write_private(
            self.dir / "server.properties",
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
                    *self._listener_lines(),
                    f"log.dirs={self.data}",
                    f"num.partitions={s.topic_partitions}",
                    "default.replication.factor=1",
                    "min.insync.replicas=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "log.retention.hours=168",
                    "log.segment.bytes=268435456",
                    "num.network.threads=2",
                    "num.io.threads=4",
                    "message.max.bytes=4194304",
                    "",
                ]
            ),
        )
        (self.dir / "log4j.properties").write_text(
            "\n".join(
                [
                    "log4j.rootLogger=WARN, stdout",
                    "log4j.appender.stdout=org.apache.log4j.ConsoleAppender",
                    "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout",
                    "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n",
                    "log4j.logger.kafka.server.KafkaServer=INFO",
                    "log4j.logger.kafka.server.KafkaRaftServer=INFO",
                    "log4j.logger.kafka.server.BrokerServer=INFO",
                    "",
                ]
            )
        )

    def _format(self) -> None:
        """Format once; SCRAM users go into the metadata here (also in plaintext mode: SASL can be turned on later)."""
        marker = self.dir / "scram-users"
        if (self.data / "meta.properties").exists():
            if self.sasl:
                kafka_security.check_formatted_users(self.settings, marker)
            return
        libs = f"{libs_dir(self.settings)}/*"
        cluster_id = subprocess.run(
            [_java(), "-cp", libs, "kafka.tools.StorageTool", "random-uuid"], capture_output=True, text=True, check=True
        ).stdout.strip()
        users = kafka_security.scram_users(self.settings)
        proc = subprocess.run(
            [_java(), "-cp", libs, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.dir / "server.properties"),
             *kafka_security.format_args(users)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            from schemas.redact import redact

            raise ServiceError(redact(f"kafka: storage format failed:\n{proc.stdout}\n{proc.stderr}"))
        marker.write_text("".join(f"{u}\n" for u in users))

    def start(self, timeout: float = 90.0) -> float:
        if self.process.running():
            return 0.0
        ensure_ports_free("kafka", {self.port: "WHARF_KAFKA_BOOTSTRAP", self.settings.kafka_controller_port: "WHARF_KAFKA_CONTROLLER_PORT"}, self.host)
        ensure_jars(self.settings)
        self._write_config()
        self._format()
        self.process.start()
        took = self.process.wait_ready(self.ready, timeout, f"broker metadata on {self.host}:{self.port}")
        if self.sasl:
            kafka_security.write_acls(self.settings, _java(), f"{libs_dir(self.settings)}/*", f"{self.host}:{self.port}", self.dir)
        return took

    def ready(self) -> bool:
        return port_open(self.host, self.port) and asyncio.run(_broker_count(self.admin_settings())) >= 1

    def stop(self) -> bool:
        return self.process.stop()


async def _broker_count(settings: Settings) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # probing a starting broker is noisy by nature
    admin = AIOKafkaAdminClient(**kafka_client(settings), request_timeout_ms=2000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return len(cluster.get("brokers", []))
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, names: list[str], partitions: int, configs: dict[str, dict[str, str]] | None = None,
                        timeout: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet and wait until the broker's metadata shows their partitions
    (right after CreateTopics it may show none; on a broker started seconds ago it took over 10 s in some test
    runs); returns the names created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**kafka_client(settings), request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return missing

        def new(names: list[str]) -> list[NewTopic]:
            return [NewTopic(name=n, num_partitions=partitions, replication_factor=1, topic_configs=(configs or {}).get(n, {}))
                    for n in names]

        # CreateTopics reports failures in its result, not by raising. A broker that has just started can refuse
        # (e.g. a replication factor above its registered brokers: none yet), and the topic never appeared (a first
        # test's flake): what does not exist is created again until the deadline, which names the last refusals.
        refused = _refusals(await admin.create_topics(new(missing)))
        deadline = time.monotonic() + timeout
        while True:
            short = {d["topic"]: d["error_code"] for d in await admin.describe_topics(missing) if len(d["partitions"]) < partitions}
            if not short:
                return missing
            if time.monotonic() > deadline:
                raise TimeoutError(f"created topics {missing} show no partitions after {timeout:.0f} s (metadata error codes {short})"
                                   + (f"; CreateTopics refused: {refused}" if refused else ""))
            again = [n for n, code in short.items() if code == 3]  # UNKNOWN_TOPIC_OR_PARTITION: not created (yet)
            if again:
                refused = _refusals(await admin.create_topics(new(again)))
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def _refusals(response: Any) -> dict[str, str]:
    """Topic -> error of a CreateTopics response, without those that exist already."""
    from aiokafka.errors import for_code

    return {entry[0]: for_code(entry[1]).__name__ + (f" ({entry[2]})" if len(entry) > 2 and entry[2] else "")
            for entry in response.topic_errors if entry[1] not in (0, 36)}  # 36: TOPIC_ALREADY_EXISTS


async def topic_list(settings: Settings) -> set[str]:
    """The names of every topic on the cluster."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka_client(settings), request_timeout_ms=30000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def delete_topics(settings: Settings, names: Iterable[str]) -> list[str]:
    """Delete the named topics (those that exist).

    Left behind, topics pile up: aiokafka decodes the whole cluster's metadata in Python on every refresh, which
    held a worker's event loop for 40-130 ms at a time once a development broker had 550 topics, and a broker that
    kept a few thousand test runs' partitions ran out of memory."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka_client(settings), request_timeout_ms=30000)
    await admin.start()
    try:
        wanted = set(names) & set(await admin.list_topics())
        if wanted:
            await admin.delete_topics(sorted(wanted))
        return sorted(wanted)
    finally:
        await admin.close()


async def delete_topics_containing(settings: Settings, marker: str) -> list[str]:
    """Delete every topic whose name contains `marker` (a benchmark's run tag: its own and its app's internal topics)."""
    return await delete_topics(settings, [n for n in await topic_list(settings) if marker in n])
