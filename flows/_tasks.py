"""Tasks and steps shared by the nightly and rerun flows: read, store, analyse.

Analysis is idempotent by construction:

* ``stage_results`` records which records each stage version has saved, so a run only saves what
  is missing (or everything in scope with ``reanalyze``) and a crashed run is completed by
  running again;
* ``run-stage`` tasks are cached by Prefect on the stage's name and version, the versions of the
  stages before it and the ids and text hashes of the records (never the run id), so a second
  identical run finds them ``Cached`` and recomputes nothing;
* stages save with upserts keyed by record and version, alerts are queued idempotently.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from sqlalchemy import exists, select

from pipelines._errors import FeedbackError
from pipelines.delivery.alerts import DeliveryBacklog
from pipelines.ingest import SourceCounts, ingest_source
from pipelines.ingest.sources import Source
from pipelines.stages import Stage, StageContext
from pipelines.storage import (
    LockHolder,
    RunLock,
    Store,
    finish_run,
    pipeline_lock,
    schema,
    start_run,
)

__all__ = [
    "STAGE_CACHE_EXPIRATION",
    "RunSummary",
    "analyse",
    "load_run_records",
    "log_lock_wait",
    "open_store",
    "recorded_run",
    "records_to_save",
    "run_stage",
    "save_stage",
    "store_source",
    "summary_markdown",
]

STAGE_CACHE_EXPIRATION = timedelta(days=14)
"""How long a computed stage result can stand in for recomputing it."""


@dataclass
class RunSummary:
    """What a run did, returned by the flows and printed by the CLI.

    Attributes:
        run_id: Prefect flow run id (a UUID outside Prefect).
        sources: Per-source ingestion counts.
        failed_sources: Source name -> error, for sources that could not be read.
        stage_rows: Stage name -> rows the stage saved.
        languages: Language -> records in the run's scope (stored by a nightly run, in the
            range of a rerun).
        channels: Channel -> records in the run's scope.
        model_versions: Stage name -> version used.
        analysed: Records that went through the stages.
        cached_stages: Stages whose results came from Prefect's cache instead of being computed.
        report: Path of the HTML report the run wrote, if any.
        delivery: Alert deliveries not accepted by the mail server at the end of the run.
    """

    run_id: str
    sources: list[SourceCounts] = field(default_factory=list)
    failed_sources: dict[str, str] = field(default_factory=dict)
    stage_rows: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)
    analysed: int = 0
    cached_stages: list[str] = field(default_factory=list)
    report: str | None = None
    delivery: DeliveryBacklog | None = None

    def raise_for_failed_sources(self, next_step: str) -> None:
        """Fail the run (code E011) when a source could not be read, after the others ran.

        Args:
            next_step: What the user should do, e.g. "rerun once the source is reachable".
        """
        if self.failed_sources:
            raise FeedbackError(
                f"{len(self.failed_sources)} source(s) failed: "
                + "; ".join(f"{name}: {error}" for name, error in self.failed_sources.items())
                + f". The other sources were processed; {next_step}.",
                code="E011",
            )

    def counts(self) -> dict[str, Any]:
        """JSON-ready counts for the ``runs`` table."""
        return {
            "sources": [counts.as_dict() for counts in self.sources],
            "failed_sources": self.failed_sources,
            "stages": self.stage_rows,
            "languages": self.languages,
            "channels": self.channels,
            "analysed": self.analysed,
            "cached_stages": self.cached_stages,
            "delivery": self.delivery.as_dict() if self.delivery else None,
        }

    def outcome(self) -> str:
        """One line: records stored and analysed, and alert deliveries (with their warnings)."""
        line = (
            f"{sum(counts.stored for counts in self.sources)} record(s) stored, "
            f"{self.analysed} analysed"
        )
        if self.delivery is not None:
            warnings = self.delivery.warnings()
            line += "; alert deliveries: " + (
                " ".join(warnings) if warnings else "every recipient accepted"
            )
        return line


_STORES: dict[str, Store] = {}
_STORES_LOCK = threading.Lock()


def log_lock_wait(holder: LockHolder) -> None:
    """Log that this run waits for the run holding the pipeline lock."""
    get_run_logger().warning(
        "waiting for run %s (%s) to release the pipeline lock (lease until %s UTC)",
        holder.owner,
        holder.flow,
        f"{holder.expires_at:%Y-%m-%d %H:%M:%S}",
    )


@contextmanager
def recorded_run(
    store: Store, run_id: str, flow: str, parameters: dict[str, Any]
) -> Iterator[RunSummary]:
    """Hold the pipeline lock for the whole run and record the run in ``runs``: started on
    entry, completed or failed (with why) on exit.

    A run is ``running`` only while it holds the lock, so the next run that takes the lock can
    mark a ``running`` run whose process died as ``crashed``.

    Args:
        store: The database.
        run_id: The run.
        flow: Flow name shown by ``feedback status``.
        parameters: The run's parameters, JSON-ready.

    Yields:
        The run's summary, which the flow fills in; its counts are stored on exit.

    Raises:
        StoreError: Another run kept the lock for too long (code E022).
    """
    with pipeline_lock(store, run_id, flow, on_wait=log_lock_wait):
        start_run(store, run_id, flow, parameters)
        summary = RunSummary(run_id=run_id)
        try:
            yield summary
        except Exception as exc:
            finish_run(store, run_id, "failed", summary.counts(), summary.model_versions, str(exc))
            _log_outcome(flow, run_id, "failed", summary)
            raise
        finish_run(store, run_id, "completed", summary.counts(), summary.model_versions)
        _log_outcome(flow, run_id, "completed", summary)


def _log_outcome(flow: str, run_id: str, status: str, summary: RunSummary) -> None:
    """The run's final log line; a warning when alert mail is not delivered."""
    warn = summary.delivery is not None and bool(summary.delivery.warnings())
    get_run_logger().log(
        logging.WARNING if warn else logging.INFO,
        "%s run %s %s: %s",
        flow,
        run_id,
        status,
        summary.outcome(),
    )


