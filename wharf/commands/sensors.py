"""CLI commands of the sensor path (`wharf alerts ...`, `wharf replay`, `wharf bench sensors`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to the main app and to the `wharf bench` group."""
