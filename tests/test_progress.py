"""Progress bars go to a terminal's stderr only: piped runs print exactly the same results with nothing on
stderr, and a run whose stderr is a terminal shows the bar there without changing stdout."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from wharf import progress

ROOT = Path(__file__).resolve().parent.parent


def test_no_bar_without_a_terminal():
    assert not progress.enabled()  # pytest captures stderr
    with progress.bar("nothing") as report:
        report(1, 2)  # a no-op, drawing nothing


def _evaluate(path: Path, stderr_tty: bool, env: dict[str, str]) -> tuple[bytes, bytes]:
    argv = [sys.executable, "-m", "wharf.cli", "evaluate", "sentiment", "--encoder", "lexicon", str(path)]
    if not stderr_tty:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=120, check=True)
        return done.stdout, done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read()
    assert proc.wait(120) == 0, err
    os.close(master)
    return out, err


def test_evaluate_shows_progress_on_a_terminal_only(tmp_path):
    rows = [("a wonderful, lovely product", 1), ("awful and broken, I hate it", 0)] * 400
    path = tmp_path / "reviews.txt"
    path.write_text("".join(f"{text}\t{label}\n" for text, label in rows))
    env = {**os.environ, "COLUMNS": "100"}
    piped_out, piped_err = _evaluate(path, False, env)
    assert piped_err == b"" and b"accuracy" in piped_out.lower(), (piped_out, piped_err)
    tty_out, tty_err = _evaluate(path, True, env)
    assert b"reviews.txt (lexicon)" in tty_err, tty_err[-500:]
    results = lambda out: [line for line in out.splitlines() if b"reviews/s" not in line]  # noqa: E731 - all but the timing
    assert results(tty_out) == results(piped_out) and len(results(piped_out)) >= 3
    assert _evaluate(path, True, {**env, "WHARF_PROGRESS": "0"})[1] == b""
