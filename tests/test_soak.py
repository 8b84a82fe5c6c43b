"""`wharf bench soak`'s arithmetic and the fleet it runs (the run itself: `wharf bench soak`, docs/performance.md)."""

from __future__ import annotations

import math
import os

from wharf.bench.memory import peak_rss_mb, rss_mb
from wharf.bench.soak import TARGET_PCT_PER_HOUR, Series, growth_table, learner_pids
from wharf.simulator.warehouse import WarehouseConfig, WarehouseSimulator


def test_growth_is_the_slope_after_warmup_relative_to_the_rss_then() -> None:
    s = Series("worker")
    s.samples = [(0.0, 100.0), (300.0, 900.0)]  # the warm-up jump (a model loading) is left out
    s.samples += [(600.0 + 60 * i, 1000.0 + i) for i in range(11)]  # then 1 MB a minute: 60 MB/hour on 1,000 MB
    base, mb_per_hour, pct = s.growth(600.0)
    assert base == 1000.0
    assert abs(mb_per_hour - 60.0) < 1e-6
    assert abs(pct - 6.0) < 1e-6
    table = growth_table([s], 600.0, 1200.0)
    assert "MISSED" in table and f"< {TARGET_PCT_PER_HOUR:.0f} %/hour" in table


def test_flat_after_warmup_meets_the_target_and_too_few_samples_say_so() -> None:
    flat = Series("bridge", [(0.0, 40.0)] + [(600.0 + 60 * i, 60.0 + (i % 2) * 0.1) for i in range(20)])
    assert "met" in growth_table([flat], 600.0, 1800.0)
    short = Series("learner-1", [(0.0, 170.0), (60.0, 171.0)])
    assert short.growth(600.0) is None
    assert "too few samples" in growth_table([short], 600.0, 60.0)


def test_rss_of_this_process_and_a_gone_one() -> None:
    assert rss_mb(os.getpid()) > 1.0
    assert rss_mb(2**22 + 12345) is None  # above the kernel's pid limit: no such process
    assert peak_rss_mb() >= rss_mb() > 1.0  # this process: the peak is never below the current figure
    assert math.isnan(peak_rss_mb(2**22 + 12345))
    assert learner_pids(os.getpid()) == []


def test_a_device_prefix_renames_every_device_and_keeps_the_rest() -> None:
    plain = WarehouseSimulator(WarehouseConfig(seed=7))
    soak = WarehouseSimulator(WarehouseConfig(seed=7, device_prefix="soak-"))
    assert [d.device_id for d in soak.devices] == ["soak-" + d.device_id for d in plain.devices]
    assert [(d.site, d.zone, d.device_type) for d in soak.devices] == [(d.site, d.zone, d.device_type) for d in plain.devices]
    assert all(entry.split("=")[0].startswith("soak-") for entry in soak.registry_setting().split(","))


def test_learner_bench_drives_a_real_learner_process_and_samples_it() -> None:
    """`wharf bench learner` on a few simulated minutes: a real learner process learns the demo's clicks through its
    pipes, and each sample has its RSS (a live process) at increasing simulated times."""
    import asyncio

    from wharf.bench.learner import drive

    series = asyncio.run(drive(hours=0.1, partitions=2, snapshot_s=15.0, checkpoint_s=5.0, rate=20.0, seed=7, every_h=0.05))
    times = [t for t, _ in series.samples]
    assert len(times) >= 3 and times == sorted(times) and times[-1] >= 0.1 * 3600
    assert all(mb > 50 for _, mb in series.samples)  # a Python process with the recommender loaded
