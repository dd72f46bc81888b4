"""Tasks and steps shared by the nightly and rerun flows: read, store, analyse.

The analysis itself (chunks, what to save, the ``stage_results`` ledger) lives in
``pipelines.analysis``; here its steps become Prefect tasks. Analysis is idempotent by
construction:

* ``stage_results`` records which records each stage version has saved, chunk by chunk, so a run
  only saves what is missing (or everything in scope with ``reanalyze``) and a crashed run is
  completed by running again;
* the per-record stages (sentiment, aspects, topics) run as ``analyse-chunk`` tasks, in this
  process or on a Dask cluster (``executor`` in pipeline.yaml); a task reads its records by id,
  saves what is missing and returns only counts (no result is persisted: Prefect's result
  storage never holds records); a chunk lost with its worker is retried;
* the other stages' ``run-stage`` tasks are cached by Prefect per chunk, on the stage's name
  and version, the versions of the stages before it and the ids and text hashes of the chunk's
  records (never the run id), so a second identical run finds them ``Cached`` and recomputes
  nothing;
* stages save with upserts keyed by record and version, alerts are queued idempotently.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from pipelines._errors import FeedbackError
from pipelines.analysis import (
    AnalysisResult,
    ChunkCounts,
    ChunkPlan,
    MapChunks,
    analyse_chunk,
    analyse_with_chunk_tasks,
    load_run_records,
    save_results,
)
from pipelines.delivery.alerts import DeliveryBacklog
from pipelines.delivery.failure_mail import RunFailure, error_code, mail_failure, rerun_command
from pipelines.ingest import SourceCounts, ingest_source
from pipelines.ingest.sources import Source
from pipelines.settings import ExecutorSettings
from pipelines.stages import Stage, StageContext
from pipelines.storage import (
    LockHolder,
    RecordScope,
    RunLock,
    Store,
    finish_run,
    pipeline_lock,
    recent_runs,
    start_run,
)

__all__ = [
    "STAGE_CACHE_EXPIRATION",
    "FailureMail",
    "RunSummary",
    "analyse",
    "analyse_chunk_task",
    "load_run_records",
    "log_lock_wait",
    "open_store",
    "recorded_run",
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
        stage_new: Stage name -> records the stage analysed for the first time.
        stage_reanalysed: Stage name -> records the stage analysed again (reruns).
        stage_seconds: Stage name -> seconds it ran (and saved).
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
    stage_new: dict[str, int] = field(default_factory=dict)
    stage_reanalysed: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)

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
            "stage_details": {
                name: {
                    "rows": rows,
                    "new": self.stage_new.get(name, 0),
                    "reanalysed": self.stage_reanalysed.get(name, 0),
                    "seconds": self.stage_seconds.get(name, 0.0),
                }
                for name, rows in self.stage_rows.items()
            },
        }

    def unsupported_languages(self) -> int:
        """Records of the run's scope in none of tr/fa/ro/en (``lang`` = ``other``)."""
        return int(self.languages.get("other", 0))

    def unsupported_line(self) -> str:
        """What ``unsupported_languages`` means, for the summary and the console."""
        return (
            f"{self.unsupported_languages()} record(s) in an unsupported language (lang=other: "
            "not tr/fa/ro/en, or too short to tell); analysed with the multilingual models, "
            "less reliable."
        )

    def outcome(self) -> str:
        """One line: records stored and analysed, and alert deliveries (with their warnings)."""
        line = (
            f"{sum(counts.stored for counts in self.sources)} record(s) stored, "
            f"{self.analysed} analysed"
        )
        if self.unsupported_languages():
            line += f" ({self.unsupported_languages()} in an unsupported language)"
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


@dataclass(frozen=True)
class FailureMail:
    """Who hears about a failed or crashed run, and how to tell them to rerun it.

    Attributes:
        to: ``failure_mail_to`` of pipeline.yaml (nothing is sent when empty).
        outbox_dir: Outbox used without an SMTP server.
        config_dir: The run's ``--config`` (for the rerun command).
        db: The run's ``--db`` (for the rerun command).
    """

    to: list[str]
    outbox_dir: Path
    config_dir: str | None = None
    db: str | None = None


