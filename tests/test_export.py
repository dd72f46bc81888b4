"""``feedback export``: the documented, versioned schema, round-tripped through pandas/pyarrow."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.export import EXPORT_DTYPES, EXPORT_SCHEMA_VERSION, read_export
from pipelines.storage import Store, schema

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _feedback(record_id: str, created_at: datetime, **extra: object) -> dict[str, object]:
    return {
        "id": record_id,
        "source": "shop",
        "channel": "review",
        "external_id": record_id,
        "created_at": created_at,
        "text": f"Kargo geç geldi {record_id}, yazın: [EMAIL]",
        "rating": 2,
        "author": "[AUTHOR:abc123]",
        "raw": {"secret_column": "kept only in the database"},
        "text_hash": record_id,
        "lang": "tr",
        "lang_confidence": 0.97,
        "run_id": "run-1",
        "ingested_at": created_at,
        "nps": None,
        "customer_value": None,
        "product": None,
        **extra,
    }


def fill(store: Store) -> None:
    """Three records (one outside the range), two sentiment versions for one, aspects, a topic
    with a human label, flags."""
    store.upsert(
        schema.feedback,
        [
            _feedback("r1", T0, customer_value=120.5, nps=3),
            _feedback("r2", T0 + timedelta(hours=1), product="Kettle K2"),
            _feedback("r3", T0 + timedelta(days=9)),
        ],
    )
    sentiment = [
        ("r1", "sent@1", "neutral", T0),
        ("r1", "sent@2", "negative", T0 + timedelta(days=1)),  # a rerun with a newer model wins
        ("r2", "sent@1", "positive", T0),
        ("r3", "sent@1", "negative", T0),
    ]
    store.upsert(
        schema.sentiment,
        [
            {
                "record_id": record_id,
                "model_version": version,
                "label": label,
                "negative": 0.8 if label == "negative" else 0.1,
                "neutral": 0.1,
                "positive": 0.1 if label == "negative" else 0.8,
                "run_id": "run-1",
                "created_at": at,
            }
            for record_id, version, label, at in sentiment
        ],
    )
    store.upsert(
        schema.aspects,
        [
            {
                "record_id": "r1",
                "aspect": aspect,
                "model_version": version,
                "polarity": "negative",
                "score": 0.9,
                "run_id": "run-1",
                "created_at": at,
            }
            for aspect, version, at in [
                ("price", "asp@1", T0),
                ("delivery", "asp@2", T0 + timedelta(days=1)),
                ("support", "asp@2", T0 + timedelta(days=1)),
            ]
        ],
    )
    store.upsert(
        schema.topics,
        [
            {
                "model_version": "top@1",
                "topic_id": 4,
                "keywords": ["kargo"],
                "size": 2,
                "auto_label": "kargo / geç",
            }
        ],
    )
    store.upsert(
        schema.topic_labels, [{"topic_id": 4, "label": "Late deliveries", "updated_at": T0}]
    )
    store.upsert(
        schema.record_topics,
        [
            {
                "record_id": r,
                "model_version": "top@1",
                "topic_id": 4,
                "similarity": 0.7,
                "run_id": "run-1",
                "created_at": T0,
            }
            for r in ("r1", "r2")
        ],
    )
    store.upsert(
        schema.flags,
        [
            {
                "record_id": "r1",
                "rules_version": "rules@1",
                "flagged": True,
                "priority": "P1",
                "points": 9,
                "reasons": ["negative 0.80", "churn intent"],
                "churn_intent": True,
                "run_id": "run-1",
                "created_at": T0,
            }
        ],
    )


@pytest.mark.parametrize("output", ["parquet", "csv", "jsonl"])
def test_export_round_trips_with_the_documented_dtypes(
    store: Store, tmp_path: Path, output: str
) -> None:
    fill(store)
    target = tmp_path / f"out.{output}"
    result = CliRunner().invoke(
        app,
        [
            "export",
            "--db",
            store.url,
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-08T00:00:00+03:00",
            "--format",
            output,
            "-o",
            str(target),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Exported 2 record(s)" in result.stdout

    frame = read_export(target)
    assert list(frame.columns) == list(EXPORT_DTYPES)
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == EXPORT_DTYPES
    r1, r2 = frame.to_dict(orient="records")
    assert (r1["id"], r2["id"]) == ("r1", "r2")
    assert r1["schema_version"] == EXPORT_SCHEMA_VERSION
    assert r1["created_at"] == pd.Timestamp(T0)
    assert (r1["sentiment"], r1["sentiment_model"]) == ("negative", "sent@2")
    assert r1["sentiment_negative"] == pytest.approx(0.8)
    assert json.loads(r1["aspects"]) == [
        {"aspect": "delivery", "polarity": "negative", "score": 0.9},
        {"aspect": "support", "polarity": "negative", "score": 0.9},
    ]
    assert r1["aspects_model"] == "asp@2" and pd.isna(r2["aspects"])
    assert (r1["topic_id"], r1["topic_label"], r1["topic_model"]) == (4, "Late deliveries", "top@1")
    assert (r1["flagged"], r1["priority"], r1["flag_points"], r1["churn_intent"]) == (
        True,
        "P1",
        9,
        True,
    )
    assert json.loads(r1["flag_reasons"]) == ["negative 0.80", "churn intent"]
    assert pd.isna(r2["flagged"]) and r2["product"] == "Kettle K2"
    assert r1["customer_value"] == pytest.approx(120.5) and r1["nps"] == 3 and pd.isna(r2["nps"])

    content = target.read_bytes()
    assert b"AUTHOR" not in content and b"secret_column" not in content


def test_parquet_carries_the_schema_version_and_arrow_types(store: Store, tmp_path: Path) -> None:
    fill(store)
    target = tmp_path / "records.parquet"
    result = CliRunner().invoke(
        app, ["export", "--db", store.url, "--since", "2026-11-01", "-o", str(target)]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(target)
    assert table.schema.metadata[b"feedback_export_schema_version"] == b"1"
    assert str(table.schema.field("created_at").type) == "timestamp[us, tz=UTC]"
    assert str(table.schema.field("topic_id").type) == "int64"
    assert table.num_rows == 3
    assert {str(d) for d in pd.read_parquet(target).dtypes} <= set(EXPORT_DTYPES.values())


def test_export_date_and_format_errors(store: Store, tmp_path: Path) -> None:
    runner = CliRunner()
    bad_date = runner.invoke(
        app, ["export", "--db", store.url, "--since", "01/11/2026", "-o", str(tmp_path / "x.csv")]
    )
    assert bad_date.exit_code == 2
    assert "YYYY-MM-DD" in bad_date.output and "ISO 8601" in bad_date.output
    backwards = runner.invoke(
        app,
        [
            "export",
            "--db",
            store.url,
            "--since",
            "2026-11-05",
            "--until",
            "2026-11-01",
            "-o",
            str(tmp_path / "x.csv"),
        ],
    )
    assert (
        backwards.exit_code == 1
        and "E081" in backwards.output
        and "Traceback" not in backwards.output
    )
    unknown = runner.invoke(
        app, ["export", "--db", store.url, "--since", "2026-11-01", "-o", str(tmp_path / "x.txt")]
    )
    assert unknown.exit_code == 1 and "E080" in unknown.output and "--format" in unknown.output
    assert not list(tmp_path.glob("*x*"))


def test_schema_doc_lists_every_table_column_and_export_column() -> None:
    doc = (REPO / "docs" / "schema.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", doc, flags=re.MULTILINE))
    tables = set(re.findall(r"^### `([a-z_]+)`", doc, flags=re.MULTILINE))
    assert tables >= set(schema.metadata.tables) | {"export"}
    for table in schema.metadata.tables.values():
        assert {column.name for column in table.columns} <= documented, table.name
    assert set(EXPORT_DTYPES) <= documented
    assert f"version {EXPORT_SCHEMA_VERSION}" in doc
