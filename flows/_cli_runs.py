"""``feedback runs``: the runs table, one row per flow run, for people and scripts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from flows._cli_options import ConfigOption, DbOption
from flows._output import FormatOption, Listing, OutputFormat, print_listings
from pipelines.settings import load_settings
from pipelines.storage import Store, recent_runs, resolve_db_url

__all__ = ["RUN_COLUMNS", "open_read_only", "register", "run_rows", "stage_rows"]

RUN_COLUMNS = (
    "run_id",
    "flow",
    "status",
    "started_at",
    "finished_at",
    "seconds",
    "read",
    "stored",
    "duplicates",
    "quarantined",
    "skipped",
    "analysed",
    "model_versions",
    "message",
)
"""Columns of ``feedback runs`` (and of ``feedback status``'s runs), in order."""

_COUNTED = ("read", "stored", "duplicates", "quarantined", "skipped")


def run_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per run: per-source counts summed, duration in seconds.

    Args:
        runs: ``recent_runs`` rows.

    Returns:
        Rows with the keys of ``RUN_COLUMNS``.
    """
    rows = []
    for run in runs:
        counts = run.get("counts") or {}
        per_source = counts.get("sources") or []
        finished = run.get("finished_at")
        rows.append(
            {
                "run_id": run["run_id"],
                "flow": run["flow"],
                "status": run["status"],
                "started_at": run["started_at"],
                "finished_at": finished,
                "seconds": (
                    round((finished - run["started_at"]).total_seconds(), 1) if finished else None
                ),
                **{key: sum(int(s.get(key) or 0) for s in per_source) for key in _COUNTED},
                "analysed": counts.get("analysed"),
                "model_versions": run.get("model_versions") or {},
                "message": run.get("message"),
            }
        )
    return rows


def stage_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run and analysis stage: rows saved, new vs re-analysed records, seconds.

    Args:
        runs: ``recent_runs`` rows.

    Returns:
        Rows with ``run_id, flow, stage, version, rows, new, reanalysed, seconds`` (runs from
        before these details were recorded show rows only).
    """
    rows = []
    for run in runs:
        counts = run.get("counts") or {}
        details = counts.get("stage_details") or {}
        versions = run.get("model_versions") or {}
        for stage, saved in (counts.get("stages") or {}).items():
            detail = details.get(stage, {})
            rows.append(
                {
                    "run_id": run["run_id"],
                    "flow": run["flow"],
                    "stage": stage,
                    "version": versions.get(stage),
                    "rows": saved,
                    "new": detail.get("new"),
                    "reanalysed": detail.get("reanalysed"),
                    "seconds": detail.get("seconds"),
                }
            )
    return rows


def open_read_only(config: Path | None, db: str | None) -> Store:
    """The database of ``--db``, ``$FEEDBACK_DB_URL`` or the configuration, opened read-only.

    Args:
        config: ``--config`` folder (validated even when ``--db`` wins).
        db: ``--db`` value.

    Returns:
        The store (a context manager).
    """
    settings = load_settings(config)
    return Store(
        resolve_db_url(db or os.environ.get("FEEDBACK_DB_URL") or settings.database),
        read_only=True,
    )


def runs(
    config: ConfigOption = None,
    db: DbOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show the latest N runs.")] = 20,
    output: FormatOption = OutputFormat.table,
) -> None:
    """List flow runs, newest first: status, duration, counts, model versions, error message."""
    with open_read_only(config, db) as store:
        rows = run_rows(recent_runs(store, limit))
    print_listings(Listing("runs", f"Runs ({len(rows)})", RUN_COLUMNS, rows), output)


def register(app: typer.Typer) -> None:
    """Add the ``runs`` command to the CLI."""
    app.command()(runs)