def open_store(db_url: str) -> Store:
    """One Store per database URL and process (DuckDB allows a single writer per process).

    Thread-safe: flows running in threads of one process share the Store (and its write lock)
    instead of racing to create the schema.
    """
    with _STORES_LOCK:
        if db_url not in _STORES:
            _STORES[db_url] = Store(db_url)
        return _STORES[db_url]


@task(name="store-source", cache_policy=NO_CACHE)
def store_source(
    source: Source,
    db_url: str,
    run_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
    record_idle: bool = True,
) -> SourceCounts:
    """Stream one source into the database in chunks (see ``pipelines.ingest.ingest_source``).

    Args:
        source: The source.
        db_url: Database URL.
        run_id: Current run id.
        start: Only rows created in ``[start, end)``, the watermark untouched; None: read from
            the watermark.
        end: End of the range (excluded).
        record_idle: Write counts to ``run_source_counts`` even when nothing new came.

    Returns:
        The source's counts.
    """
    store = open_store(db_url)
    counts = ingest_source(source, store, run_id, start=start, end=end, record_idle=record_idle)
    get_run_logger().info(
        "%s: read %d, stored %d, duplicates %d, quarantined %d, skipped %d %s",
        counts.source,
        counts.read,
        counts.stored,
        counts.duplicates,
        counts.quarantined,
        counts.skipped,
        counts.skip_reasons or "",
    )
    return counts


def load_run_records(store: Store, run_id: str, unanalysed_by: Sequence[str] = ()) -> pd.DataFrame:
    """The records this run stored (copy-paste duplicates excluded), ready for analysis.

    Args:
        store: The database.
        run_id: The run.
        unanalysed_by: Stage names; records of earlier runs that lack results of any of these
            stages (an ingest-only run, a run that crashed mid-analysis) are included too, so
            nothing stored is left unanalysed.

    Returns:
        One row per record, with the ``feedback`` table's columns but ``raw``.
    """
    table, results = schema.feedback, schema.stage_results
    scope = table.c.run_id == run_id
    for stage_name in unanalysed_by:
        scope = scope | ~exists().where(
            results.c.record_id == table.c.id, results.c.stage == stage_name
        )
    # ``raw`` is audit data no stage reads: it stays out of the stage results Prefect keeps.
    columns = [column for column in table.c if column.name != "raw"]
    query = select(*columns).where(scope, table.c.duplicate_of.is_(None))
    with store.engine.connect() as connection:
        return pd.DataFrame(connection.execute(query).mappings().all())


