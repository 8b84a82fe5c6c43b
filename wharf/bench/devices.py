"""The device logins a benchmark's publishers need: N publishers are N devices, provisioned if missing.

A publisher may only publish under its own device id (the MQTT ACL), so `--publishers 8` with one configured
device used to run one publisher. Missing logins are registered here as `bench-NNN` devices for any site and
zone (the device registry, as `wharf simulate --register` does) and `wharf infra up` gives them passwords and
ACL entries; a running Mosquitto re-reads both (SIGHUP). If that still leaves fewer than N, the bench stops.
"""

from __future__ import annotations

from typing import Any


def publisher_logins(settings: Any, n: int) -> list[tuple[str, str]]:
    """`n` (device id, password) pairs: the configured devices first, then `bench-NNN` devices provisioned now."""
    if n < 1:
        raise ValueError(f"--publishers must be at least 1, got {n}")
    creds = settings.device_credentials()
    if len(creds) < n:
        from schemas.secrets import Placement, register_devices
        from wharf import infra

        wanted = [d for d in (f"bench-{i:03d}" for i in range(1, n + 1)) if d not in creds][: n - len(creds)]
        register_devices(settings, {d: Placement("+", "+") for d in wanted})
        infra.up(settings, ["mosquitto"])  # passwords for the new devices, and the ACL, re-read by the broker
        creds = settings.device_credentials()
    if len(creds) < n:
        raise RuntimeError(f"{n} publishers need {n} device logins; only {len(creds)} exist after provisioning "
                           f"({', '.join(sorted(creds))})")
    return list(creds.items())[:n]