def _run_link(run_id: str) -> str:
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    if base:
        return f"{str(base).rstrip('/')}/runs/flow-run/{run_id}"
    return f"no Prefect UI configured; see `feedback runs` (run {run_id})"


def _mail_failure(
    mail: FailureMail, flow: str, run_id: str, status: str, error: str, parameters: dict[str, Any]
) -> None:
    """Mail the data team; a mail problem is logged, never raised over the run's own error."""
    failure = RunFailure(
        flow=flow,
        run_id=run_id,
        status=status,
        error=" ".join(error.split()),
        code=error_code(error),
        rerun=rerun_command(flow, parameters, mail.config_dir, mail.db),
        link=_run_link(run_id),
    )
    try:
        refused = mail_failure(failure, mail.to, mail.outbox_dir)
    except Exception as exc:
        get_run_logger().warning("could not mail the failure of run %s: %s", run_id, exc)
        return
    if refused:
        get_run_logger().warning(
            "the failure mail of run %s was refused for %s", run_id, ", ".join(refused)
        )


def _mail_crashed(store: Store, crashed: list[str], mail: FailureMail) -> None:
    for run in recent_runs(store, 50):
        if run["run_id"] in crashed and run["flow"] in ("nightly", "rerun"):
            message = run.get("message") or "crashed"
            _mail_failure(
                mail, run["flow"], run["run_id"], "crashed", message, run.get("parameters") or {}
            )


