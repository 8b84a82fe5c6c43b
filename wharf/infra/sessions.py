"""The persistent MQTT bridge sessions that benchmarks open for themselves, and end.

A bridge session outlives its reader: Mosquitto queues every matching telemetry message for it (up to
`max_queued_messages`) and writes that queue at every autosave. A benchmark ends its session when it stops, but
not when it is killed (SIGKILL, a lost terminal). `persistent_client_expiration` (6 h) does not save a
development stack, stopped between runs, from that: it counts while the broker runs. One was found 10 hours, four
broker restarts and 2.9 hours of broker uptime later, 421,751 readings (125 MB) queued and rewritten every 10
seconds, and every later benchmark's readings queued behind them.

So each temporary session is written down in the state folder (its owner's pid and start time) before its
bridge connects, and crossed out once ended; opening one, and `wharf infra up`, first end those whose owner is gone.
"""

from __future__ import annotations

import os
from pathlib import Path

from mqtt_bridge.connection import end_session
from schemas.settings import Settings
from wharf.infra.process import stamp, stamped_pid


def _ledger(settings: Settings) -> Path:
    return settings.state_dir / "mqtt-sessions"


def open_temporary(settings: Settings, client_ids: list[str]) -> None:
    """Write down sessions this process will open and end (after ending any whose owner died)."""
    end_abandoned(settings)
    folder = _ledger(settings)
    folder.mkdir(parents=True, exist_ok=True)
    for cid in client_ids:
        (folder / cid).write_text(stamp(os.getpid()) + "\n")


def end_temporary(settings: Settings, client_ids: list[str]) -> list[str]:
    """End the sessions (their queues are dropped) and cross them out; returns those the broker refused."""
    refused = []
    for cid in client_ids:
        if end_session(settings, cid):
            (_ledger(settings) / cid).unlink(missing_ok=True)
        else:
            refused.append(cid)
    return refused


def end_abandoned(settings: Settings) -> list[str]:
    """End the written-down sessions whose owner is no longer running; returns their client ids."""
    folder = _ledger(settings)
    if not folder.is_dir():
        return []
    gone = [entry.name for entry in sorted(folder.iterdir()) if _owner(entry) is None]
    refused = set(end_temporary(settings, gone))
    return [cid for cid in gone if cid not in refused]


def _owner(entry: Path) -> int | None:
    """The running process that wrote the entry down, else None (an unreadable entry: nobody can own it)."""
    try:
        return stamped_pid(entry.read_text())
    except OSError:
        return None
