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
from sqlalchemy import exists, func, select

from pipelines._errors import LabelError
from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = [
    "LABEL_KINDS",
    "POLARITIES",
    "RATING_LABEL_MIN_CHARS",
    "Label",
    "labelled_texts",
    "latest_labels",
    "rating_sentiment",
    "record_labels",
    "record_rating_labels",
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


RATING_LABEL_MIN_CHARS = 20
"""Shortest analysis text (characters) whose star rating becomes a weak label: below it a
review is mostly the rating restated ("ok", "super!") and teaches the model little."""


def rating_sentiment(stars: object) -> str | None:
    """The weak sentiment label of a 1-5 star rating.

    Args:
        stars: The rating.

    Returns:
        negative (1-2), neutral (3), positive (4-5), or None for anything else.
    """
    if isinstance(stars, bool) or not isinstance(stars, int | float) or stars != int(stars):
        return None
    return {1: "negative", 2: "negative", 3: "neutral", 4: "positive", 5: "positive"}.get(
        int(stars)
    )


def record_rating_labels(
    store: Store, min_chars: int = RATING_LABEL_MIN_CHARS, at: datetime | None = None
) -> int:
    """Add a weak ``rating`` label to every rated record that has none yet.

    Copy-paste duplicates and texts shorter than ``min_chars`` are left out. NPS scores are
    not turned into labels: they rate the company, not what the text says.

    Args:
        store: The database.
        min_chars: Shortest analysis text that gets a label.
        at: Time of labelling (default now).

    Returns:
        Labels added.
    """
    feedback, labels = schema.feedback, schema.labels
    query = select(feedback.c.id, feedback.c.rating).where(
        feedback.c.rating.is_not(None),
        feedback.c.duplicate_of.is_(None),
        func.length(feedback.c.text) >= min_chars,
        ~exists().where(labels.c.record_id == feedback.c.id, labels.c.kind == "rating"),
    )
    with store.engine.connect() as connection:
        rated = connection.execute(query).all()
    weak = [
        Label(row.id, sentiment=sentiment, kind="rating", labelled_by="stars")
        for row in rated
        if (sentiment := rating_sentiment(row.rating)) is not None
    ]
    return record_labels(store, weak, at=at) if weak else 0


def labelled_texts(store: Store, kinds: Sequence[str] = LABEL_KINDS) -> pd.DataFrame:
    """The records whose label that counts gives a sentiment, with their analysis text.

    Args:
        store: The database.
        kinds: Label kinds to consider (see ``latest_labels``).

    Returns:
        One row per record: record_id, text, lang, sentiment, kind.
    """
    columns = ["record_id", "text", "lang", "sentiment", "kind"]
    latest = latest_labels(store, kinds)
    if latest.empty:
        return pd.DataFrame(columns=columns)
    latest = latest[latest["sentiment"].notna()]
    ids = latest["record_id"].tolist()
    texts: list[dict[str, object]] = []
    table = schema.feedback
    with store.engine.connect() as connection:
        for start in range(0, len(ids), 1000):
            query = select(table.c.id.label("record_id"), table.c.text, table.c.lang).where(
                table.c.id.in_(ids[start : start + 1000])
            )
            texts.extend(dict(row) for row in connection.execute(query).mappings())
    frame = latest[["record_id", "sentiment", "kind"]].merge(
        pd.DataFrame(texts, columns=["record_id", "text", "lang"]), on="record_id"
    )
    return frame[columns].sort_values("record_id").reset_index(drop=True)
