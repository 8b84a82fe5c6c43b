"""streams.runtime.slices: long loops yield once their slice has passed, sooner while requests arrive."""

from __future__ import annotations

import asyncio

from streams.runtime import slices


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_slice_yields_only_after_its_budget(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(slices, "monotonic", clock)
    monkeypatch.setattr(slices, "_last_request", 0.0)
    ran = []
    work = slices.Slice()
    other = asyncio.get_running_loop().call_soon(ran.append, "other")  # runs only if the loop gets a turn
    clock.now += slices.SLICE_SECONDS / 2
    assert await work.tick() is False
    assert ran == []
    clock.now += slices.SLICE_SECONDS
    assert await work.tick() is True
    assert ran == ["other"]
    assert await work.tick() is False  # a new slice starts at the yield
    other.cancel()


async def test_slice_is_short_while_requests_arrive(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(slices, "monotonic", clock)
    monkeypatch.setattr(slices, "_last_request", 0.0)
    work = slices.Slice()
    clock.now += 2 * slices.SERVING_SLICE_SECONDS  # under SLICE_SECONDS: no yield without requests
    assert slices.SERVING_SLICE_SECONDS * 2 < slices.SLICE_SECONDS
    assert await work.tick() is False
    slices.note_request()
    assert await work.tick() is True
    clock.now += slices.SERVING_WINDOW_SECONDS + 2 * slices.SERVING_SLICE_SECONDS  # requests stopped a while ago
    work = slices.Slice()
    clock.now += 2 * slices.SERVING_SLICE_SECONDS
    assert await work.tick() is False
