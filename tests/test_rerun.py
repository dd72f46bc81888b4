"""The rerun/backfill flow, run locks, and what makes runs idempotent: ranges, versions, caching,
crashes and concurrency, through Prefect's real engine on small CSV/JSONL sources."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from sqlalchemy import Column, Float, MetaData, String, Table, select
from typer.testing import CliRunner

from flows._tasks import open_store
from flows.cli import app
from flows.nightly import nightly
from flows.rerun import rerun, to_utc
from pipelines import registry
from pipelines._errors import StoreError
from pipelines.ingest import in_range
from pipelines.ingest.sources import Rejected, SourceBatch
from pipelines.records import Channel, FeedbackRecord
from pipelines.settings import load_settings
from pipelines.stages import Stage, StageContext
from pipelines.storage import RunLock, Store, resolve_db_url, schema

_TEST_TABLES = MetaData()
scores = Table(
    "test_scores",
    _TEST_TABLES,
    Column("record_id", String(32), primary_key=True),
    Column("model_version", String(50), primary_key=True),
    Column("score", Float, nullable=False),
    Column("run_id", String(36), nullable=False),
)
checks = Table(
    "test_checks",
    _TEST_TABLES,
    Column("record_id", String(32), primary_key=True),
    Column("score", Float, nullable=False),
)


class ScoreStage(Stage):
    """A deterministic 'model': text length modulo 7; its version is set by the test."""

    name: ClassVar[str] = "score"
    model_version: ClassVar[str] = "score-1"
    calls: ClassVar[list[int]] = []

    @classmethod
    def from_config(cls, config_dir: str | None = None) -> ScoreStage:
        return cls()

    @property
    def version(self) -> str:
        return type(self).model_version

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        type(self).calls.append(len(batch))
        return batch.assign(score=batch["text"].str.len() % 7)

    def save(self, batch: pd.DataFrame, context: StageContext) -> int:
        _TEST_TABLES.create_all(context.store.engine)
        context.store.upsert(
            scores,
            [
                {
                    "record_id": row["id"],
                    "model_version": self.version,
                    "score": float(row["score"]),
                    "run_id": context.run_id,
                }
                for row in batch.to_dict(orient="records")
            ],
        )
        return len(batch)


class CrashOnceStage(Stage):
    """Copies the score stage's column; raises while ``crashes_left`` is positive."""

    name: ClassVar[str] = "crash_once"
    crashes_left: ClassVar[int] = 0

    @classmethod
    def from_config(cls, config_dir: str | None = None) -> CrashOnceStage:
        return cls()

    @property
    def version(self) -> str:
        return "crash-1"

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        if type(self).crashes_left > 0:
            type(self).crashes_left -= 1
            raise RuntimeError("injected crash in the middle of the run")
        return batch

    def save(self, batch: pd.DataFrame, context: StageContext) -> int:
        _TEST_TABLES.create_all(context.store.engine)
        rows = [
            {"record_id": r["id"], "score": float(r["score"])} for r in batch.to_dict("records")
        ]
        context.store.upsert(checks, rows)
        return len(rows)


