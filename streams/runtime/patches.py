"""Every change Wharf makes to faust-streaming's and mode's own code, installed from `install`, and the versions
it was written and tested against.

Each patch reaches into private internals, so a new Faust release can silently break it; the worker refuses to
start on a version outside `TESTED`. docs/faust-patches.md lists each patch with its upstream issue, why it
exists and the test that guards it. To move to a new release: run those tests on it, then widen `TESTED`.

What `install` patches in place (class attributes, or the app's consumer):
- `Collection._verify_source_topic_partitions`: a changelog not yet in the metadata is no mismatch
  (`streams/runtime/partition_check.py`);
- `AIOKafkaConsumerThread._create_worker_consumer`: the worker consumer's fetch wait is `kafka_fetch_max_wait_ms`,
  not Faust's fixed 1,500 ms, and it gathers `kafka_fetch_min_bytes` (`streams/runtime/fetchwait.py`);
- `TableManager.on_start`: the tables start without Faust's one-second pause (`streams/runtime/tablestart.py`);
- `Consumer.wait_first`, when `faust_fast_dispatch` is on: no rebalance guard around a delivery that cannot
  block (`streams/runtime/fastpath.py`).
What `WharfApp` overrides (`streams/runtime/app.py`), which `install` checks are in place:
- `App.flow_control`: `resume()` keeps queues that are flowing (`streams/runtime/flow.py`);
- `App._new_consumer`: batch agents take the consumer's callback and `getmany`, which makes a fetch's messages as
  Faust's `Consumer.getmany` does (`streams/runtime/batches.py` `_fetched`);
- `App._on_agent_error`: a failed agent stops the worker.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from packaging.version import Version

# package -> (lowest version, first version above the range): what the patches were written and tested for.
TESTED: dict[str, tuple[str, str]] = {
    "faust-streaming": ("0.15.3", "0.15.4"),
    "mode-streaming": ("0.7.1", "0.7.2"),
}


class UnsupportedFaust(RuntimeError):
    """A faust-streaming or mode version the patches were not tested with: the worker does not start."""


def check_versions(found: dict[str, str] | None = None) -> None:
    """Raise `UnsupportedFaust` naming each package whose version (`found`, default: the installed ones) is outside `TESTED`."""
    found = found if found is not None else {name: version(name) for name in TESTED}
    wrong = [f"{name} {found[name]} (tested: >={low},<{high})" for name, (low, high) in TESTED.items()
             if not Version(low) <= Version(found[name]) < Version(high)]
    if wrong:
        raise UnsupportedFaust(
            f"Wharf's Faust patches (streams/runtime/patches.py) were not tested with {', '.join(wrong)}. "
            "Install the tested versions (pip install -e .), or run the tests that guard each patch "
            "(docs/faust-patches.md) on the new version and widen TESTED.")


def install(app: Any, fast_dispatch: bool, fetch_max_wait_ms: int, fetch_min_bytes: int) -> None:
    """Check the versions, then install every patch: the class patches now, the consumer's when it exists (an app task)."""
    from streams.runtime import fetchwait, partition_check, tablestart

    check_versions()
    missing = [name for name in ("flow_control", "_new_consumer", "_on_agent_error") if name not in type(app).__dict__]
    if missing:
        raise TypeError(f"{type(app).__name__} lacks Wharf's overrides {missing} (streams/runtime/app.py WharfApp)")
    partition_check.install()
    fetchwait.install(fetch_max_wait_ms, fetch_min_bytes)
    tablestart.install()

    if fast_dispatch:
        @app.task
        async def _fast_dispatch() -> None:
            from streams.runtime import fastpath

            fastpath.install(app)
