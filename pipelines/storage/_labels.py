"""Labels for training: people's corrections and weak labels (star ratings), one row each.

A label is history, never overwritten: a record can be labelled again, and the newest human
label wins (``latest_labels``). Writes are all-or-nothing: one unknown record id or invalid value
refuses the whole batch with ``LabelError`` (E090), so an import is never half-written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import select

from pipelines._errors import LabelError
from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = [
    "LABEL_KINDS",
    "POLARITIES",
    "Label",
    "latest_labels",
    "record_labels",
    "resolve_external_ids",
]

POLARITIES = ("negative", "neutral", "positive")
LABEL_KINDS = ("human", "rating", "nps")
_KIND_RANK = {"human": 0, "nps": 1, "rating": 2}


@dataclass(frozen=True)
class Label:
    """One label of one stored record.

    Args:
        record_id: ``feedback.id`` of the record.
        sentiment: negative, neutral or positive; None when the label is about aspects only.
        aspects: Aspect name -> polarity.
        not_complaint: A person said the record is not a complaint (a wrong flag).
        kind: human, rating (weak label from stars) or nps.
        labelled_by: Who gave it (a lead's address, an analyst, an import file's name).
        note: Free text from the person.
    """

    record_id: str
    sentiment: str | None = None
    aspects: Mapping[str, str] = field(default_factory=dict)
    not_complaint: bool = False
    kind: str = "human"
    labelled_by: str | None = None
    note: str | None = None

    def problems(self, known_aspects: Sequence[str] | None = None) -> list[str]:
        """What is wrong with this label's values (empty when valid).

        Args:
            known_aspects: Aspect names to accept; None accepts any name.

        Returns:
            One message per problem.
        """
        problems = []
        if self.sentiment is not None and self.sentiment not in POLARITIES:
            problems.append(f"sentiment {self.sentiment!r} is not one of {', '.join(POLARITIES)}")
        if self.kind not in LABEL_KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(LABEL_KINDS)}")
        for aspect, polarity in self.aspects.items():
            if known_aspects is not None and aspect not in known_aspects:
                problems.append(f"unknown aspect {aspect!r} (aspects.yaml names them)")
            if polarity not in POLARITIES:
                problems.append(
                    f"aspect {aspect}: polarity {polarity!r} is not one of {POLARITIES}"
                )
        if self.sentiment is None and not self.aspects and not self.not_complaint:
            problems.append("gives no sentiment, aspect or not-a-complaint")
        return problems


def _label_id(label: Label, created_at: datetime) -> str:
    key = f"{label.record_id}|{label.kind}|{label.labelled_by}|{created_at.isoformat()}"
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).hexdigest()


def record_labels(
    store: Store,
    labels: Sequence[Label],
    *,
    known_aspects: Sequence[str] | None = None,
    at: datetime | None = None,
) -> int:
    """Store labels, all or nothing.

    Args:
        store: The database.
        labels: The labels to add.
        known_aspects: Aspect names to accept; None accepts any name.
        at: Time of labelling (default now).

    Returns:
        Labels written.

    Raises:
        LabelError: A record id is unknown or a value is invalid (the first few are named);
            nothing was written.
    """
    problems = [
        f"{label.record_id}: {problem}"
        for label in labels
        for problem in label.problems(known_aspects)
    ]
    wanted = sorted({label.record_id for label in labels})
    with store.begin() as connection:
        known: set[str] = set()
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start : start + 1000]
            known.update(
                connection.execute(
                    select(schema.feedback.c.id).where(schema.feedback.c.id.in_(chunk))
                ).scalars()
            )
        problems += [
            f"{record_id}: no such record" for record_id in wanted if record_id not in known
        ]
        if problems:
            shown = "; ".join(problems[:5]) + (
                f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
            )
            raise LabelError(
                f"{len(problems)} invalid label(s), nothing written: {shown}. Fix the ids "
                "(`feedback alerts list` or an export shows them) or values and try again."
            )
        created_at = at or datetime.now(UTC)
        rows = [
            {
                "label_id": _label_id(label, created_at),
                "record_id": label.record_id,
                "sentiment": label.sentiment,
                "aspects": dict(label.aspects) or None,
                "not_complaint": label.not_complaint,
                "kind": label.kind,
                "labelled_by": label.labelled_by,
                "note": label.note,
                "created_at": created_at,
            }
            for label in labels
        ]
        if rows:
            connection.execute(schema.labels.insert(), rows)
    return len(rows)


def resolve_external_ids(
    store: Store, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Record ids for (source, external_id) pairs; pairs not stored are absent from the result.

    Args:
        store: The database.
        keys: (source name, the source's own id) pairs.

    Returns:
        (source, external_id) -> ``feedback.id``.
    """
    table = schema.feedback
    found: dict[tuple[str, str], str] = {}
    by_source: dict[str, list[str]] = {}
    for source, external_id in keys:
        by_source.setdefault(source, []).append(external_id)
    with store.begin() as connection:
        for source, external_ids in by_source.items():
            for start in range(0, len(external_ids), 1000):
                rows = connection.execute(
                    select(table.c.source, table.c.external_id, table.c.id).where(
                        table.c.source == source,
                        table.c.external_id.in_(external_ids[start : start + 1000]),
                    )
                )
                found.update({(row.source, row.external_id): row.id for row in rows})
    return found


def latest_labels(store: Store, kinds: Sequence[str] = LABEL_KINDS) -> pd.DataFrame:
    """The label that counts for each labelled record: human over nps over rating, newest first.

    Args:
        store: The database.
        kinds: Label kinds to consider.

    Returns:
        One row per record: record_id, sentiment, aspects, not_complaint, kind, labelled_by,
        created_at.
    """
    table = schema.labels
    with store.begin() as connection:
        frame = pd.DataFrame(
            connection.execute(select(table).where(table.c.kind.in_(list(kinds)))).mappings().all(),
            columns=[column.name for column in table.columns],
        )
    if frame.empty:
        return frame.drop(columns=["label_id", "note"])
    frame["_rank"] = frame["kind"].map(_KIND_RANK)
    frame = frame.sort_values(["record_id", "_rank", "created_at"], ascending=[True, True, False])
    latest = frame.drop_duplicates("record_id").drop(columns=["_rank", "label_id", "note"])
    return latest.reset_index(drop=True)