@pytest.fixture(autouse=True)
def test_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test stages and reset their class state."""
    monkeypatch.setitem(registry.STAGES, "score", f"{__name__}:ScoreStage")
    monkeypatch.setitem(registry.STAGES, "crash_once", f"{__name__}:CrashOnceStage")
    monkeypatch.setattr(ScoreStage, "model_version", "score-1")
    monkeypatch.setattr(ScoreStage, "calls", [])
    monkeypatch.setattr(CrashOnceStage, "crashes_left", 0)


DAYS = [date(2026, 11, day) for day in range(1, 11)]  # two reviews + one post per day


def _review_rows(days: list[date], offset: int = 0) -> list[str]:
    rows = []
    for index, day in enumerate(days):
        for slot in range(2):
            number = offset + index * 2 + slot
            rows.append(
                f"R{number:03d},{day.isoformat()}T{9 + slot * 6:02d}:30:00+00:00,"
                f"{1 + number % 5},Review number {number} about delivery {'x' * (number % 9)}"
            )
    return rows


def _write_sources(folder: Path) -> None:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    header = "review_id,created_at,stars,body"
    broken = 'R999,not-a-date,3,"this row has a date nobody can read"'
    (data / "reviews.csv").write_text(
        "\n".join([header, *_review_rows(DAYS), broken]) + "\n", encoding="utf-8"
    )
    posts = [
        f'{{"id": "P{index}", "at": "{day.isoformat()}T12:00:00Z", '
        f'"text": "Post {index}: پیک دیر رسید و کسی جواب نداد {index}"}}'
        for index, day in enumerate(DAYS)
    ]
    (data / "posts.jsonl").write_text("\n".join(posts) + "\n", encoding="utf-8")


@pytest.fixture
def workspace(tmp_path: Path, db_url: str) -> Path:
    """A config folder with two small sources (CSV reviews, JSONL posts) and no stages, on each
    database backend."""
    config = tmp_path / "configs"
    config.mkdir()
    _write_sources(tmp_path)
    (config / "pipeline.yaml").write_text(
        f"database: {db_url}\n"
        "timezone: UTC\n"
        "stages: [score]\n"
        f"reports_dir: {tmp_path / 'reports'}\n"
        f"outbox_dir: {tmp_path / 'outbox'}\n",
        encoding="utf-8",
    )
    (config / "sources.yaml").write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "sources:\n"
        "  - name: reviews\n"
        "    kind: csv\n"
        "    channel: review\n"
        "    path: reviews.csv\n"
        "    columns: {external_id: review_id, created_at: created_at, rating: stars, "
        "text: body}\n"
        "  - name: posts\n"
        "    kind: jsonl\n"
        "    channel: social\n"
        "    path: posts.jsonl\n"
        "    columns: {external_id: id, created_at: at, text: text}\n",
        encoding="utf-8",
    )
    return config


def _db(config: Path) -> str:
    """The workspace's database (path or URL)."""
    return load_settings(config).database


def _rows(config: Path, query: Any, db: Path | None = None) -> list[tuple[Any, ...]]:
    """Sorted rows of ``query`` on the workspace database (or ``db``)."""
    with Store(db or _db(config)) as store, store.engine.connect() as connection:
        return sorted(tuple(row) for row in connection.execute(query))


def _stored_ids_between(config: Path, start: datetime, end: datetime) -> set[str]:
    table = schema.feedback
    query = select(table.c.id).where(table.c.created_at >= start, table.c.created_at < end)
    return {row[0] for row in _rows(config, query)}


def _task_states(run_id: str) -> dict[str, str]:
    """Task run name -> state name, as recorded by the Prefect API (waits for the recorder)."""
    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)]))
    deadline = time.monotonic() + 20
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=flow_filter, sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200
            )
            states = {run.name: run.state.name for run in runs if run.state is not None}
            settled = states and all(name not in ("Pending", "Running") for name in states.values())
            if settled or time.monotonic() > deadline:
                return states
            time.sleep(0.2)


def test_backfill_reprocesses_exactly_the_range(prefect_harness: None, workspace: Path) -> None:
    first = nightly(config_dir=str(workspace), stages=[])
    assert sum(c.stored for c in first.sources) == 30
    with Store(_db(workspace)) as store:
        watermark = store.get_watermark("reviews")
    # A late delivery: rows created on 4 and 8 November arrive after the watermark passed them.
    late = _review_rows([date(2026, 11, 4), date(2026, 11, 8)], offset=500)
    with (workspace.parent / "data" / "reviews.csv").open("a", encoding="utf-8") as handle:
        handle.write("\n".join(late) + "\n")

    summary = rerun(
        since=datetime(2026, 11, 3), until=datetime(2026, 11, 6), config_dir=str(workspace)
    )

    start, end = datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 6, tzinfo=UTC)
    in_range_ids = _stored_ids_between(workspace, start, end)
    assert len(in_range_ids) == 3 * 3 + 2  # three days of 2 reviews + 1 post, and 2 late rows
    reviews = next(c for c in summary.sources if c.source == "reviews")
    # the bad row was quarantined by the nightly run: counted once, here as skipped
    assert (reviews.stored, reviews.duplicates, reviews.quarantined) == (2, 6, 0)
    assert reviews.skip_reasons.get("already_quarantined") == 1
    assert (
        reviews.read == reviews.stored + reviews.duplicates + reviews.quarantined + reviews.skipped
    )
    assert summary.analysed == len(in_range_ids) and ScoreStage.calls == [len(in_range_ids)]
    scored = {row[0] for row in _rows(workspace, select(scores.c.record_id))}
    assert scored == in_range_ids
    all_ids = {row[0] for row in _rows(workspace, select(schema.feedback.c.id))}
    assert len(all_ids) == 32  # the late row of 8 November is outside the range: not stored
    with Store(_db(workspace)) as store:
        assert store.get_watermark("reviews") == watermark


