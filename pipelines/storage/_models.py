"""Model registry: heads trained from the store's labels, one row per version.

A version is a ``candidate`` when registered, ``promoted`` while analysis uses it (at most one
per kind) and ``retired`` after another took its place. ``promoted_at`` is the time of the last
promotion and stays on a version retired by a later promotion, so ``rollback_model`` can go back
one promotion at a time: it retires the promoted version (clearing its ``promoted_at``) and
promotes again the one promoted just before it (or none: analysis falls back to the committed
model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from pipelines._errors import ModelVersionError
from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = [
    "MODEL_STATUSES",
    "ModelArtifact",
    "ModelVersion",
    "list_models",
    "model_artifact",
    "promote_model",
    "promoted_model",
    "register_model",
    "rollback_model",
]

MODEL_STATUSES = ("candidate", "promoted", "retired")


@dataclass(frozen=True)
class ModelVersion:
    """One registered model (without its weights).

    Attributes:
        version: The head's version, stored with every prediction it makes.
        kind: What it predicts (``sentiment``).
        status: candidate, promoted or retired.
        created_at: When it was registered.
        promoted_at: Its last promotion, or None if never promoted.
        parent_version: The model in use when it was trained.
        metrics: Dev, held-back and gate figures measured at training time.
    """

    version: str
    kind: str
    status: str
    created_at: datetime
    promoted_at: datetime | None
    parent_version: str | None
    metrics: dict[str, Any]


@dataclass(frozen=True)
class ModelArtifact:
    """What loading a registered model (head or stack) needs.

    Attributes:
        version: The version.
        head_metadata: The head's JSON metadata (a stack's parts under ``stack``).
        weights: Its weights as safetensors bytes.
    """

    version: str
    head_metadata: dict[str, Any]
    weights: bytes


_SUMMARY_COLUMNS = (
    "version",
    "kind",
    "status",
    "created_at",
    "promoted_at",
    "parent_version",
    "metrics",
)


def _summary(row: Mapping[str, Any]) -> ModelVersion:
    return ModelVersion(**{name: row[name] for name in _SUMMARY_COLUMNS})


def register_model(
    store: Store,
    *,
    version: str,
    kind: str,
    head_metadata: Mapping[str, Any],
    weights: bytes,
    metrics: Mapping[str, Any],
    parent_version: str | None,
    at: datetime | None = None,
) -> bool:
    """Add a candidate; a version already registered is left as it is.

    Args:
        store: The database.
        version: The head's version (a digest of its weights).
        kind: What it predicts (``sentiment``).
        head_metadata: The head's JSON metadata.
        weights: Safetensors bytes of its weights.
        metrics: Figures measured at training time.
        parent_version: The model in use when it was trained (None: the committed model's).
        at: Registration time (default now).

    Returns:
        Whether it was new.
    """
    row = {
        "version": version,
        "kind": kind,
        "status": "candidate",
        "created_at": at or datetime.now(UTC),
        "promoted_at": None,
        "parent_version": parent_version,
        "metrics": dict(metrics),
        "head_metadata": dict(head_metadata),
        "weights": weights,
    }
    return store.insert_ignore(schema.model_versions, [row]) == 1


def list_models(store: Store, kind: str) -> list[ModelVersion]:
    """Registered versions of ``kind``, newest first.

    Args:
        store: The database.
        kind: ``sentiment``.

    Returns:
        Their summaries.
    """
    table = schema.model_versions
    query = (
        select(*(table.c[name] for name in _SUMMARY_COLUMNS))
        .where(table.c.kind == kind)
        .order_by(table.c.created_at.desc(), table.c.version)
    )
    with store.engine.connect() as connection:
        return [_summary(row) for row in connection.execute(query).mappings()]


def promoted_model(store: Store, kind: str) -> ModelVersion | None:
    """The version analysis uses for ``kind``, or None (the committed model).

    Args:
        store: The database.
        kind: ``sentiment``.

    Returns:
        Its summary, or None.
    """
    table = schema.model_versions
    query = select(*(table.c[name] for name in _SUMMARY_COLUMNS)).where(
        table.c.kind == kind, table.c.status == "promoted"
    )
    with store.engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return None if row is None else _summary(row)


def model_artifact(store: Store, version: str) -> ModelArtifact:
    """The metadata and weights of a registered version.

    Args:
        store: The database.
        version: The version.

    Returns:
        The artifact.

    Raises:
        ModelVersionError: No such version.
    """
    table = schema.model_versions
    query = select(table.c.version, table.c.head_metadata, table.c.weights).where(
        table.c.version == version
    )
    with store.engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    if row is None:
        raise ModelVersionError(f"model {version} is not in the store; see `feedback models list`")
    return ModelArtifact(row["version"], row["head_metadata"], bytes(row["weights"]))


def _status(connection: Connection, version: str) -> tuple[str, str]:
    table = schema.model_versions
    row = connection.execute(
        select(table.c.kind, table.c.status).where(table.c.version == version)
    ).first()
    if row is None:
        raise ModelVersionError(f"model {version} is not in the store; see `feedback models list`")
    return row.kind, row.status


def promote_model(store: Store, version: str, at: datetime | None = None) -> str | None:
    """Make ``version`` the one analysis uses; the one promoted before is retired.

    Args:
        store: The database.
        version: A registered version.
        at: Promotion time (default now).

    Returns:
        The version it replaced, or None.

    Raises:
        ModelVersionError: No such version.
    """
    table = schema.model_versions
    with store.begin() as connection:
        kind, status = _status(connection, version)
        if status == "promoted":
            return None
        previous = connection.execute(
            select(table.c.version).where(table.c.kind == kind, table.c.status == "promoted")
        ).scalar()
        connection.execute(
            table.update()
            .where(table.c.kind == kind, table.c.status == "promoted")
            .values(status="retired")
        )
        connection.execute(
            table.update()
            .where(table.c.version == version)
            .values(status="promoted", promoted_at=at or datetime.now(UTC))
        )
    return previous


def rollback_model(store: Store, kind: str) -> tuple[str, str | None]:
    """Retire the promoted version and promote again the one promoted before it.

    Args:
        store: The database.
        kind: ``sentiment``.

    Returns:
        (version retired, version promoted again or None for the committed model).

    Raises:
        ModelVersionError: No version of ``kind`` is promoted.
    """
    table = schema.model_versions
    with store.begin() as connection:
        current = connection.execute(
            select(table.c.version, table.c.promoted_at).where(
                table.c.kind == kind, table.c.status == "promoted"
            )
        ).first()
        if current is None:
            raise ModelVersionError(
                f"no {kind} model is promoted, so there is nothing to roll back; analysis "
                "already uses the committed model"
            )
        earlier = connection.execute(
            select(table.c.version)
            .where(
                table.c.kind == kind,
                table.c.status == "retired",
                table.c.promoted_at < current.promoted_at,
            )
            .order_by(table.c.promoted_at.desc())
            .limit(1)
        ).scalar()
        # A rolled-back version loses its promotion: no later rollback returns to it.
        connection.execute(
            table.update()
            .where(table.c.version == current.version)
            .values(status="retired", promoted_at=None)
        )
        if earlier is not None:
            connection.execute(
                table.update().where(table.c.version == earlier).values(status="promoted")
            )
    return current.version, earlier
