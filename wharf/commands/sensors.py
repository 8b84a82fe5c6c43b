"""CLI commands of the sensor path (`wharf alerts ...`, `wharf replay`; `wharf bench sensors` is in wharf/bench/sensors.py)."""

from __future__ import annotations

import asyncio
import csv
import os
import threading
import time
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console

from streams.runtime.kafka_auth import kafka_client
from wharf.bench.sensors import bench_bridge_alone, bench_sensors

console = Console()
STYLE = {"CRITICAL": "bold red", "MAJOR": "red", "MINOR": "yellow", "WARNING": "cyan"}


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to the main app and to the `wharf bench` group."""
    alerts = typer.Typer(help="Alarms: follow them live, acknowledge them.", no_args_is_help=True)
    app.add_typer(alerts, name="alerts")
    alerts.command("tail")(alerts_tail)
    alerts.command("ack")(alerts_ack)
    app.command("replay")(replay)
    bench.command("sensors")(bench_sensors)
    bench.command("bridge")(bench_bridge_alone)
    bench.command("anomaly")(bench_anomaly)


def bench_anomaly(
    devices: int = typer.Option(1000, min=1, help="Devices in the throughput comparison."),
    memory_devices: int = typer.Option(10_000, min=1, help="Devices held by the process whose RSS is measured."),
    memory_rows: int = typer.Option(300, min=1, help="Readings each of those devices learns first."),
    reference_memory: bool = typer.Option(False, help="Also measure the RSS of as many per-device models (slow)."),
) -> None:
    """Detectors alone (no servers): per-device models vs the device bank on the same readings, the bank's bytes per
    device, and the RSS of a process holding many devices."""
    from wharf.bench.anomaly import report

    print(report(devices, memory_devices, memory_rows, reference_memory))


def _settings():  # noqa: ANN202
    from schemas.settings import get_settings

    return get_settings()


# --- alerts ------------------------------------------------------------------------------------------------------


async def send_ack(settings, alarm_id: str, by: str) -> None:  # noqa: ANN001
    """Produce an ack command keyed by the alarm's device: the agent that owns the device applies it."""
    from aiokafka import AIOKafkaProducer

    from online_models.alarms import source_of
    from schemas import codec

    device = source_of(alarm_id)
    producer = AIOKafkaProducer(**kafka_client(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_sensor_commands, codec.dumps({"command": "ack", "alarm_id": alarm_id, "ts": time.time(), "by": by}),
                                     key=device.encode())
    finally:
        await producer.stop()


def alerts_ack(alarm_id: str = typer.Argument(..., help="The alarm id (`device/type/start_ms`)."),
               by: str = typer.Option(os.environ.get("USER", "operator"), help="Who acknowledges (kept in the alarm's details).")) -> None:
    """Acknowledge an alarm: ACTIVE_UNACK -> ACTIVE_ACK, or CLEARED_UNACK -> CLEARED_ACK. Idempotent."""
    try:
        asyncio.run(send_ack(_settings(), alarm_id, by))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"ack for {alarm_id} sent; the alarm's next event on the alerts topic shows it")


def alerts_tail(
    ack: bool = typer.Option(False, "--ack", help="Acknowledge every new unacknowledged alarm as it arrives."),
    from_beginning: bool = typer.Option(False, help="Replay the alerts topic from its start first."),
    group: str = typer.Option("", help="Consumer group (committed, so a restart continues where it stopped). Default: none, live only."),
    limit: int = typer.Option(0, help="Stop after this many events (0: run until Ctrl-C)."),
) -> None:
    """Follow alarm events live: one line per state change, the active set on top of mind."""
    asyncio.run(_tail(_settings(), ack, from_beginning, group or None, limit))