def test_reanalyze_stores_the_new_model_version_beside_the_old(
    prefect_harness: None, workspace: Path
) -> None:
    nightly(config_dir=str(workspace))
    assert len(_rows(workspace, select(scores))) == 30
    ScoreStage.model_version = "score-2"
    since, until = datetime(2026, 11, 1), datetime(2026, 11, 3)

    gap_fill = rerun(since=since, until=until, config_dir=str(workspace), read_sources=False)
    assert gap_fill.stage_rows == {"score": 0} and gap_fill.analysed == 0

    summary = rerun(since=since, until=until, config_dir=str(workspace), reanalyze=True)
    assert summary.stage_rows == {"score": 6} and summary.model_versions == {"score": "score-2"}
    versions = pd.DataFrame(
        _rows(workspace, select(scores.c.model_version, scores.c.record_id)),
        columns=["version", "record_id"],
    )
    assert versions["version"].value_counts().to_dict() == {"score-1": 30, "score-2": 6}
    both = versions.groupby("record_id").size()
    assert (both == 2).sum() == 6
    ledger = _rows(workspace, select(schema.stage_results.c.version))
    assert sorted({row[0] for row in ledger}) == ["score-1", "score-2"]


def test_second_identical_run_is_cached(prefect_harness: None, workspace: Path) -> None:
    nightly(config_dir=str(workspace), stages=[])
    since = datetime(2026, 11, 2)
    first = rerun(since=since, config_dir=str(workspace), reanalyze=True)
    rows_after_first = _rows(workspace, select(scores))
    second = rerun(since=since, config_dir=str(workspace), reanalyze=True)

    assert first.cached_stages == [] and second.cached_stages == ["score"]
    assert ScoreStage.calls == [27]  # computed once; the second run's task was a cache hit
    first_states = _task_states(first.run_id)
    second_states = _task_states(second.run_id)
    assert first_states["run-score"] == "Completed"
    assert second_states["run-score"] == "Cached"
    assert second_states["save-score"] == "Completed"
    assert _rows(workspace, select(scores.c.record_id, scores.c.score)) == [
        row[:3:2] for row in rows_after_first
    ]


def test_crashed_run_is_completed_by_rerunning(prefect_harness: None, workspace: Path) -> None:
    CrashOnceStage.crashes_left = 1
    state = nightly(config_dir=str(workspace), stages=["score", "crash_once"], return_state=True)

    assert state.is_failed()
    with pytest.raises(RuntimeError, match="injected crash"):
        state.result()
    runs = _rows(workspace, select(schema.runs.c.status, schema.runs.c.message))
    assert runs[0][0] == "failed" and "injected crash" in runs[0][1]
    assert len(_rows(workspace, select(scores))) == 30  # the first stage had finished
    assert _rows(workspace, select(checks)) == []

    summary = rerun(
        since=datetime(2026, 11, 1), config_dir=str(workspace), stages=["score", "crash_once"]
    )

    assert summary.stage_rows == {"score": 0, "crash_once": 30}
    assert summary.cached_stages == ["score"]  # not recomputed: the crashed run's result
    assert ScoreStage.calls == [30]
    stored = _rows(workspace, select(schema.feedback.c.id))
    score_rows = _rows(workspace, select(scores.c.record_id, scores.c.score))
    assert len(stored) == len(score_rows) == len(_rows(workspace, select(checks))) == 30
    assert _rows(workspace, select(checks)) == score_rows
    for counts in summary.sources:
        assert (
            counts.read == counts.stored + counts.duplicates + counts.quarantined + counts.skipped
        )
        assert counts.stored == 0
    statuses = [row[0] for row in _rows(workspace, select(schema.runs.c.status))]
    assert sorted(statuses) == ["completed", "failed"]


