"""Quarantined rows for people: list, show one, and the bookkeeping of replays."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select

from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = [
    "REPLAYED",
    "STILL_QUARANTINED",
    "find_quarantined",
    "list_quarantined",
    "record_replays",
]

REPLAYED = "replayed"
STILL_QUARANTINED = "still_quarantined"


def _rows_query() -> Select[Any]:
    quarantine, replays = schema.quarantine, schema.quarantine_replays
    return select(
        quarantine.c.id,
        quarantine.c.source,
        quarantine.c.reason,
        quarantine.c.detail,
        quarantine.c.created_at,
        quarantine.c.run_id,
        quarantine.c.raw,
        replays.c.outcome.label("replay"),
        replays.c.record_ids.label("replay_record_ids"),
        replays.c.reason.label("replay_reason"),
        replays.c.detail.label("replay_detail"),
        replays.c.replayed_at,
    ).outerjoin(replays, replays.c.quarantine_id == quarantine.c.id)


def list_quarantined(
    store: Store,
    source: str | None = None,
    reason: str | None = None,
    include_replayed: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Quarantined rows, oldest first, with their latest replay.

    Args:
        store: The database.
        source: Only this source.
        reason: Only this reason code.
        include_replayed: Also rows a replay turned into records.
        limit: At most this many rows; None: all.

    Returns:
        One dict per row: ``id, source, reason, detail, created_at, run_id, raw, replay,
        replay_record_ids, replay_reason, replay_detail, replayed_at``.
    """
    quarantine, replays = schema.quarantine, schema.quarantine_replays
    query = _rows_query().order_by(quarantine.c.created_at, quarantine.c.id)
    if source is not None:
        query = query.where(quarantine.c.source == source)
    if reason is not None:
        query = query.where(quarantine.c.reason == reason)
    if not include_replayed:
        query = query.where((replays.c.outcome.is_(None)) | (replays.c.outcome != REPLAYED))
    if limit is not None:
        query = query.limit(limit)
    with store.engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def find_quarantined(store: Store, prefix: str) -> list[dict[str, Any]]:
    """Quarantined rows whose id starts with ``prefix`` (``list_quarantined``'s keys).

    Args:
        store: The database.
        prefix: An id or its first characters.

    Returns:
        The matching rows (none, one, or several for a short prefix).
    """
    query = _rows_query().where(schema.quarantine.c.id.startswith(prefix.strip().lower()))
    with store.engine.connect() as connection:
        return [dict(row) for row in connection.execute(query.limit(10)).mappings()]


def record_replays(store: Store, run_id: str, outcomes: Sequence[dict[str, Any]]) -> None:
    """Save the outcome of replaying quarantined rows (one row per quarantined row, replaced).

    Args:
        store: The database.
        run_id: The replay run.
        outcomes: Dicts with ``quarantine_id``, ``outcome`` (``replayed`` or
            ``still_quarantined``) and optionally ``record_ids``, ``reason``, ``detail``.
    """
    now = datetime.now(UTC)
    store.upsert(
        schema.quarantine_replays,
        [
            {
                "quarantine_id": outcome["quarantine_id"],
                "outcome": outcome["outcome"],
                "record_ids": outcome.get("record_ids"),
                "reason": outcome.get("reason"),
                "detail": outcome.get("detail"),
                "run_id": run_id,
                "replayed_at": now,
            }
            for outcome in outcomes
        ],
    )