def _stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key of a ``run-stage`` task: what the result depends on, never the run id."""
    stage: Stage = parameters["stage"]
    batch: pd.DataFrame = parameters["batch"]
    digest = hashlib.sha256()
    for part in (parameters["db_url"], stage.name, stage.version, *parameters["upstream"]):
        digest.update(part.encode() + b"\x1f")
    for record_id, text_hash in sorted(zip(batch["id"], batch["text_hash"], strict=True)):
        digest.update(f"{record_id}:{text_hash}\x1e".encode())
    return f"run-stage-{stage.name}-{digest.hexdigest()[:40]}"


@task(
    name="run-stage",
    cache_key_fn=_stage_cache_key,
    cache_expiration=STAGE_CACHE_EXPIRATION,
    persist_result=True,
)
def run_stage(
    stage: Stage,
    batch: pd.DataFrame,
    context: StageContext,
    upstream: tuple[str, ...],
    db_url: str,
) -> pd.DataFrame:
    """Compute one stage's columns for a batch (cached; see ``_stage_cache_key``).

    Args:
        stage: The stage.
        batch: Records plus the columns of the stages before it.
        context: Store, run id and options.
        upstream: ``name=version`` of the stages that produced ``batch``'s extra columns.
        db_url: Database the records come from (part of the cache key).

    Returns:
        The batch with the stage's columns.
    """
    return stage.run(batch, context)


@task(name="save-stage", cache_policy=NO_CACHE)
def save_stage(stage: Stage, batch: pd.DataFrame, context: StageContext) -> int:
    """Save one stage's results for ``batch`` and note them in ``stage_results``.

    Args:
        stage: The stage.
        batch: Output of ``run_stage`` restricted to the records that need saving.
        context: Store, run id and options (``resend_alerts``...).

    Returns:
        Rows the stage reported as written.
    """
    rows = stage.save(batch, context)
    now = datetime.now(UTC)
    context.store.upsert(
        schema.stage_results,
        [
            {
                "record_id": str(record_id),
                "stage": stage.name,
                "version": stage.version,
                "run_id": context.run_id,
                "saved_at": now,
            }
            for record_id in batch["id"]
        ],
    )
    return rows


def _saved_ids(store: Store, stage: Stage, ids: Sequence[str], any_version: bool) -> set[str]:
    """Which of ``ids`` have results of ``stage`` (of its current version, or of any)."""
    table = schema.stage_results
    found: set[str] = set()
    with store.engine.connect() as connection:
        for start in range(0, len(ids), 1000):
            query = select(table.c.record_id).where(
                table.c.stage == stage.name, table.c.record_id.in_(ids[start : start + 1000])
            )
            if not any_version:
                query = query.where(table.c.version == stage.version)
            found.update(connection.execute(query).scalars())
    return found


def records_to_save(
    store: Store, stages: Sequence[Stage], ids: Iterable[str], reanalyze: bool
) -> dict[str, set[str]]:
    """Per stage, the records whose results must be (re)saved.

    Without ``reanalyze`` a stage saves the records it never analysed (no result of any
    version): new records and the ones a crashed run left. With ``reanalyze`` it saves every
    record with its current version, beside the results of earlier versions. A record saved by a
    stage is also saved by every stage after it, whose inputs it changed.

    Args:
        store: The database.
        stages: The stages, in order.
        ids: Record ids in scope.
        reanalyze: Recompute records that already have results.

    Returns:
        Stage name -> record ids to save.
    """
    wanted = list(dict.fromkeys(str(record_id) for record_id in ids))
    carried: set[str] = set()
    needed: dict[str, set[str]] = {}
    for stage in stages:
        if reanalyze:
            carried.update(wanted)
        else:
            carried.update(set(wanted) - _saved_ids(store, stage, wanted, any_version=True))
        needed[stage.name] = set(carried)
    return needed


def analyse(
    records: pd.DataFrame,
    stages: Sequence[Stage],
    context: StageContext,
    summary: RunSummary,
    reanalyze: bool = False,
    lock: RunLock | None = None,
) -> None:
    """Run the stages over the records that need them and save what is missing.

    Every stage runs (``run-stage``, cached) on all records that some stage must save, since
    later stages need earlier stages' columns; each stage then saves only its own share
    (``save-stage``). Fills ``summary.stage_rows``, ``model_versions``, ``analysed`` and
    ``cached_stages``; with nothing to do no task runs.

    Args:
        records: Records in scope (rows of ``feedback``).
        stages: Stages to run, in order.
        context: Store, run id and options.
        summary: The run's summary, updated in place.
        reanalyze: Save every record again with the current versions (see ``records_to_save``).
        lock: The run lock, renewed after every step.
    """
    needed = (
        records_to_save(context.store, stages, records["id"], reanalyze)
        if not records.empty
        else {}
    )
    work_ids = set().union(*needed.values()) if needed else set()
    batch = records[records["id"].isin(work_ids)] if work_ids else records.iloc[0:0]
    summary.analysed = len(batch)
    db_url = context.store.url
    upstream: list[str] = []
    for stage in stages:
        summary.model_versions[stage.name] = stage.version
        summary.stage_rows[stage.name] = 0
        if batch.empty:
            continue
        state = run_stage.with_options(task_run_name=f"run-{stage.name}")(
            stage, batch, context, tuple(upstream), db_url, return_state=True
        )
        batch = state.result()
        # A stage may settle its version while running (topics: the model it fitted or loaded).
        summary.model_versions[stage.name] = stage.version
        if state.name == "Cached":
            summary.cached_stages.append(stage.name)
        to_save = batch[batch["id"].isin(needed[stage.name])]
        if not to_save.empty:
            summary.stage_rows[stage.name] = save_stage.with_options(
                task_run_name=f"save-{stage.name}"
            )(stage, to_save, context)
        upstream.append(f"{stage.name}={stage.version}")
        if lock is not None:
            lock.renew()


def summary_markdown(title: str, summary: RunSummary) -> str:
    """The markdown artifact of a run's counts.

    Args:
        title: First heading (flow name and run id).
        summary: The run's summary.

    Returns:
        Markdown text.
    """
    lines = [
        f"# {title}",
        "",
        "| source | read | stored | duplicates | quarantined | skipped |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c.source} | {c.read} | {c.stored} | {c.duplicates} | {c.quarantined} | {c.skipped} |"
        for c in summary.sources
    ]
    lines += [
        f"| {name} | failed: {error} | | | | |" for name, error in summary.failed_sources.items()
    ]
    for heading, values in (("channel", summary.channels), ("language", summary.languages)):
        lines += ["", f"| {heading} | records |", "|---|---:|"]
        lines += [f"| {key} | {value} |" for key, value in sorted(values.items())]
    if summary.model_versions:
        lines += [
            "",
            f"{summary.analysed} record(s) needed analysis.",
            "",
            "| stage | version | rows saved | results |",
            "|---|---|---:|---|",
        ]
        for name, version in summary.model_versions.items():
            if not summary.analysed:
                how = "nothing to do"
            else:
                how = "from cache" if name in summary.cached_stages else "computed"
            lines.append(f"| {name} | {version} | {summary.stage_rows.get(name, 0)} | {how} |")
    if summary.delivery is not None:
        backlog = summary.delivery
        lines += [
            "",
            "| alert deliveries | queued | retrying | unreachable | failed |",
            "|---|---:|---:|---:|---:|",
            f"| not accepted yet | {backlog.queued} | {backlog.retrying} | "
            f"{backlog.unreachable} | {backlog.failed} |",
        ]
        lines += ["", *(f"> **Warning** {line}" for line in backlog.warnings())]
    return "\n".join(lines)
