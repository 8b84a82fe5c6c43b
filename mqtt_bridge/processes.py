"""Several bridge processes in one shared subscription (`WHARF_BRIDGE_PROCESSES`, `wharf bridge --processes`).

A bridge process keeps one core busy at most (the GIL). With N > 1, `wharf bridge` starts N `wharf bridge`
children, each with a persistent session of its own (client ids: the given one, then `<id>-2`, `<id>-3`, ...)
in the same shared-subscription group, and Mosquitto splits the messages between them. Mosquitto keeps queueing
a member's share while it is away (its session persists), so a child that exits is started again; SIGINT or
SIGTERM stops them all, each with its own clean stop. Lowering N leaves the dropped ids' sessions holding what
was queued for them: let them drain first (the old N once more), then `wharf bridge --end-session --client-id ID`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO

log = logging.getLogger("wharf.bridge")
STOP_SECONDS = 9.0  # each child stops within its own deadline (bridge.py); this is the parent's last resort
RESTART_EVERY_SECONDS = 1.0


def client_ids(base: str, n: int) -> list[str]:
    """The client id of each of `n` bridge processes: the first keeps `base`, so going from one to N keeps its session."""
    return [base] + [f"{base}-{i}" for i in range(2, n + 1)]


@dataclass
class _Child:
    client_id: str
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0


@dataclass
class BridgeProcesses:
    """N `wharf bridge` children (one session each) in `share_group`. `metrics_port` (0: none): the i-th child
    (from 0) serves its counters on `metrics_port + i`."""

    base_id: str
    share_group: str | None
    n: int
    loglevel: str = "info"
    metrics_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    output: IO | None = None
    children: list[_Child] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        for i, cid in enumerate(client_ids(self.base_id, self.n)):
            env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
            if self.metrics_port:
                env["WHARF_BRIDGE_METRICS_PORT"] = str(self.metrics_port + i)
            self.children.append(_Child(cid, env))

    @property
    def client_ids(self) -> list[str]:
        return [c.client_id for c in self.children]

    def _start(self, child: _Child) -> None:
        argv = [sys.executable, "-m", "wharf.cli", "bridge", "--processes", "1", "--client-id", child.client_id,
                "--share-group", self.share_group or "", "--loglevel", self.loglevel]
        child.proc = subprocess.Popen(argv, env=child.env, stdout=self.output, stderr=subprocess.STDOUT if self.output else None)
        child.started = time.monotonic()

    def start(self) -> BridgeProcesses:
        for child in self.children:
            self._start(child)
        return self

    def keep_running(self) -> None:
        """Start again any child that exited (its session queues its share until it is back)."""
        for child in self.children:
            if self.stopping or child.proc is None or child.proc.poll() is None:
                continue
            if time.monotonic() - child.started < RESTART_EVERY_SECONDS:
                continue
            child.restarts += 1
            log.warning("bridge %s exited (code %s); starting it again", child.client_id, child.proc.returncode)
            self._start(child)

    def stop(self) -> None:
        """SIGTERM to every child, then wait for their clean stops; SIGKILL what is left after `STOP_SECONDS`."""
        self.stopping = True
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("bridge %s did not stop in %.0f s; killed", child.client_id, STOP_SECONDS)
                child.proc.kill()
                child.proc.wait()


def run_processes(base_id: str, share_group: str | None, n: int, loglevel: str, metrics_port: int) -> int:
    """`wharf bridge` with N > 1: start the children, keep them running, stop them all on SIGINT/SIGTERM."""
    group = BridgeProcesses(base_id, share_group, n, loglevel, metrics_port=metrics_port)
    stop = False

    def on_signal(signum: int, frame: object) -> None:  # noqa: ARG001
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    group.start()
    log.info("%d bridge processes in group %s: %s", n, share_group, ", ".join(group.client_ids))
    while not stop:
        time.sleep(0.2)
        group.keep_running()
    group.stop()
    return max((c.proc.returncode or 0 for c in group.children if c.proc is not None), default=0)