async def _tail(settings, ack: bool, from_beginning: bool, group: str | None, limit: int) -> None:  # noqa: ANN001
    from aiokafka import AIOKafkaConsumer

    from schemas.events import Alert

    consumer = AIOKafkaConsumer(settings.topic_alerts, **kafka_client(settings), group_id=group,
                                enable_auto_commit=group is not None,
                                auto_offset_reset="earliest" if from_beginning else "latest")
    await consumer.start()
    seen: set[tuple[str, int]] = set()
    active: dict[str, Alert] = {}
    n = 0
    console.print(f"[dim]following {settings.topic_alerts} on {settings.kafka_bootstrap} (Ctrl-C to stop)[/dim]")
    try:
        async for msg in consumer:
            try:
                a = Alert.model_validate_json(msg.value)
            except ValueError:
                console.print(f"[red]not an alert at offset {msg.offset}[/red]")
                continue
            key = (a.alarm_id, int(a.details.get("rev", 0)))
            if key in seen:  # a copy from an at-least-once producer
                continue
            seen.add(key)
            if a.status.startswith("ACTIVE"):
                active[a.alarm_id] = a
            else:
                active.pop(a.alarm_id, None)
            when = datetime.fromtimestamp(a.ts).strftime("%H:%M:%S")
            lag = time.time() - a.ts
            console.print(f"{when} [{STYLE.get(a.severity, '')}]{a.severity:<8}[/] {a.status:<13} {a.alarm_id}  {a.message}"
                          f"  [dim](active {len(active)}, {lag:.2f}s after the event)[/dim]", soft_wrap=True)
            if ack and a.status in ("ACTIVE_UNACK", "CLEARED_UNACK"):
                await send_ack(settings, a.alarm_id, os.environ.get("USER", "operator"))
            n += 1
            if limit and n >= limit:
                break
    finally:
        await consumer.stop()


# --- replay ------------------------------------------------------------------------------------------------------


def read_nab_csv(path: Path) -> list[tuple[float, float]]:
    """NAB-style `timestamp,value` rows (timestamp `YYYY-mm-dd HH:MM:SS` or epoch seconds)."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            raw = row["timestamp"]
            try:
                ts = float(raw)
            except ValueError:
                ts = datetime.fromisoformat(raw).timestamp()
            out.append((ts, float(row["value"])))
    return out


def replay(
    csv_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="NAB-style CSV: timestamp,value."),
    device: str = typer.Option(..., "--device", help="Device id (its MQTT user)."),
    metric: str = typer.Option(..., "--metric", help="Metric name for the values."),
    speed: float = typer.Option(60.0, help="Time compression: 60 = one hour of data per minute."),
    site: str = typer.Option("site-1"),
    zone: str = typer.Option("zone-1"),
    device_type: str = typer.Option("cold_room", "--device-type"),
    password: str = typer.Option("", help="MQTT password (default: from WHARF_MQTT_DEVICES)."),
    limit: int = typer.Option(0, help="Publish at most this many rows."),
) -> None:
    """Publish a CSV as a device over authenticated MQTT (QoS 1), original spacing / speed, timestamps shifted to now."""
    import paho.mqtt.client as mqtt

    from mqtt_bridge.connection import device_endpoint, secure
    from mqtt_bridge.topics import telemetry_topic
    from schemas import codec

    settings = _settings()
    rows = read_nab_csv(csv_file)[: limit or None]
    if not rows:
        console.print("[red]no rows[/red]")
        raise typer.Exit(2)
    secret = password or settings.device_credentials().get(device)
    if not secret:
        console.print(f"[red]no password for {device}: pass --password or add it to WHARF_MQTT_DEVICES[/red]")
        raise typer.Exit(2)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)  # the broker's rule on device ports
    client.username_pw_set(device, secret)
    secure(client, settings)
    ok = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: ok.set() if not rc.is_failure else console.print(f"[red]MQTT refused: {rc}[/red]")
    client.connect(*device_endpoint(settings))
    client.loop_start()
    if not ok.wait(10):
        raise typer.Exit(1)
    topic = telemetry_topic(site, zone, device)
    t_data0, t_wall0 = rows[0][0], time.time()
    infos = []
    try:
        for seq, (ts, value) in enumerate(rows):
            at = t_wall0 + (ts - t_data0) / speed
            if (wait := at - time.time()) > 0:
                time.sleep(wait)
            payload = {"site": site, "zone": zone, "device_id": device, "device_type": device_type, "ts": at, "seq": seq, "metrics": {metric: value}}
            infos.append(client.publish(topic, codec.dumps(payload), qos=1))
            if seq % 500 == 0:
                console.print(f"[dim]{seq}/{len(rows)} published[/dim]")
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()
    console.print(f"published {len(rows)} readings of {device}.{metric} on {topic} in {time.time() - t_wall0:.1f}s")
