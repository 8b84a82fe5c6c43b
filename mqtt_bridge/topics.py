"""The MQTT topic scheme: `wharf/{site}/{zone}/{device_id}/telemetry|status`, alerts on `wharf/{site}/alerts`."""

from __future__ import annotations

import re
from dataclasses import dataclass

LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
KINDS = ("telemetry", "status")


class TopicError(ValueError):
    pass


@dataclass(frozen=True)
class DeviceTopic:
    site: str
    zone: str
    device_id: str
    kind: str


def parse_topic(topic: str) -> DeviceTopic:
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "wharf" or parts[4] not in KINDS:
        raise TopicError("is not wharf/{site}/{zone}/{device_id}/telemetry|status")
    for name, value in zip(("site", "zone", "device_id"), parts[1:4], strict=True):
        if not LEVEL.match(value):
            raise TopicError(f"{name} level {value!r} is not a valid id")
    return DeviceTopic(parts[1], parts[2], parts[3], parts[4])


def telemetry_topic(site: str, zone: str, device_id: str) -> str:
    return f"wharf/{site}/{zone}/{device_id}/telemetry"


def status_topic(site: str, zone: str, device_id: str) -> str:
    return f"wharf/{site}/{zone}/{device_id}/status"


def alerts_topic(site: str) -> str:
    return f"wharf/{site}/alerts"
