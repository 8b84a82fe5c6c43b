"""`wharf`: the one command line. Subcommands are thin: they parse, call a module, print."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from wharf.settings import Settings, describe, get_settings

app = typer.Typer(
    name="wharf",
    help="Wharf: warehouse telemetry and shop events, MQTT -> Kafka -> Faust online models -> ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
infra_app = typer.Typer(help="Start, stop and inspect the local Kafka, Mosquitto and ClickHouse servers.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
console = Console()


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic's message already names the variable and the reason
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None


@infra_app.command("up")
def infra_up(
    services: str = typer.Option("", help="Comma-separated subset of kafka,mosquitto,clickhouse. Default: kafka and mosquitto, plus the ClickHouse server when WHARF_CLICKHOUSE_URL points at it."),
) -> None:
    """Start the servers (idempotent) and wait until each one answers."""
    from wharf import infra

    settings = _settings()
    names = [s.strip() for s in services.split(",") if s.strip()] or None
    started = time.monotonic()
    try:
        statuses = infra.up(settings, names)
    except infra.ServiceError as exc:
        console.print(f"[red]infra up failed:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    for st in statuses:
        took = "already running" if not st.ready_seconds else f"ready in {st.ready_seconds:.1f}s"
        console.print(f"[green]✓[/green] {st.name:<10} pid {st.pid:<7} {took:<18} {st.where}", soft_wrap=True)
    console.print(f"stack ready in {time.monotonic() - started:.1f}s; state in {settings.state_dir}")


@infra_app.command("down")
def infra_down(services: str = typer.Option("", help="Comma-separated subset; default all.")) -> None:
    """Stop the servers cleanly (SIGTERM, then SIGKILL after a timeout). Data stays in the state folder."""
    from wharf import infra

    names = [s.strip() for s in services.split(",") if s.strip()] or None
    stopped = infra.down(_settings(), names)
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@infra_app.command("status")
def infra_status() -> None:
    """What runs where; exit code 1 if a started service is down."""
    from wharf import infra

    settings = _settings()
    console.print(f"state folder: {settings.state_dir}")
    for st in infra.status(settings):
        state = "[green]running[/green]" if st.running else "[dim]stopped[/dim]"
        console.print(f"{st.name:<10} {state:<24} pid {str(st.pid or '-'):<7} {st.where}\n{'':<11}log {st.log}", soft_wrap=True)
    console.print(f"ClickHouse used by Wharf: {settings.clickhouse_url}", soft_wrap=True)


@app.command("worker")
def worker(
    web_port: int = typer.Option(0, help="Web server port of this worker (default WHARF_WEB_PORT). Give each worker on one machine its own."),
    loglevel: str = typer.Option("info", help="Log level."),
) -> None:
    """Run a Faust worker: all agents, the web endpoints, the ClickHouse writers. Start more to scale out."""
    import os

    if web_port:
        os.environ["WHARF_WEB_PORT"] = str(web_port)
        get_settings.cache_clear()
    from faust import Worker

    import agents  # noqa: F401 - registers the agents
    import streams.web  # noqa: F401 - registers the web views
    from streams.app import app as faust_app
    from streams.app import storage

    storage.ch  # connect and migrate before consuming, so a bad URL fails here, loudly
    faust_app.conf.datadir.parent.mkdir(parents=True, exist_ok=True)
    Worker(faust_app, loglevel=loglevel).execute_from_commandline()


@app.command("settings")
def show_settings(markdown: bool = typer.Option(False, help="Print the settings table as Markdown (for the README).")) -> None:
    """Every setting: environment variable, current value, meaning."""
    settings = _settings()
    current = settings.env()
    if markdown:
        print("| Variable | Default | Meaning |\n|---|---|---|")
        for env, default, desc in describe():
            print(f"| `{env}` | `{default}` | {desc} |")
        return
    table = Table(title="Wharf settings (WHARF_* environment, then WHARF_CONFIG TOML)")
    for col in ("variable", "value", "meaning"):
        table.add_column(col)
    for env, _default, desc in describe():
        table.add_row(env, current.get(env, ""), desc)
    console.print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
