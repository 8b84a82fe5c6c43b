"""CLI commands of the commerce path (`wharf evaluate recommender`; `wharf bench commerce` is in wharf/bench/commerce.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from wharf import progress
from wharf.bench.commerce import bench_commerce


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Add this area's commands to the main app and to the `wharf bench` / `wharf evaluate` groups."""
    evaluate.command("recommender")(evaluate_recommender)
    bench.command("commerce")(bench_commerce)


# --- wharf evaluate recommender ---------------------------------------------------------------------------


def evaluate_recommender(
    file: Path = typer.Argument(None, help="Delimited interaction log (omit with --simulate)."),
    sep: str = typer.Option(",", help="Field separator (e.g. '::' for MovieLens .dat, '\\t')."),
    user_col: str = typer.Option("user_id", help="User column: header name or 0-based position."),
    item_col: str = typer.Option("item_id", help="Item column: header name or 0-based position."),
    time_col: list[str] = typer.Option([], help="Time column(s), in sort order; repeat the option for several."),
    action_col: str = typer.Option(None, help="Action column (view / add_to_cart / purchase / remove)."),
    rating_col: str = typer.Option(None, help="Rating column (needed by --mode rating)."),
    no_header: bool = typer.Option(False, help="The file has no header line (name columns by position)."),
    mode: str = typer.Option("implicit", help="implicit: next-interaction HR@k / NDCG@k; rating: MAE / RMSE."),
    k: int = typer.Option(10, help="Cut-off of HR@k / NDCG@k."),
    every: int = typer.Option(None, help="Rank every n-th eligible event (default: about --max-evals of them)."),
    max_evals: int = typer.Option(10_000, help="About this many ranked events."),
    max_rows: int = typer.Option(None, help="Read at most this many rows."),
    time_scale: float = typer.Option(1.0, help="Multiply the recommender's half-lives and session gap (slow logs: > 1)."),
    simulate: int = typer.Option(0, help="Instead of a file: this many clicks of the shop simulator."),
) -> None:
    """Prequential (rank, then learn) evaluation of the online recommender against co-occurrence and popularity baselines."""
    from online_models.evaluation import recommender as rec_eval
    from wharf.simulator.evaluation import evaluate_simulator

    started = time.monotonic()
    if not simulate and (file is None or not file.is_file()):
        print(f"{file}: no such file (or pass --simulate N)", file=sys.stderr)
        raise typer.Exit(2)
    with progress.bar("events (rank, then learn)") as report_progress:
        if simulate:
            report = evaluate_simulator(simulate, k=k, every=every, max_evals=max_evals, progress=report_progress)
        else:
            report = rec_eval.evaluate_file(
                file, user_col=user_col, item_col=item_col, time_cols=tuple(time_col), action_col=action_col,
                rating_col=rating_col, sep=sep.encode().decode("unicode_escape"), header=not no_header, mode=mode, k=k,
                every=every, max_evals=max_evals, max_rows=max_rows, time_scale=time_scale, progress=report_progress,
            )
    print(report.format())
    print(f"({time.monotonic() - started:.1f}s)")
