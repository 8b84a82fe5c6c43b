"""docs/settings.md's table of every setting, generated from `schemas.settings.describe()`.

`python -m wharf.settingsdoc` rewrites the block between the two markers in docs/settings.md;
`wharf settings --markdown` prints the same table; tests/test_cli.py fails while the file is stale.
One generator, so the documented names, defaults and meanings cannot drift from the code.
"""

from __future__ import annotations

import re
from pathlib import Path

from schemas.settings import describe

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
BLOCK = re.compile(re.escape(START) + r"\n.*?" + re.escape(END), re.S)


def table() -> str:
    """The Markdown table: variable, default, meaning; one row per setting, in the class's order."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{env}` | `{default}` | {desc} |" for env, default, desc in describe()]
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """`text` with its settings block replaced by the current table (ValueError if it has no block)."""
    if not BLOCK.search(text):
        raise ValueError(f"no {START} ... {END} block to fill")
    return BLOCK.sub(lambda _: f"{START}\n{table()}{END}", text, count=1)


def write(path: Path = DOC) -> bool:
    """Rewrite the table in `path`; True if it changed."""
    old = path.read_text()
    new = render(old)
    if new != old:
        path.write_text(new)
    return new != old


if __name__ == "__main__":
    print(f"{DOC}: {'rewritten' if write() else 'already current'}")
