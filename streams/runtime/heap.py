"""Garbage-collector policy of a worker (and of the bridge): long-lived state out of the collector's way.

A worker holds its models in memory (hundreds of thousands of container objects). CPython's full
(generation 2) collection walks all of them, and it runs whenever the survivors grew by a quarter:
while the recommender learned 60,000 clicks, a worker paused 150-220 ms every ~4 s, which is every
request's p99. Freezing moves what is alive now into the permanent generation that collections skip;
objects freed by reference counting are still freed at once. Only reference cycles among frozen
objects wait, until `sweep` unfreezes and collects them (one full pause per `SWEEP_SECONDS`, logged
with what it reclaimed).

The young generations' thresholds are raised as well (`configure`): with CPython's defaults (700, 10,
10) a worker learning the 95,000 clicks of a dev topic ran 2,802-3,615 collections, 1.03-1.75 s in all,
and the full ones (over what the last second allocated, before its freeze) paused up to 92-136 ms. With
(10,000, 50, 1,000), set before the worker imports its agents: 225-237 collections, 0.35-0.52 s, longest
pause 11-22 ms (docs/benchmark-history.md, "Validated once").
What survives the young generations is frozen within a second anyway, so a full collection between two
freezes only ever saw that second's survivors; cycles among them now wait for `sweep`, like the rest
of the frozen heap.

The worker, which freezes every `FREEZE_SECONDS`, goes one step further (`configure(young=WORKER_YOUNG)`): a
young collection is about all cost there. What a worker allocates mostly lives on (a reading's message, event
and model objects are held until a checkpoint includes them), so each young collection walked ~10,000 survivors
(about 4 ms) to free nothing (`wharf bench sensors --catch-up 300000`: 451-529 collections, 1.3-2.6 s by the
collector's own timing). With a threshold above what a worker allocates between two freezes (a catch-up at
18,000 readings/s crossed 300,000 twice in its run), the freeze comes first. Measured in alternating pairs: the
5,000 readings/s alarm p95 4-18 % lower; the catch-up's CPU a reading 0-3 us lower (docs/performance.md, "The
worker's young collections"). The cost is that young cycles wait for `sweep` too, so the worker must make almost
none: with a sweep every 5 s, a catch-up, a 5,000 readings/s run and the commerce bench left 0 objects to reclaim
after start-up, once clickhouse-driver's columns no longer point back at themselves
(`streams.sinks.clickhouse._columns_without_cycles`; about 250 objects a second before).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

FREEZE_SECONDS = 1.0
THRESHOLDS = (10_000, 50, 1_000)  # CPython's: (700, 10, 10)
WORKER_YOUNG = 500_000  # the worker's young threshold: more than it allocates between two freezes
SWEEP_SECONDS = 1800.0


@dataclass
class Pauses:
    """The collector's pauses in this process (shown by `GET /stats`)."""

    collections: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    over_20ms: int = 0
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        ms = (time.perf_counter() - self._started) * 1e3
        self.collections += 1
        self.total_ms += ms
        self.max_ms = max(self.max_ms, ms)
        self.over_20ms += ms > 20

    def as_dict(self) -> dict[str, float]:
        return {"collections": self.collections, "total_ms": round(self.total_ms, 1), "max_ms": round(self.max_ms, 1),
                "over_20ms": self.over_20ms}


pauses = Pauses()
if pauses not in gc.callbacks:
    gc.callbacks.append(pauses)


_last_freeze = 0.0


def configure(young: int = THRESHOLDS[0]) -> None:
    """The collector's thresholds (see the module docstring); call once, before the process runs. `young`:
    `WORKER_YOUNG` for a process that freezes every `FREEZE_SECONDS`."""
    gc.set_threshold(young, *THRESHOLDS[1:])


def freeze() -> None:
    global _last_freeze
    gc.freeze()
    _last_freeze = time.monotonic()


def freeze_if_due() -> None:
    """`freeze` at most every `FREEZE_SECONDS`, for code that allocates much before Faust's timers run
    (they start once the worker is ready; restoring and learning the first backlog come earlier)."""
    if time.monotonic() - _last_freeze >= FREEZE_SECONDS:
        freeze()


def sweep() -> int:
    """Collect cycles among frozen objects; returns how many objects were reclaimed."""
    started = time.perf_counter()
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    reclaimed = gc.collect()
    gc.freeze()
    log.info("heap sweep: %d frozen objects scanned, %d reclaimed in %.0f ms", frozen, reclaimed,
             (time.perf_counter() - started) * 1e3)
    return reclaimed
