"""Guard of `streams/runtime/tablestart.py`: the patched `TableManager.on_start` is Faust's own less its one-second
sleep, and a table declared after the tables started still fails loudly."""

from __future__ import annotations

import ast
import inspect
import textwrap

import faust
import pytest
from faust.tables.manager import TableManager

from streams.runtime import tablestart


def body(fun: object) -> list[str]:
    """The statements of a function, without its docstring, as AST dumps."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fun)))
    stmts = tree.body[0].body
    if stmts and isinstance(stmts[0], ast.Expr) and isinstance(stmts[0].value, ast.Constant):
        stmts = stmts[1:]
    return [ast.dump(s) for s in stmts]


def test_the_patch_is_faust_s_on_start_without_the_sleep() -> None:
    faust_body = body(tablestart._faust_on_start)  # noqa: SLF001
    assert faust_body[0] == ast.dump(ast.parse("async def f():\n    await self.sleep(1.0)").body[0].body[0])
    assert body(tablestart._on_start) == faust_body[1:]  # noqa: SLF001 - a change in Faust's on_start fails here
    tablestart.install()
    assert TableManager.on_start is tablestart._on_start  # noqa: SLF001


def test_a_table_declared_after_the_tables_started_is_refused() -> None:
    app = faust.App("tablestart-late", broker="kafka://127.0.0.1:1")
    app.tables._tables_finalized.set()  # noqa: SLF001 - what `_update_channels` sets when the tables start
    with pytest.raises(RuntimeError, match="Too late to add tables"):
        app.Table("late-table")
