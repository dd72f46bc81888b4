"""``--format table|json|csv`` of the listing commands, parsed from the real CLI's stdout."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.delivery.alerts import enqueue_alerts
from pipelines.delivery.routing import load_routing
from pipelines.storage import Store, finish_run, register_model, schema, start_run
from tests.test_alerts import ROUTING, T0, flagged

LONG_MESSAGE = "[E011] 1 source(s) failed: shop_api: " + "connection refused " * 12 + "END"


@pytest.fixture
def filled(store: Store, tmp_path: Path) -> str:
    """A database with two runs (one failed with a long message), quarantine rows and alerts."""
    start_run(store, "run-ok", "nightly", {})
    finish_run(
        store,
        "run-ok",
        "completed",
        {
            "sources": [
                {"source": "a", "read": 5, "stored": 3, "duplicates": 1, "quarantined": 1},
                {"source": "b", "read": 2, "stored": 2, "duplicates": 0, "quarantined": 0},
            ],
            "analysed": 5,
        },
        {"sentiment": "sentiment-e5@1"},
    )
    start_run(store, "run-failed", "rerun", {})
    finish_run(store, "run-failed", "failed", {}, None, LONG_MESSAGE)
    store.upsert(
        schema.quarantine,
        [
            {
                "id": f"q{i}",
                "source": "a",
                "run_id": "run-ok",
                "reason": "bad_csv_row",
                "detail": "missing text",
                "raw": "{}",
                "created_at": datetime(2025, 3, 1, tzinfo=UTC) + timedelta(minutes=i),
            }
            for i in range(2)
        ],
    )
    folder = tmp_path / "routing"
    folder.mkdir()
    (folder / "routing.yaml").write_text(ROUTING, encoding="utf-8")
    batch = pd.DataFrame([flagged("c1", "P1"), flagged("c2", "P2")])
    enqueue_alerts(batch, store, load_routing(folder), now=T0)
    return store.url.removeprefix("duckdb:///")


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_runs_json_and_csv_carry_every_run_with_summed_counts(filled: str) -> None:
    runs = json.loads(_cli("runs", "--db", filled, "--format", "json"))
    by_id = {run["run_id"]: run for run in runs}
    assert set(by_id) == {"run-ok", "run-failed"}
    ok = by_id["run-ok"]
    assert (ok["read"], ok["stored"], ok["duplicates"], ok["quarantined"]) == (7, 5, 1, 1)
    assert ok["analysed"] == 5 and ok["model_versions"] == {"sentiment": "sentiment-e5@1"}
    assert datetime.fromisoformat(ok["started_at"]) <= datetime.fromisoformat(ok["finished_at"])
    assert by_id["run-failed"]["message"] == LONG_MESSAGE

    rows = list(csv.DictReader(io.StringIO(_cli("runs", "--db", filled, "--format", "csv"))))
    assert {row["run_id"]: row["stored"] for row in rows} == {"run-ok": "5", "run-failed": "0"}
    assert json.loads(rows[[r["run_id"] for r in rows].index("run-ok")]["model_versions"]) == {
        "sentiment": "sentiment-e5@1"
    }


def test_status_json_has_every_section_and_csv_the_runs(filled: str) -> None:
    document = json.loads(_cli("status", "--db", filled, "--format", "json"))
    assert set(document) == {
        "runs",
        "stages",
        "quarantine",
        "deliveries",
        "records_stored",
        "copy_paste_duplicates_kept",
        "warnings",
    }
    assert document["quarantine"] == [{"source": "a", "reason": "bad_csv_row", "rows": 2}]
    assert len(document["deliveries"]) == 2 and document["records_stored"] == 0
    assert {run["status"] for run in document["runs"]} == {"completed", "failed"}

    rows = list(csv.DictReader(io.StringIO(_cli("status", "--db", filled, "--format", "csv"))))
    assert sorted(row["status"] for row in rows) == ["completed", "failed"]


def test_alerts_list_json_and_csv(filled: str) -> None:
    alerts = json.loads(_cli("alerts", "list", "--db", filled, "--format", "json"))
    assert sorted(a["priority"] for a in alerts) == ["P1", "P2"]
    assert all(a["recipients"] == ["lead@example.com"] for a in alerts)
    assert all(datetime.fromisoformat(a["respond_by"]) > T0 for a in alerts)
    only_p1 = _cli("alerts", "list", "--db", filled, "--priority", "P1", "--format", "CSV")
    (row,) = csv.DictReader(io.StringIO(only_p1))
    assert row["priority"] == "P1" and json.loads(row["recipients"]) == ["lead@example.com"]


def test_topics_without_a_model_is_an_empty_json_list(filled: str) -> None:
    assert json.loads(_cli("topics", "--db", filled, "--format", "json")) == []
    assert _cli("topics", "--db", filled, "--format", "csv").splitlines() == [
        "id,label,size,net_sentiment,languages,examples"
    ]


def test_piped_table_is_plain_and_never_truncated(filled: str) -> None:
    out = _cli("status", "--db", filled)
    assert LONG_MESSAGE in out  # whole, on one line, whatever the terminal width
    assert "┃" not in out and "│" not in out and "…" not in out
    assert "Records stored: 0" in out
    assert "Alert deliveries not accepted yet (2 queued, 0 retrying, 0 failed)" in out


def test_an_unknown_format_is_a_usage_error(filled: str) -> None:
    result = CliRunner().invoke(app, ["runs", "--db", filled, "--format", "xml"])
    assert result.exit_code == 2 and "xml" in result.output


def test_models_list_json_and_csv(store: Store) -> None:
    for version, gate in (("v-bad", ["tr dev macro-F1 drops 0.050"]), ("v-ok", [])):
        register_model(
            store,
            version=version,
            kind="sentiment",
            head_metadata={},
            weights=b"",
            metrics={"gate": {"passed": not gate, "reasons": gate}},
            parent_version=None,
        )
    models = json.loads(_cli("models", "list", "--db", store.url, "--format", "json"))
    assert {m["version"]: m["gate"] for m in models} == {"v-bad": "failed", "v-ok": "passed"}
    assert all(datetime.fromisoformat(m["created_at"]) for m in models)
    rows = list(
        csv.DictReader(io.StringIO(_cli("models", "list", "--db", store.url, "--format", "csv")))
    )
    assert sorted(row["version"] for row in rows) == ["v-bad", "v-ok"]
