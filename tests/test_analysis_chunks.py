"""Analysis runs in chunks (memory bounded by the chunk size, not the run) and a crash in a later
chunk keeps the earlier chunks saved: the next run analyses only the rest. Real nightly flow,
Prefect engine, DuckDB and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
from sqlalchemy import Column, MetaData, String, Table, select

from flows.nightly import nightly
from pipelines import registry
from pipelines._errors import ConfigError
from pipelines.settings import load_settings
from pipelines.stages import Stage, StageContext
from pipelines.storage import Store, schema

_TABLES = MetaData()
seen = Table(
    "test_seen",
    _TABLES,
    Column("record_id", String(32), primary_key=True),
    Column("stage", String(20), primary_key=True),
)


class _Recording(Stage):
    """Records the size of every batch it runs on; saves one row per record."""

    sizes: ClassVar[list[int]]

    @classmethod
    def from_config(cls, config_dir: str | None = None) -> _Recording:
        return cls()

    @property
    def version(self) -> str:
        return f"{self.name}-1"

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        type(self).sizes.append(len(batch))
        return batch.assign(**{self.name: batch["text"].str.len()})

    def save(self, batch: pd.DataFrame, context: StageContext) -> int:
        _TABLES.create_all(context.store.engine)
        context.store.upsert(seen, [{"record_id": i, "stage": self.name} for i in batch["id"]])
        return len(batch)


class FirstStage(_Recording):
    name: ClassVar[str] = "first"
    sizes: ClassVar[list[int]] = []


class CrashingStage(_Recording):
    """Raises on its ``crash_on_call``-th batch (0: never)."""

    name: ClassVar[str] = "second"
    sizes: ClassVar[list[int]] = []
    crash_on_call: ClassVar[int] = 0

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        if len(type(self).sizes) + 1 == type(self).crash_on_call:
            type(self).crash_on_call = 0
            raise RuntimeError("injected crash in the third chunk")
        return super().run(batch, context)


@pytest.fixture(autouse=True)
def _stages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.STAGES, "first", f"{__name__}:FirstStage")
    monkeypatch.setitem(registry.STAGES, "second", f"{__name__}:CrashingStage")
    monkeypatch.setattr(FirstStage, "sizes", [])
    monkeypatch.setattr(CrashingStage, "sizes", [])
    monkeypatch.setattr(CrashingStage, "crash_on_call", 0)


def _workspace(tmp_path: Path, db_url: str, chunk_size: object) -> Path:
    config = tmp_path / "configs"
    config.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    lines = [
        f'{{"id": "P{i}", "at": "2026-11-{1 + i:02d}T12:00:00Z", "text": "post number {i}"}}'
        for i in range(10)
    ]
    (data / "posts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (config / "pipeline.yaml").write_text(
        f"database: {db_url}\ntimezone: UTC\nstages: [first, second]\n"
        f"analysis_chunk_size: {chunk_size}\n"
        f"reports_dir: {tmp_path / 'reports'}\noutbox_dir: {tmp_path / 'outbox'}\n",
        encoding="utf-8",
    )
    (config / "sources.yaml").write_text(
        f"data_dir: {data}\nsources:\n  - name: posts\n    kind: jsonl\n    channel: social\n"
        "    path: posts.jsonl\n    columns: {external_id: id, created_at: at, text: text}\n",
        encoding="utf-8",
    )
    return config


def _saved(db_url: str, stage: str) -> int:
    with Store(db_url) as store, store.engine.connect() as connection:
        ledger = schema.stage_results
        return len(connection.execute(select(ledger).where(ledger.c.stage == stage)).all())


def test_analysis_runs_in_chunks_and_resumes_after_a_crash(
    prefect_harness: None, db_url: str, tmp_path: Path
) -> None:
    config = _workspace(tmp_path, db_url, 3)
    CrashingStage.crash_on_call = 3

    state = nightly(config_dir=str(config), db=db_url, return_state=True)

    assert state.is_failed()
    assert FirstStage.sizes == [3, 3, 3]  # chunks of 3; the third chunk crashed in 'second'
    assert CrashingStage.sizes == [3, 3]
    assert (_saved(db_url, "first"), _saved(db_url, "second")) == (9, 6)

    summary = nightly(config_dir=str(config), db=db_url)

    # Only the 4 unfinished records (the crashed chunk and the last one), again in chunks of 3;
    # 'first' on the crashed chunk is a hit in Prefect's per-chunk cache, not recomputed.
    assert FirstStage.sizes == [3, 3, 3, 1]
    assert CrashingStage.sizes == [3, 3, 3, 1]
    assert summary.analysed == 4
    assert summary.stage_rows == {"first": 1, "second": 4}
    assert (_saved(db_url, "first"), _saved(db_url, "second")) == (10, 10)


@pytest.mark.parametrize("value", [0, -5, "many"])
def test_chunk_size_must_be_a_positive_number(tmp_path: Path, value: object) -> None:
    config = _workspace(tmp_path, str(tmp_path / "feedback.duckdb"), value)

    with pytest.raises(ConfigError, match="analysis_chunk_size"):
        load_settings(config)
