"""CLI commands of the commerce path (`wharf evaluate recommender`, `wharf bench commerce`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Add this area's commands to the main app and to the `wharf bench` / `wharf evaluate` groups."""
