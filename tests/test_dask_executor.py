"""The nightly flow on a Dask cluster (``executor: {kind: dask}``): same results as a local run
(one local run on DuckDB is the reference for both backends), and a worker killed mid-run loses
and duplicates nothing.

Real components: Prefect's engine with ``prefect_dask.DaskTaskRunner``, a ``distributed``
``LocalCluster`` of worker processes, the real encoder and stages, DuckDB and PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from flows.nightly import RunSummary, nightly
from pipelines._errors import ConfigError
from pipelines.config import DEFAULT_CONFIG_DIR
from pipelines.settings import load_settings
from pipelines.storage import Store, schema

# One demo source, 90 records in 3 chunks: every stage has work, alerts included.
SOURCES = ["social_posts"]
CHUNK_SIZE = 32


def _config(folder: Path, executor: dict[str, Any]) -> Path:
    """The embedded configuration, demo data, small chunks, this executor, own outbox."""
    shutil.copytree(DEFAULT_CONFIG_DIR, folder)
    sources = (DEFAULT_CONFIG_DIR / "sources.yaml").read_text(encoding="utf-8")
    (folder / "sources.yaml").write_text(
        sources.replace("data_dir: ../demo", f"data_dir: {DEFAULT_CONFIG_DIR.parent / 'demo'}"),
        encoding="utf-8",
    )
    settings = yaml.safe_load((DEFAULT_CONFIG_DIR / "pipeline.yaml").read_text(encoding="utf-8"))
    settings.update(
        analysis_chunk_size=CHUNK_SIZE,
        executor=executor,
        outbox_dir=str(folder / "outbox"),
        reports_dir=str(folder / "reports"),
    )
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    return folder


def _results(db: str) -> dict[str, Any]:
    """What the analysis stored, record by record (ids are content hashes: same across runs)."""
    with Store(db) as store, store.engine.connect() as connection:

        def rows(*columns: Any) -> list[tuple[Any, ...]]:
            return sorted(tuple(row) for row in connection.execute(select(*columns)).all())

        sentiment, aspects, flags = schema.sentiment, schema.aspects, schema.flags
        topics, alerts = schema.record_topics, schema.alerts
        return {
            "sentiment": [
                (r, label, round(n, 4), round(p, 4))
                for r, label, n, p in rows(
                    sentiment.c.record_id,
                    sentiment.c.label,
                    sentiment.c.negative,
                    sentiment.c.positive,
                )
            ],
            "aspects": [
                (r, a, pol, round(score, 3))
                for r, a, pol, score in rows(
                    aspects.c.record_id, aspects.c.aspect, aspects.c.polarity, aspects.c.score
                )
            ],
            "topics": rows(topics.c.record_id, topics.c.topic_id),
            "flags": rows(flags.c.record_id, flags.c.flagged, flags.c.priority, flags.c.points),
            "reasons": rows(flags.c.record_id, flags.c.reasons),
            "alerts": rows(alerts.c.record_id, alerts.c.route, alerts.c.kind, alerts.c.priority),
            "ledger": rows(schema.stage_results.c.record_id, schema.stage_results.c.stage),
            "records": sorted(
                tuple(row)
                for row in connection.execute(
                    select(schema.feedback.c.id).where(schema.feedback.c.duplicate_of.is_(None))
                )
            ),
        }


def _mailed_alert_ids(outbox: Path) -> Counter[str]:
    """How many times each alert id was mailed (P1 mails and digests)."""
    mailed: Counter[str] = Counter()
    for path in outbox.glob("*.eml"):
        mail = message_from_bytes(path.read_bytes(), policy=default_policy)
        mailed.update((mail["X-Feedback-Alert-Id"] or mail["X-Feedback-Alert-Ids"]).split())
    return mailed


def _alert_ids(db: str) -> set[str]:
    with Store(db) as store, store.engine.connect() as connection:
        return {row[0] for row in connection.execute(select(schema.alerts.c.alert_id))}


@pytest.fixture(autouse=True)
def _no_smtp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEEDBACK_SMTP_HOST", raising=False)
    monkeypatch.delenv("FEEDBACK_DB_URL", raising=False)


@dataclass(frozen=True)
class _LocalRun:
    """What a local run of the subset stored, mailed and summed up."""

    results: dict[str, Any]
    mailed: Counter[str]
    summary: RunSummary


@pytest.fixture(scope="module")
def local_run(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> _LocalRun:
    """The reference: the subset analysed in this process (DuckDB), once for the module."""
    folder = tmp_path_factory.mktemp("local")
    config = _config(folder / "config", {"kind": "local"})
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FEEDBACK_SMTP_HOST", raising=False)
        patch.delenv("FEEDBACK_DB_URL", raising=False)
        summary = nightly(config_dir=str(config), db=str(folder / "local.duckdb"), sources=SOURCES)
    results = _results(str(folder / "local.duckdb"))
    assert len(results["records"]) > 2 * CHUNK_SIZE  # several chunk tasks
    assert results["alerts"], "the subset must raise alerts"
    return _LocalRun(results, _mailed_alert_ids(config / "outbox"), summary)


# Columns of each stored row that are labels (exact); the rest are probabilities or scores.
_LABEL_COLUMNS = {"sentiment": 2, "aspects": 3}


def _assert_same_as_local(got: dict[str, Any], local: _LocalRun, tolerance: float = 0.0) -> None:
    """Stored results equal the local run's; probabilities and scores within ``tolerance``."""
    for kind, expected in local.results.items():
        labels = _LABEL_COLUMNS.get(kind)
        if labels is None or tolerance == 0.0:
            assert got[kind] == expected, kind
            continue
        assert [row[:labels] for row in got[kind]] == [row[:labels] for row in expected], kind
        for row, reference in zip(got[kind], expected, strict=True):
            gaps = [abs(a - b) for a, b in zip(row[labels:], reference[labels:], strict=True)]
            assert max(gaps) <= tolerance, (kind, row, reference)


