"""``feedback web``: the triage web page behind the alert mails."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from flows._cli_options import ConfigOption, DbOption

__all__ = ["register", "start_web"]

console = Console(highlight=False)


def start_web(
    host: str, port: int, config: str | None, db: str | None, background: bool = False
) -> None:
    """Check the secret and configuration, then serve the triage page.

    Raises:
        WebError: E070 without ``FEEDBACK_WEB_SECRET``; E077 when the port is taken.
    """
    from pipelines.web import load_web_settings, run_web

    settings = load_web_settings(config, db)
    console.print(
        f"Triage web page on http://{host}:{port} (mail links point at {settings.base_url}; "
        "set FEEDBACK_WEB_URL if that is not how leads reach it)."
    )
    run_web(settings, host, port, background=background)


def web(
    host: Annotated[
        str, typer.Option("--host", help="Interface to listen on (127.0.0.1: this machine).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8700,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Serve the triage web page (inbox, alert pages, acknowledge/assign/resolve/correct).

    Needs FEEDBACK_WEB_SECRET (>= 32 characters); FEEDBACK_WEB_URL is the address in mail links.
    """
    start_web(host, port, str(config) if config else None, db)


def register(app: typer.Typer) -> None:
    """Add ``feedback web`` to the CLI."""
    app.command("web")(web)
