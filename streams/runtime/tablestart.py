"""The tables start at once: Faust's `TableManager.on_start` pauses one second first, for nothing Wharf declares.

Faust's table manager sleeps 1 s before it registers the tables' changelog channels and starts their recovery, so
that tables declared while the app starts are still included; the conductor subscribes to no topic until then. Every
Wharf table is declared when its agent's module is imported, before the worker starts, and a table declared after
the manager started fails loudly (`TableManager.add`: "Too late to add tables at this point"), as it did after
Faust's second. That second was part of every worker start, and about a tenth of a 150,000-reading catch-up
(docs/performance.md). Relies on `TableManager._update_channels` and `recovery` (faust-streaming 0.15.3);
`tests/test_tablestart.py` fails if Faust's `on_start` changes.
"""

from __future__ import annotations

from typing import Any

from faust.tables.manager import TableManager

_faust_on_start = TableManager.on_start


async def _on_start(self: Any) -> None:
    """Faust's `TableManager.on_start` without its `await self.sleep(1.0)`."""
    if not self.should_stop:
        await self._update_channels()  # noqa: SLF001 - Faust's own step
        await self.recovery.start()


def install() -> None:
    """Patch `TableManager.on_start` (once)."""
    TableManager.on_start = _on_start