# DuckDB: the workers of a temporary cluster write to the file the flow's process also opens.
# PostgreSQL, the database several machines share, is compared in the killed-worker test.
@pytest.mark.parametrize("db_url", ["duckdb"], indirect=True)
def test_two_dask_workers_store_what_a_local_run_stores(
    local_run: _LocalRun, tmp_path: Path, db_url: str
) -> None:
    dask_config = _config(tmp_path / "dask", {"kind": "dask", "n_workers": 2})

    distributed = nightly(config_dir=str(dask_config), db=db_url, sources=SOURCES)

    _assert_same_as_local(_results(db_url), local_run)
    local = local_run.summary
    assert distributed.stage_rows == local.stage_rows
    assert distributed.analysed == local.analysed == len(local_run.results["records"])
    # Each run fitted its own topic model (same data and seed): versions differ by fit time.
    fitted = {name: version for name, version in local.model_versions.items() if name != "topics"}
    assert {k: v for k, v in distributed.model_versions.items() if k != "topics"} == fitted
    assert _mailed_alert_ids(dask_config / "outbox") == local_run.mailed


def _kill_a_busy_worker(client: Any, db: str, killed: list[int], stop: threading.Event) -> None:
    """Once a chunk task has saved something, SIGKILL a worker that is running a chunk."""
    with Store(db) as store:
        while not stop.is_set():
            with store.engine.connect() as connection:
                saved = connection.execute(
                    select(func.count()).select_from(schema.stage_results)
                ).scalar()
            busy = [address for address, keys in client.processing().items() if keys]
            if saved and busy:
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.2)


# PostgreSQL only: the database several machines' workers share. A killed DuckDB writer is
# test_crash_recovery's; this test takes 50-80 s on 2 cores.
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(
    local_run: _LocalRun, tmp_path: Path, db_url: str
) -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        config = _config(tmp_path / "dask", {"kind": "dask", "address": cluster.scheduler_address})
        killed: list[int] = []
        stop = threading.Event()
        killer = threading.Thread(target=_kill_a_busy_worker, args=(client, db_url, killed, stop))
        killer.start()
        try:
            summary = nightly(config_dir=str(config), db=db_url, sources=SOURCES)
        finally:
            stop.set()
            killer.join()

    assert killed, "no worker was killed while it ran a chunk"
    got = _results(db_url)
    records = {row[0] for row in got["records"]}
    assert summary.analysed == len(records) > 2 * CHUNK_SIZE
    # Every stage saved every record exactly once (the ledger's key is record, stage, version).
    per_stage = Counter(stage for _, stage in got["ledger"])
    assert per_stage == {stage: len(records) for stage in summary.stage_rows}
    assert {row[0] for row in got["sentiment"]} == records and len(got["sentiment"]) == len(records)
    assert len(got["flags"]) == len(records) and {row[0] for row in got["topics"]} == records
    assert summary.stage_rows["sentiment"] == len(records)
    # Alerts: queued once per record and route, each mailed exactly once.
    mailed = _mailed_alert_ids(config / "outbox")
    assert got["alerts"] and set(mailed) == _alert_ids(db_url)
    assert set(mailed.values()) == {1}
    # The retried chunk saved what the local run saved, record by record. It encodes only the
    # records its worker left unsaved, in other batches: scores move in the third decimal.
    _assert_same_as_local(got, local_run, tolerance=0.002)
    assert mailed == local_run.mailed


def test_executor_settings_fail_closed(tmp_path: Path) -> None:
    base = yaml.safe_load((DEFAULT_CONFIG_DIR / "pipeline.yaml").read_text(encoding="utf-8"))
    assert load_settings(None).executor.kind == "local"
    for executor, fragment in (
        ({"kind": "spark"}, "executor.kind"),
        ({"kind": "dask", "address": "10.0.0.5:8786"}, "tcp://host:port"),
        ({"kind": "dask", "address": "tcp://10.0.0.5"}, "tcp://host:port"),
        ({"kind": "dask", "address": "tcp://10.0.0.5:99999"}, "tcp://host:port"),
        ({"kind": "dask", "n_workers": 0}, "n_workers"),
        ({"kind": "dask", "workers": 2}, "workers"),
        ({"kind": "local", "address": "tcp://10.0.0.5:8786"}, "kind: dask"),
    ):
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "pipeline.yaml").write_text(
            yaml.safe_dump({**base, "executor": executor}), encoding="utf-8"
        )
        with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
            load_settings(folder)
    folder = tmp_path / "good"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text(
        yaml.safe_dump({**base, "executor": {"kind": "dask", "address": "tcp://10.0.0.5:8786"}}),
        encoding="utf-8",
    )
    executor = load_settings(folder).executor
    assert (executor.kind, executor.address, executor.n_workers) == (
        "dask",
        "tcp://10.0.0.5:8786",
        2,
    )
