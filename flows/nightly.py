"""The nightly flow: read every source concurrently, store what is new, run the analysis stages."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from sqlalchemy import select

from pipelines import _schema
from pipelines._errors import FeedbackError
from pipelines.config import config_path
from pipelines.ingest import SourceCounts, ingest_batch
from pipelines.registry import build_stages
from pipelines.runs import finish_run, start_run
from pipelines.settings import load_settings
from pipelines.sources import Source, SourceBatch, load_sources
from pipelines.stages import StageContext
from pipelines.store import Store, resolve_db_url

__all__ = ["RunSummary", "nightly"]

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@dataclass
class RunSummary:
    """What a run did, returned by the flow and printed by the CLI."""

    run_id: str
    sources: list[SourceCounts] = field(default_factory=list)
    failed_sources: dict[str, str] = field(default_factory=dict)
    stage_rows: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        """JSON-ready counts for the ``runs`` table."""
        return {
            "sources": [counts.as_dict() for counts in self.sources],
            "failed_sources": self.failed_sources,
            "stages": self.stage_rows,
            "languages": self.languages,
            "channels": self.channels,
        }


@cache
def open_store(db_url: str) -> Store:
    """One Store per database URL and process (DuckDB allows a single writer per process)."""
    return Store(db_url)


@task(name="read-source", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def read_source(source: Source, since: str | None) -> SourceBatch:
    """Read one source from its watermark (or from ``since``)."""
    return source.read(since)


@task(name="store-batch", cache_policy=NO_CACHE)
def store_batch(batch: SourceBatch, db_url: str, run_id: str) -> SourceCounts:
    """Normalize, dedupe, language-tag and store one source's batch."""
    counts = ingest_batch(batch, open_store(db_url), run_id)
    get_run_logger().info(
        "%s: read %d, stored %d, duplicates %d, quarantined %d",
        counts.source,
        counts.read,
        counts.stored,
        counts.duplicates,
        counts.quarantined,
    )
    return counts


def load_run_records(store: Store, run_id: str) -> pd.DataFrame:
    """The records this run stored (copy-paste duplicates excluded), ready for analysis."""
    table = _schema.feedback
    query = select(table).where(table.c.run_id == run_id, table.c.duplicate_of.is_(None))
    with store.engine.connect() as connection:
        return pd.DataFrame(connection.execute(query).mappings().all())


def _summary_markdown(summary: RunSummary) -> str:
    lines = [
        f"# Nightly run `{summary.run_id}`",
        "",
        "| source | read | stored | duplicates | quarantined |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c.source} | {c.read} | {c.stored} | {c.duplicates} | {c.quarantined} |"
        for c in summary.sources
    ]
    lines += [
        f"| {name} | failed: {error} | | | |" for name, error in summary.failed_sources.items()
    ]
    for title, values in (("channel", summary.channels), ("language", summary.languages)):
        lines += ["", f"| {title} | new records |", "|---|---:|"]
        lines += [f"| {key} | {value} |" for key, value in sorted(values.items())]
    if summary.stage_rows:
        lines += ["", "| stage | version | rows |", "|---|---|---:|"]
        lines += [
            f"| {name} | {summary.model_versions.get(name, '')} | {rows} |"
            for name, rows in summary.stage_rows.items()
        ]
    return "\n".join(lines)


@flow(name="nightly", log_prints=True)
def nightly(
    config_dir: str | None = None,
    db: str | None = None,
    sources: list[str] | None = None,
    since: datetime | None = None,
    stages: list[str] | None = None,
) -> RunSummary:
    """Nightly ingestion and analysis of all configured sources.

    Args:
        config_dir: Folder with the YAML configuration; the embedded defaults when None.
        db: Database path or SQLAlchemy URL; overrides ``pipeline.yaml`` and ``$FEEDBACK_DB_URL``.
        sources: Only these source names (default: every enabled source).
        since: Read rows created after this instant instead of each source's watermark.
        stages: Analysis stages to run (default: ``stages`` in ``pipeline.yaml``).

    Returns:
        The run summary (also stored in ``runs`` and published as a markdown artifact).
    """
    settings = load_settings(config_dir)
    db_url = resolve_db_url(db or os.environ.get("FEEDBACK_DB_URL") or settings.database)
    store = open_store(db_url)
    run_id = str(flow_run.get_id() or uuid.uuid4())
    parameters = {
        "sources": sources,
        "since": since.isoformat() if since else None,
        "stages": stages,
    }
    start_run(store, run_id, "nightly", parameters)
    summary = RunSummary(run_id=run_id)
    try:
        selected = [
            source
            for source in load_sources(config_path("sources.yaml", config_dir))
            if sources is None or source.name in sources
        ]
        futures = {
            source.name: read_source.submit(
                source, since.isoformat() if since else store.get_watermark(source.name)
            )
            for source in selected
        }
        for name, future in futures.items():
            try:
                batch = future.result()
            except FeedbackError as exc:
                summary.failed_sources[name] = str(exc)
                continue
            summary.sources.append(store_batch(batch, db_url, run_id))

        records = load_run_records(store, run_id)
        if not records.empty:
            summary.channels = records["channel"].value_counts().to_dict()
            summary.languages = records["lang"].value_counts().to_dict()
        context = StageContext(store=store, run_id=run_id)
        for stage in build_stages(stages if stages is not None else settings.stages, config_dir):
            records = stage.run(records, context) if not records.empty else records
            summary.stage_rows[stage.name] = (
                stage.save(records, context) if not records.empty else 0
            )
            summary.model_versions[stage.name] = stage.version
        create_markdown_artifact(
            _summary_markdown(summary), key="nightly-summary", description="Counts of this run"
        )
        if summary.failed_sources:
            raise FeedbackError(
                f"{len(summary.failed_sources)} source(s) failed: "
                + "; ".join(f"{n}: {e}" for n, e in summary.failed_sources.items())
                + ". The other sources were stored; rerun once the source is reachable.",
                code="E011",
            )
    except Exception as exc:
        finish_run(store, run_id, "failed", summary.counts(), summary.model_versions, str(exc))
        raise
    finish_run(store, run_id, "completed", summary.counts(), summary.model_versions)
    return summary