@contextmanager
def recorded_run(
    store: Store,
    run_id: str,
    flow: str,
    parameters: dict[str, Any],
    failure_mail: FailureMail | None = None,
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
        failure_mail: Who is mailed when this run fails, or finds runs that crashed.

    Yields:
        The run's summary, which the flow fills in; its counts are stored on exit.

    Raises:
        StoreError: Another run kept the lock for too long (code E022).
    """
    with pipeline_lock(store, run_id, flow, on_wait=log_lock_wait) as lock:
        start_run(store, run_id, flow, parameters)
        if failure_mail is not None and failure_mail.to and lock.crashed_runs:
            _mail_crashed(store, lock.crashed_runs, failure_mail)
        summary = RunSummary(run_id=run_id)
        try:
            yield summary
        except Exception as exc:
            finish_run(store, run_id, "failed", summary.counts(), summary.model_versions, str(exc))
            _log_outcome(flow, run_id, "failed", summary)
            if failure_mail is not None and failure_mail.to:
                _mail_failure(failure_mail, flow, run_id, "failed", str(exc), parameters)
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
    # Read back from result storage, not kept: Prefect's in-memory result cache holds up to 1000
    # results, which would keep every chunk of a run alive.
    cache_result_in_memory=False,
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
    """Prefect task around ``save_results``: save one stage's share of a chunk, note the ledger."""
    return save_results(stage, batch, context)


def _run_stage_step(
    stage: Stage, batch: pd.DataFrame, context: StageContext, upstream: tuple[str, ...]
) -> tuple[pd.DataFrame, bool]:
    state = run_stage.with_options(task_run_name=f"run-{stage.name}")(
        stage, batch, context, upstream, context.store.url, return_state=True
    )
    return state.result(), state.name == "Cached"


def _save_stage_step(stage: Stage, batch: pd.DataFrame, context: StageContext) -> int:
    return save_stage.with_options(task_run_name=f"save-{stage.name}")(stage, batch, context)


@task(
    name="analyse-chunk",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=2,
)
def analyse_chunk_task(
    plan: ChunkPlan, ids: list[str], stages: Sequence[Stage] | None = None
) -> ChunkCounts:
    """Prefect task around ``analyse_chunk``: the per-record stages on one chunk of records.

    Args:
        plan: The run's plan (database, stage names, options).
        ids: The chunk's record ids.
        stages: The flow's stage objects when run in its process; None on a Dask worker,
            which builds them once per process.

    Returns:
        The chunk's counts.
    """
    return analyse_chunk(plan, ids, open_store(plan.db_url), stages)


def _map_in_process(
    plan: ChunkPlan, chunks: Iterable[list[str]], stages: Sequence[Stage]
) -> Iterator[ChunkCounts]:
    for number, ids in enumerate(chunks, start=1):
        yield analyse_chunk_task.with_options(task_run_name=f"analyse-chunk-{number}")(
            plan, ids, stages
        )


def _chunk_mapper(executor: ExecutorSettings) -> MapChunks:
    """The executor's way of running chunk tasks. A Dask cluster is reached (or a temporary one
    started) only when a run has chunks to analyse, and left (or closed) after the last chunk,
    before the stages that run in the flow."""
    if executor.kind == "local":
        return _map_in_process
    from prefect_dask import DaskTaskRunner

    def map_on_dask(
        plan: ChunkPlan, chunks: Iterable[list[str]], stages: Sequence[Stage]
    ) -> Iterator[ChunkCounts]:
        if executor.address is not None:
            runner = DaskTaskRunner(address=executor.address)
        else:
            runner = DaskTaskRunner(
                cluster_kwargs={
                    "n_workers": executor.n_workers,
                    "threads_per_worker": 1,
                    "processes": True,
                    "host": "127.0.0.1",
                    "dashboard_address": "127.0.0.1:0",
                }
            )
        with runner:
            try:
                runner.client  # noqa: B018 - connects, or starts the temporary cluster
            except (OSError, TimeoutError) as exc:
                raise FeedbackError(
                    f"cannot reach the Dask scheduler at {executor.address}: {exc}. Start it "
                    "(`dask scheduler`, then `dask worker <address>` on each machine) or set "
                    "executor.kind: local in pipeline.yaml.",
                    code="E105",
                ) from None
            futures = [
                runner.submit(
                    analyse_chunk_task.with_options(task_run_name=f"analyse-chunk-{number}"),
                    parameters={"plan": plan, "ids": ids},
                )
                for number, ids in enumerate(chunks, start=1)
            ]
            for future in futures:
                try:
                    counts = future.result()
                except Exception as exc:
                    raise FeedbackError(
                        f"an analysis chunk failed on the Dask cluster ({type(exc).__name__}: "
                        f"{exc}); its retries are spent. Saved chunks stay saved: run again to "
                        "finish (check the workers' logs and memory).",
                        code="E106",
                    ) from exc
                yield counts

    return map_on_dask


def analyse(
    scope: RecordScope,
    stages: Sequence[Stage],
    context: StageContext,
    summary: RunSummary,
    chunk_size: int,
    reanalyze: bool = False,
    lock: RunLock | None = None,
    executor: ExecutorSettings | None = None,
    config_dir: str | None = None,
) -> AnalysisResult:
    """Analyse the records in ``scope`` (``analyse_with_chunk_tasks``) as Prefect tasks.

    The per-record stages run as ``analyse-chunk`` tasks on the executor; each other stage of
    each chunk is a ``run-stage`` task (cached) and a ``save-stage`` task. Fills
    ``summary.stage_rows``, ``model_versions``, ``analysed``, ``cached_stages``, ``languages``
    and ``channels``; with nothing to do no task runs.

    Args:
        scope: The records (``run_scope``, ``range_scope``).
        stages: Stages to run, in order (built from ``config_dir``).
        context: Store, run id and options.
        summary: The run's summary, updated in place.
        chunk_size: Records analysed and saved at a time (``analysis_chunk_size``).
        reanalyze: Save every record again with the current versions (see ``records_to_save``).
        lock: The run lock, renewed after every step.
        executor: Where chunk tasks run (default: in this process).
        config_dir: Configuration folder, for Dask workers that build their own stages.

    Returns:
        What the analysis did (``in_scope`` counts the records in scope).
    """
    result = analyse_with_chunk_tasks(
        scope,
        stages,
        context,
        chunk_size,
        _chunk_mapper(executor or ExecutorSettings()),
        config_dir=config_dir,
        reanalyze=reanalyze,
        run_step=_run_stage_step,
        save_step=_save_stage_step,
        after_step=lock.renew if lock is not None else None,
    )
    summary.analysed = result.analysed
    summary.stage_rows = result.stage_rows
    summary.model_versions = result.model_versions
    summary.cached_stages = result.cached_stages
    summary.languages = result.languages
    summary.channels = result.channels
    summary.stage_new = result.stage_new
    summary.stage_reanalysed = result.stage_reanalysed
    summary.stage_seconds = result.stage_seconds
    return result


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
    if summary.unsupported_languages():
        lines += ["", summary.unsupported_line()]
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