def _final_rows(config: Path, db: Path | None = None) -> dict[str, list[tuple[Any, ...]]]:
    feedback = schema.feedback
    ledger = schema.stage_results
    quarantine = schema.quarantine
    queries = {
        "feedback": select(
            feedback.c.id, feedback.c.text, feedback.c.created_at, feedback.c.duplicate_of
        ),
        "scores": select(scores.c.record_id, scores.c.model_version, scores.c.score),
        "ledger": select(ledger.c.record_id, ledger.c.stage, ledger.c.version),
        "quarantine": select(quarantine.c.id, quarantine.c.reason),
        "locks": select(schema.run_locks),
    }
    return {name: _rows(config, query, db) for name, query in queries.items()}


def test_concurrent_nightly_and_rerun_match_sequential_runs(
    prefect_harness: None, workspace: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    since = datetime(2026, 11, 4)
    sequential_db = tmp_path / "sequential.duckdb"
    nightly(config_dir=str(workspace), db=str(sequential_db))
    rerun(since=since, config_dir=str(workspace), db=str(sequential_db))
    ScoreStage.calls.clear()
    # Hold the lock until both flows wait for it, so that they really meet there.
    blocker = RunLock(open_store(resolve_db_url(_db(workspace))), "t", "test")
    blocker.acquire()
    results: dict[str, Any] = {}

    def run(name: str, call: Any) -> None:
        try:
            results[name] = call()
        except Exception as exc:  # reported by the assertion below
            results[name] = exc

    threads = [
        threading.Thread(target=run, args=("nightly", lambda: nightly(config_dir=str(workspace)))),
        threading.Thread(
            target=run, args=("rerun", lambda: rerun(since=since, config_dir=str(workspace)))
        ),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while caplog.text.count("to release the pipeline lock") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    blocker.release()
    for thread in threads:
        thread.join(timeout=120)

    assert not any(isinstance(value, Exception) for value in results.values()), results
    got = _final_rows(workspace)
    assert got == _final_rows(workspace, sequential_db)
    assert len(got["feedback"]) == 30 and len(got["scores"]) == 30 and got["locks"] == []
    saved = results["nightly"].stage_rows["score"] + results["rerun"].stage_rows["score"]
    assert saved == 30  # each record was analysed and saved by exactly one of the two runs
    assert sum(ScoreStage.calls) == 30
    assert caplog.text.count("to release the pipeline lock") >= 2  # both met at the lock


def test_run_lock_excludes_other_runs_until_released_or_expired(store: Store) -> None:
    holder = RunLock(store, "run-a", "nightly")
    other = RunLock(store, "run-b", "rerun")
    holder.acquire()
    assert not other.try_acquire()
    with pytest.raises(StoreError, match=r"E022.*run-a \(nightly\)"):
        other.acquire(wait=timedelta(seconds=0.2))
    holder.release()
    assert other.try_acquire()

    expired = RunLock(store, "run-c", "watch", lease=timedelta(seconds=-1))
    blocked = RunLock(store, "run-d", "nightly")
    other.release()
    assert expired.try_acquire()
    assert blocked.try_acquire()  # the lease of run-c had ended
    with pytest.raises(StoreError, match="lost the 'pipeline' run lock"):
        expired.renew()


def test_range_helpers_read_naive_times_in_the_configured_zone() -> None:
    assert to_utc(datetime(2026, 11, 1), "Europe/Istanbul") == datetime(
        2026, 10, 31, 21, tzinfo=UTC
    )
    assert to_utc(date(2026, 11, 1), "UTC") == datetime(2026, 11, 1, tzinfo=UTC)

    def record(day: int) -> FeedbackRecord:
        return FeedbackRecord(
            id=f"{day:032d}",
            source="s",
            channel=Channel.REVIEW,
            created_at=datetime(2026, 11, day, tzinfo=UTC),
            text="ok",
        )

    batch = SourceBatch(
        source="s",
        records=[record(1), record(2), record(3)],
        rejected=[Rejected("raw", "bad_date", "x")],
        rows_read=4,
        watermark="2026-11-03T00:00:00+00:00",
    )
    kept = in_range(batch, datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))
    assert [r.created_at.day for r in kept.records] == [2]
    assert (kept.rows_read, kept.skipped, kept.watermark) == (2, {"out_of_range": 2}, None)


def test_cli_rerun_runs_the_flow(prefect_harness: None, workspace: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["rerun", "--since", "2026-11-09", "--config", str(workspace), "--stage", "score"],
    )
    assert result.exit_code == 0, result.output
    assert "reviews" in result.output and "Stage score (score-1): 6 rows saved" in result.output
