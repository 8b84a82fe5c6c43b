"""Event-loop stalls of a worker, and where the loop was while it stalled.

A worker answers requests on the loop that learns, so anything that holds the loop (a long synchronous
step, a C call that keeps the GIL, a collector pause) is added to every request waiting on it. The loop
writes a heartbeat every `BEAT_SECONDS`; a gap longer than the threshold is a stall. Meanwhile a thread
samples the main thread's stack whenever the heartbeat is older than the threshold, so each stall comes
with the stacks it was seen in. A stall with no sample kept the watcher from running at all: the loop
was in C code that held the GIL. `GET /stats` shows the counts and the longest stalls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

BEAT_SECONDS = 0.01
SAMPLE_SECONDS = 0.05  # the watcher's period: every wake takes the GIL from the loop it watches
KEEP = 8  # longest stalls kept with their stacks
STACK_DEPTH = 14  # innermost frames kept per sample
_SKIP = (os.sep + "asyncio" + os.sep, os.sep + "mode" + os.sep, os.sep + "faust" + os.sep + "utils" + os.sep)


@dataclass
class Stall:
    at: float  # wall-clock time the stall began
    ms: float
    samples: Counter = field(default_factory=Counter)  # stack (innermost last) -> samples

    def as_dict(self) -> dict[str, Any]:
        stacks = [{"samples": n, "stack": list(stack)} for stack, n in self.samples.most_common(3)]
        return {"at": round(self.at, 3), "ms": round(self.ms, 1), "sampled": sum(self.samples.values()), "stacks": stacks}


@dataclass
class LoopWatch:
    """Counts stalls over `threshold_ms` and keeps the `KEEP` longest with their sampled stacks."""

    threshold_ms: float = 100.0
    stalls: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    longest: list[Stall] = field(default_factory=list)
    _last: float = 0.0
    _samples: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _main: int = 0
    _stopped: bool = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin watching `loop` (call from the thread that runs it)."""
        if self._loop is not None:
            return
        self._loop, self._main = loop, threading.get_ident()
        self._last = time.monotonic()
        loop.call_soon(self._beat)
        threading.Thread(target=self._watch, name="wharf-loopwatch", daemon=True).start()

    def _beat(self) -> None:
        if self._stopped:
            return
        now = time.monotonic()
        gap_ms = (now - self._last) * 1e3
        self._last = now
        if gap_ms > self.threshold_ms:
            with self._lock:
                samples, self._samples = self._samples, Counter()
            self._record(Stall(time.time() - gap_ms / 1e3, gap_ms, samples))
        assert self._loop is not None
        self._loop.call_later(BEAT_SECONDS, self._beat)

    def stop(self) -> None:
        """Stop watching (the beat and the sampling thread end)."""
        self._stopped = True

    def _record(self, stall: Stall) -> None:
        self.stalls += 1
        self.total_ms += stall.ms
        self.max_ms = max(self.max_ms, stall.ms)
        self.longest.append(stall)
        self.longest.sort(key=lambda s: -s.ms)
        del self.longest[KEEP:]
        if stall.ms >= 1000:
            top = stall.samples.most_common(1)
            log.warning("event loop stalled %.0f ms; most seen in: %s", stall.ms,
                        " <- ".join(reversed(top[0][0])) if top else "no sample (C code held the GIL)")

    def _watch(self) -> None:
        threshold = self.threshold_ms / 1e3
        while not self._stopped:
            time.sleep(SAMPLE_SECONDS)
            if time.monotonic() - self._last > threshold:
                frame = sys._current_frames().get(self._main)  # noqa: SLF001 - the documented way to sample a thread
                if frame is not None:
                    stack = _stack(frame)
                    with self._lock:
                        self._samples[stack] += 1

    def reset(self) -> None:
        """Forget what was counted so far (a benchmark's rounds are counted one by one)."""
        self.stalls, self.total_ms, self.max_ms = 0, 0.0, 0.0
        self.longest.clear()

    def summary(self) -> str:
        return f"{self.stalls} stalls over {self.threshold_ms:.0f} ms, longest {self.max_ms:.0f} ms"

    def as_dict(self) -> dict[str, Any]:
        return {"threshold_ms": self.threshold_ms, "stalls": self.stalls, "total_ms": round(self.total_ms, 1),
                "max_ms": round(self.max_ms, 1), "longest": [s.as_dict() for s in self.longest]}


def _stack(frame: Any) -> tuple[str, ...]:
    """`file:line function` per frame, innermost last, without the loop's and Faust's plumbing."""
    out: list[str] = []
    while frame is not None and len(out) < STACK_DEPTH:
        code = frame.f_code
        if not any(part in code.co_filename for part in _SKIP):
            out.append(f"{_short(code.co_filename)}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return tuple(reversed(out))


def _short(path: str) -> str:
    parts = path.split(os.sep)
    return os.sep.join(parts[-2:])


watch = LoopWatch()
