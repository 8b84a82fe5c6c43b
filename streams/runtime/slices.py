"""Cooperative time slices: long loops in agents yield to the event loop so requests are answered.

One worker process serves `GET /recommendations` and runs every agent on one event loop; a loop
that validates 10,000 clicks or learns a batch without yielding holds every request for its whole
length. Such loops call `Slice.tick()` per item: it yields once a slice has passed, a short one
while requests are being answered (a request needs a few turns of the loop: its read, its answer).
"""

from __future__ import annotations

import asyncio
from time import monotonic

SLICE_SECONDS = 0.004  # the longest a loop holds the event loop before yielding
SERVING_SLICE_SECONDS = 0.001  # the same while requests are being answered
SERVING_WINDOW_SECONDS = 0.05  # a request noted this recently means requests are being answered

_last_request = 0.0


def note_request() -> None:
    """Called by request handlers: loops take short slices for the next `SERVING_WINDOW_SECONDS`."""
    global _last_request
    _last_request = monotonic()


class Slice:
    """Yields to the event loop once a slice of work has passed since the last yield."""

    def __init__(self) -> None:
        self.started = monotonic()

    def due(self) -> bool:
        """Whether the slice has passed (`tick` would yield)."""
        now = monotonic()
        budget = SERVING_SLICE_SECONDS if now - _last_request < SERVING_WINDOW_SECONDS else SLICE_SECONDS
        return now - self.started >= budget

    async def tick(self) -> bool:
        """True if it yielded (other coroutines, e.g. a revocation, may have run meanwhile)."""
        if not self.due():
            return False
        await asyncio.sleep(0)
        self.started = monotonic()
        return True
