"""``feedback watch``: poll the sources in a loop and mail P1 alerts, no Prefect server needed."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from flows._cli_options import ConfigOption, DbOption, SourceOption
from pipelines._errors import FeedbackError
from pipelines._secrets import mask_credentials

if TYPE_CHECKING:
    from flows.watch import Watcher

__all__ = ["register"]

console = Console(highlight=False)

IntervalOption = Annotated[
    float, typer.Option("--interval", min=0.0, help="Seconds from one poll's start to the next.")
]
IterationsOption = Annotated[
    int, typer.Option("--iterations", min=0, help="Stop after this many polls (0: never).")
]


def watch(
    config: ConfigOption = None,
    db: DbOption = None,
    source: SourceOption = None,
    interval: IntervalOption = 15.0,
    iterations: IterationsOption = 0,
) -> None:
    """Poll the sources: store new records, flag them and mail P1 alerts at once (Ctrl+C stops).

    P2/P3 alerts are queued for the nightly digest. Models are loaded once, at start.
    """
    from flows.watch import Watcher  # Prefect is imported only by the commands that need it

    with console.status("Loading configuration and models..."):
        watcher = Watcher.from_config(config, db, source)
    console.print(
        f"Watching {len(watcher.sources)} source(s) every {interval:g} s into "
        f"{mask_credentials(watcher.store.url)}; "
        f"stages: {', '.join(stage.name for stage in watcher.stages) or 'none'}.",
        markup=False,
    )
    polls = 0
    try:
        while iterations == 0 or polls < iterations:
            started = time.monotonic()
            console.print(f"{datetime.now():%H:%M:%S} {_poll_line(watcher)}", markup=False)
            polls += 1
            if iterations == 0 or polls < iterations:
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        console.print(f"Stopped after {polls} poll(s).")


def _poll_line(watcher: Watcher) -> str:
    """Poll once; what happened, in one line."""
    from flows.watch import describe_holder

    try:
        summary = watcher.poll()
    except FeedbackError as exc:
        return f"poll failed: {exc}"
    if summary.busy_with is not None:
        return f"skipped: {describe_holder(summary.busy_with)} holds the pipeline lock"
    line = f"new records {summary.stored}, P1 alerts sent {summary.p1_sent}"
    if summary.alerts_waiting:
        line += f", P1 alerts waiting {summary.alerts_waiting}"
    for name, error in summary.failed_sources.items():
        line += f"; source {name} failed: {error}"
    for error in summary.delivery_errors:
        line += f"; mail error: {error}"
    return line


def register(app: typer.Typer) -> None:
    """Add the watch command to the CLI."""
    app.command()(watch)
