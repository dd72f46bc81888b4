"""The ``labels`` table on both backends: all-or-nothing writes, newest human label wins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pipelines._errors import LabelError
from pipelines.storage import (
    Label,
    Store,
    latest_labels,
    record_labels,
    resolve_external_ids,
    schema,
)


def _stored_record(store: Store, record_id: str, external_id: str) -> None:
    now = datetime.now(UTC)
    store.insert_ignore(
        schema.feedback,
        [
            {
                "id": record_id,
                "source": "reviews",
                "channel": "review",
                "external_id": external_id,
                "created_at": now,
                "text": "Uygulama ödeme adımında çöküyor.",
                "text_hash": record_id,
                "run_id": "run-1",
                "ingested_at": now,
            }
        ],
    )


def test_a_bad_label_refuses_the_whole_batch(store: Store) -> None:
    _stored_record(store, "r1", "ext-1")
    batch = [
        Label("r1", sentiment="negative", labelled_by="lead@example.test"),
        Label("r-missing", sentiment="negative"),
        Label("r1", sentiment="angry"),
        Label("r1", aspects={"teleport": "negative"}),
    ]
    with pytest.raises(LabelError) as refused:
        record_labels(store, batch, known_aspects=["app_website_checkout"])
    message = str(refused.value)
    assert message.startswith("[E090] 3 invalid label(s), nothing written")
    assert "r-missing: no such record" in message and "'angry'" in message
    assert "'teleport'" in message
    assert store.count(schema.labels) == 0


def test_newest_human_label_wins_over_weak_ones(store: Store) -> None:
    _stored_record(store, "r1", "ext-1")
    _stored_record(store, "r2", "ext-2")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    record_labels(store, [Label("r1", sentiment="positive", kind="rating")], at=start)
    record_labels(store, [Label("r1", sentiment="neutral", labelled_by="a")], at=start)
    record_labels(
        store,
        [Label("r1", sentiment="negative", aspects={"app_website_checkout": "negative"})],
        at=start + timedelta(hours=1),
    )
    record_labels(store, [Label("r2", not_complaint=True, labelled_by="b")], at=start)

    latest = latest_labels(store).set_index("record_id")
    assert latest.loc["r1", "sentiment"] == "negative"
    assert latest.loc["r1", "aspects"] == {"app_website_checkout": "negative"}
    assert bool(latest.loc["r2", "not_complaint"]) and pd.isna(latest.loc["r2", "sentiment"])
    assert store.count(schema.labels) == 4
    assert len(latest_labels(store, kinds=["rating"])) == 1


def test_external_ids_resolve_per_source(store: Store) -> None:
    _stored_record(store, "r1", "ext-1")
    found = resolve_external_ids(store, [("reviews", "ext-1"), ("reviews", "nope"), ("x", "ext-1")])
    assert found == {("reviews", "ext-1"): "r1"}
