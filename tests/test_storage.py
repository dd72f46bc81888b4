"""Storage on DuckDB and on a real PostgreSQL: values the database refuses, concurrent schema
creation, ``feedback status``. Every test runs once per backend (the ``db_url`` fixture)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import pytest
from sqlalchemy import inspect, select, text
from typer.testing import CliRunner

from flows.cli import app
from pipelines.ingest import ingest_batch
from pipelines.ingest.sources import load_sources
from pipelines.storage import (
    Store,
    finish_run,
    flagged_results,
    record_aspects,
    record_sentiments,
    schema,
    start_run,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LONG = 300
TOO_MANY_FOLLOWERS = 3_000_000_000  # over a 32-bit INTEGER on both backends


def _jsonl_source(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    (tmp_path / "rows.jsonl").write_text(
        "\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8"
    )
    config = tmp_path / "sources.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            data_dir: .
            sources:
              - name: edge
                kind: jsonl
                channel: social
                path: rows.jsonl
                keep_in_clear: [author]  # public handles: stored as read, NUL removed
                columns: {external_id: id, created_at: ts, text: body, author: author,
                          product: product, store: store, author_followers: followers}
            """
        ),
        encoding="utf-8",
    )
    return config


def test_bad_values_are_cleaned_or_quarantined_and_never_stop_the_batch(
    db_url: str, tmp_path: Path
) -> None:
    rows: list[dict[str, object]] = [
        {"id": f"ok{i}", "ts": f"2026-11-01T10:{i:02d}:00Z", "body": f"fine number {i}"}
        for i in range(40)
    ]
    rows += [
        {
            "id": "nul",
            "ts": "2026-11-01T11:00:00Z",
            "body": "nul \u0000 in text",
            "author": "b\u0000b",
        },
        {"id": "surrogate", "ts": "2026-11-01T11:01:00Z", "body": "lone \ud800 half", "store": "s"},
        {
            "id": "long",
            "ts": "2026-11-01T11:02:00Z",
            "body": "long fields",
            "author": "a" * LONG,
            "product": "p" * LONG,
            "store": "s" * LONG,
        },
        {
            "id": "huge",
            "ts": "2026-11-01T11:03:00Z",
            "body": "too many followers",
            "author": "celebrity",
            "followers": TOO_MANY_FOLLOWERS,
        },
    ]
    (source,) = load_sources(_jsonl_source(tmp_path, rows))
    with Store(db_url) as store:
        counts = ingest_batch(source.read(None), store, "run-1")
        assert (counts.read, counts.stored, counts.duplicates, counts.quarantined) == (44, 43, 0, 1)
        feedback = schema.feedback
        with store.engine.connect() as connection:
            stored = {
                row.external_id: row
                for row in connection.execute(select(feedback)).all()
                if row.external_id in {"nul", "surrogate", "long"}
            }
            (refused,) = connection.execute(select(schema.quarantine)).all()
    assert stored["nul"].author == "bb" and "\x00" not in stored["nul"].text
    assert "\ud800" not in stored["surrogate"].text
    assert (len(stored["long"].author), len(stored["long"].product)) == (LONG, LONG)
    assert len(stored["long"].store) == LONG
    assert refused.reason == "db_refused" and refused.source == "edge"
    assert json.loads(refused.raw)["id"] == "huge"
    assert str(TOO_MANY_FOLLOWERS) not in refused.detail and "celebrity" not in refused.detail
    assert refused.detail


def test_status_lists_failed_and_completed_runs(db_url: str) -> None:
    with Store(db_url) as store:
        start_run(store, "run-failed", "nightly", {})
        finish_run(store, "run-failed", "failed", {}, None, "boom")
        start_run(store, "run-ok", "nightly", {})
        finish_run(store, "run-ok", "completed", {"sources": [{"read": 3, "stored": 3}]})
    result = CliRunner().invoke(app, ["status", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "completed" in result.output and "failed" in result.output and "boom" in result.output


_OPEN_WHEN_TOLD = """
import sys, time
from pipelines._errors import StoreError
from pipelines.storage import Store
print("ready", flush=True)
sys.stdin.read()
while True:
    try:
        Store(sys.argv[1]).close()
        break
    except StoreError as exc:
        # DuckDB: one process holds the file at a time; waiting for it is the serialisation.
        if "Could not set lock" not in str(exc):
            raise
        time.sleep(0.05)
"""


def test_processes_creating_the_schema_at_once_all_succeed(db_url: str) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_WHEN_TOLD, db_url],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
    for process in processes:  # all imported: go at once
        assert process.stdin is not None
        process.stdin.close()
    codes = [process.wait(timeout=120) for process in processes]
    assert codes == [0] * 3, [process.stderr.read() for process in processes if process.stderr]
    with Store(db_url) as store:
        assert set(inspect(store.engine).get_table_names()) >= set(schema.metadata.tables)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_older_schema_with_bounded_free_text_is_widened(db_url: str) -> None:
    with Store(db_url) as store, store.begin() as connection:
        connection.execute(text("ALTER TABLE feedback ALTER COLUMN author TYPE VARCHAR(200)"))
    with Store(db_url) as store:
        columns = {
            column["name"]: column["type"]
            for column in inspect(store.engine).get_columns("feedback")
        }
    assert getattr(columns["author"], "length", None) is None
    assert columns["id"].length == 32


def test_report_queries_take_more_record_ids_than_one_statement_can_bind(store: Store) -> None:
    # PostgreSQL binds at most 65,535 parameters per statement; 28 days of a busy shop name more
    # records than that. Stored rows come back whatever their position in the id list.
    now = datetime.now(UTC)
    row = {"record_id": "r-last", "model_version": "m1", "label": "negative", "run_id": "run"}
    store.upsert(
        schema.sentiment,
        [{**row, "negative": 0.9, "neutral": 0.05, "positive": 0.05, "created_at": now}],
    )
    ids = [f"r-{index}" for index in range(70_000)] + ["r-last"]

    found = record_sentiments(store, ids)

    assert found["record_id"].tolist() == ["r-last"]
    assert record_aspects(store, ids).empty and flagged_results(store, ids).empty
    assert record_sentiments(store, []).empty


def test_saving_vectors_chunk_by_chunk_does_not_hold_the_table_in_memory(tmp_path: Path) -> None:
    """DuckDB's checkpoint on close merged a wide table's row groups in memory (issue 11).

    With vacuum on, the 16th close of 5,000 vectors each took +380 MB, and the rise grows with
    the table (+1.2 GB at 320,000 vectors, benchmarks/duckdb_checkpoint_memory.py).
    """
    sampler_state = {"peak": 0, "running": True}
    process = psutil.Process()

    def sample() -> None:
        while sampler_state["running"]:
            sampler_state["peak"] = max(sampler_state["peak"], process.memory_info().rss)
            time.sleep(0.005)

    store = Store(f"duckdb:///{tmp_path / 'vectors.duckdb'}")
    generator = np.random.default_rng(0)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rises = []
    try:
        for chunk in range(16):
            rows = [
                {
                    "model_version": "e5-small",
                    "text_hash": hashlib.md5(f"{chunk}-{index}".encode()).hexdigest(),
                    "vector": generator.standard_normal(384).astype("<f4").tobytes(),
                }
                for index in range(5000)
            ]
            sampler_state["peak"] = before = process.memory_info().rss
            assert store.insert_ignore(schema.embeddings, rows) == len(rows)
            rises.append(sampler_state["peak"] - before)
    finally:
        sampler_state["running"] = False
        sampler.join()
        store.close()
    assert max(rises) < 200 * 2**20, [rise >> 20 for rise in rises]
