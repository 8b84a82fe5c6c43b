"""streams.runtime.patches: the worker refuses a Faust or mode version its patches were not tested with."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from schemas.settings import Settings
from streams.runtime.patches import TESTED, UnsupportedFaust, check_versions


def test_the_installed_versions_are_the_tested_ones() -> None:
    check_versions()  # what `wharf worker` runs at start-up: no error for what pyproject.toml installs
    assert {name: version(name) for name in TESTED}  # both packages are installed


@pytest.mark.parametrize(("package", "found"), [("faust-streaming", "0.16.0"), ("faust-streaming", "0.15.2"),
                                                ("mode-streaming", "0.8.0")])
def test_a_version_outside_the_tested_range_is_refused_by_name(package: str, found: str) -> None:
    versions = {name: low for name, (low, _high) in TESTED.items()} | {package: found}
    with pytest.raises(UnsupportedFaust, match=rf"{package} {found} \(tested: >="):
        check_versions(versions)


def test_the_worker_consumer_fetches_with_the_configured_wait_not_faust_s_1500_ms(stack: Settings) -> None:
    """Faust creates the worker's consumer with a fixed 1,500 ms fetch wait; a busy worker's records then sat in Kafka
    that long (`streams/runtime/fetchwait.py`). The consumer the worker's own code creates, started on the real
    broker (its fetcher is made then), fetches with `kafka_fetch_max_wait_ms` and `kafka_fetch_min_bytes`. In a
    process of its own: creating the app's consumer closes the batch agents' declarations."""
    code = """
import asyncio
from streams.runtime.app import app, settings

async def main():
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    await consumer.start()
    try:
        print(settings.kafka_fetch_max_wait_ms, consumer._fetcher._fetch_max_wait_ms,
              settings.kafka_fetch_min_bytes, consumer._fetcher._fetch_min_bytes)
    finally:
        await consumer.stop()

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "WHARF_KAFKA_FETCH_MAX_WAIT_MS": "77", "WHARF_KAFKA_FETCH_MIN_BYTES": "4321"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-4:] == ["77", "77", "4321", "4321"]


def test_faust_s_getmany_is_the_one_the_batch_fetch_follows() -> None:
    """`streams/runtime/batches.py` `_fetched` makes a fetch's messages as Faust's `Consumer.getmany` does, step for
    step (less its generator and its per-record high-water mark). A Faust whose `getmany` differs fails here: compare
    the two, then pin the new digest."""
    import ast
    import hashlib
    import inspect
    import textwrap

    from faust.transport.consumer import Consumer

    fn = ast.parse(textwrap.dedent(inspect.getsource(Consumer.getmany))).body[0]
    body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) else fn.body  # without the docstring
    digest = hashlib.sha256("\n".join(ast.dump(s) for s in body).encode()).hexdigest()
    assert digest == "1bbced9e0d56df54b23295f63e6fbf13820c85e4164dc9c8ba480e1428be1da6"
