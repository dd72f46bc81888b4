"""Run bookkeeping: one row per flow run in ``runs``, read back by ``feedback status``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = ["finish_run", "mark_crashed", "recent_runs", "start_run"]


def start_run(store: Store, run_id: str, flow: str, parameters: dict[str, Any]) -> None:
    """Record that a run started (idempotent for the same run id)."""
    store.upsert(
        schema.runs,
        [
            {
                "run_id": run_id,
                "flow": flow,
                "started_at": datetime.now(UTC),
                "status": "running",
                "parameters": parameters,
            }
        ],
    )


def finish_run(
    store: Store,
    run_id: str,
    status: str,
    counts: dict[str, Any],
    model_versions: dict[str, str] | None = None,
    message: str | None = None,
) -> None:
    """Record a run's outcome.

    Args:
        store: Database.
        run_id: The run.
        status: ``completed`` or ``failed`` (``crashed`` is set by ``mark_crashed``).
        counts: Per-source and per-stage counts.
        model_versions: Stage name -> version used.
        message: Error message of a failed run.
    """
    table = schema.runs
    with store.begin() as connection:
        connection.execute(
            update(table)
            .where(table.c.run_id == run_id)
            .values(
                finished_at=datetime.now(UTC),
                status=status,
                counts=counts,
                model_versions=model_versions or {},
                message=message,
            )
        )


def mark_crashed(store: Store, message: str, keep: str | None = None) -> list[str]:
    """Mark every run still ``running`` (but ``keep``) as ``crashed``.

    Called by the holder of the pipeline lock: a run is ``running`` only while it holds that lock,
    so any other ``running`` run ended without finishing (killed, machine lost).

    Args:
        store: Database.
        message: Why, stored in ``runs.message``.
        keep: The run taking the lock, left alone.

    Returns:
        Ids of the runs marked crashed.
    """
    table = schema.runs
    running = table.c.status == "running"
    if keep is not None:
        running = running & (table.c.run_id != keep)
    with store.begin() as connection:
        crashed = list(connection.execute(select(table.c.run_id).where(running)).scalars())
        if crashed:
            connection.execute(
                update(table)
                .where(running, table.c.run_id.in_(crashed))
                .values(finished_at=datetime.now(UTC), status="crashed", message=message)
            )
    return crashed


def recent_runs(store: Store, limit: int = 10) -> list[dict[str, Any]]:
    """The latest runs, newest first: one dict per ``runs`` row, NULL as None."""
    table = schema.runs
    query = select(table).order_by(table.c.started_at.desc()).limit(limit)
    with store.engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]
