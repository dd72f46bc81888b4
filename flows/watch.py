"""The watch flow: near-real-time follow-up of new feedback, with P1 alerts mailed at once.

Each run reads every source from its watermark, stores what is new (the nightly ingestion),
runs the analysis stages on just those records and delivers due **P1** alerts; P2/P3 alerts are
queued but their digests wait for the nightly run. ``flows/deployments.py`` serves it on a
short interval (``feedback serve``); ``feedback watch`` runs the same loop without a Prefect
server. ``Watcher`` holds what both share, the analysis stages (models) included, so a loop
loads them once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

from prefect import flow
from prefect.runtime import flow_run

from flows._tasks import (
    RunSummary,
    load_run_records,
    open_store,
    save_stage,
    store_source,
)
from pipelines._errors import ConfigError, FeedbackError, StoreError
from pipelines._secrets import mask_credentials
from pipelines.config import config_path
from pipelines.delivery.alerts import AlertStage
from pipelines.ingest import ingest_source
from pipelines.ingest.sources import Source, load_sources
from pipelines.registry import build_stages
from pipelines.settings import load_settings
from pipelines.stages import Stage, StageContext
from pipelines.storage import (
    DatabaseUnavailable,
    LockHolder,
    RunLock,
    Store,
    finish_run,
    resolve_db_url,
    start_run,
)

__all__ = ["WATCH_ALERT_KINDS", "WatchSummary", "Watcher", "describe_holder", "watch"]

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# Alert kinds the watch delivers; digests (P2/P3) are left pending for the nightly run.
WATCH_ALERT_KINDS: tuple[str, ...] = ("p1",)


@dataclass
class WatchSummary(RunSummary):
    """What one watch iteration did.

    Attributes:
        p1_sent: P1 alerts mailed in this iteration (new ones and earlier ones retried).
        alerts_waiting: P1 alerts still pending (server down, backing off).
        delivery_errors: Distinct mail errors met.
        busy_with: The run (nightly, rerun) holding the pipeline lock when this poll was skipped
            for it; None when the poll ran.
    """

    p1_sent: int = 0
    alerts_waiting: int = 0
    delivery_errors: list[str] = field(default_factory=list)
    busy_with: LockHolder | None = None

    @property
    def stored(self) -> int:
        """New records stored in this iteration, over all sources."""
        return sum(counts.stored for counts in self.sources)

    def eventful(self) -> bool:
        """Whether the iteration is worth a row in ``runs`` (idle polls leave no trace)."""
        return bool(self.sources or self.failed_sources or self.p1_sent or self.delivery_errors)


def describe_holder(holder: LockHolder | None) -> str:
    """Who holds the pipeline lock, for log lines.

    Args:
        holder: The holder read from ``run_locks`` (None: released in the meantime).

    Returns:
        E.g. ``"nightly run 0f3c..."``.
    """
    return f"{holder.flow} run {holder.owner}" if holder is not None else "another run"


@cache
def _cached_stages(names: tuple[str, ...], config_dir: str | None) -> tuple[Stage, ...]:
    return tuple(build_stages(names, config_dir))


class Watcher:
    """One source-to-alert pass at a time, keeping the stages (and their models) loaded.

    Args:
        store: The database.
        sources: The sources to poll.
        stages: Analysis stages run on each iteration's new records, in order.
    """

    def __init__(self, store: Store, sources: Sequence[Source], stages: Sequence[Stage]) -> None:
        self.store = store
        self.sources = list(sources)
        self.stages = list(stages)

    @classmethod
    def from_config(
        cls,
        config_dir: str | os.PathLike[str] | None = None,
        db: str | None = None,
        sources: Sequence[str] | None = None,
    ) -> Watcher:
        """Build the watcher from the configuration, as ``feedback run`` would.

        Args:
            config_dir: Folder with the YAML configuration; the embedded defaults when None.
            db: Database path or SQLAlchemy URL; overrides ``pipeline.yaml`` and
                ``$FEEDBACK_DB_URL``.
            sources: Only these source names (default: every enabled source).

        Returns:
            The watcher; stages are built once per process and configuration.

        Raises:
            ConfigError: A configuration file is invalid or ``sources`` names an unknown source.
        """
        folder = str(config_dir) if config_dir is not None else None
        settings = load_settings(folder)
        store = open_store(
            resolve_db_url(db or os.environ.get("FEEDBACK_DB_URL") or settings.database)
        )
        configured = load_sources(config_path("sources.yaml", folder))
        selected = [source for source in configured if sources is None or source.name in sources]
        unknown = sorted(set(sources or ()) - {source.name for source in configured})
        if unknown:
            raise ConfigError(
                f"unknown or disabled source(s) {unknown}; use names from sources.yaml: "
                f"{sorted(source.name for source in configured)}"
            )
        return cls(store, selected, _cached_stages(tuple(settings.stages), folder))

    def poll(self, run_id: str | None = None) -> WatchSummary:
        """Read every source from its watermark, store what is new, analyse it, mail P1 alerts.

        A source that fails is reported in ``failed_sources`` and retried on the next poll; the
        others go on. While another run (nightly, rerun) holds the pipeline lock the poll is
        skipped (``busy_with``). A DuckDB file is released after each poll, so ``feedback run``
        can use it between polls.

        Args:
            run_id: Id stored with the new records; a fresh UUID when None.

        Returns:
            What the iteration did.

        Raises:
            StoreError: The database is unreachable or locked by another process (DuckDB
                allows one writing process); the next poll tries again.
        """
        summary = WatchSummary(run_id=run_id or str(uuid.uuid4()))
        try:
            lock = RunLock(self.store, summary.run_id, "watch")
            if not lock.try_acquire():
                summary.busy_with = lock.holder()
                return summary
            try:
                for source in self.sources:
                    try:
                        counts = ingest_source(
                            source, self.store, summary.run_id, record_idle=False
                        )
                    except FeedbackError as exc:
                        summary.failed_sources[source.name] = str(exc)
                        continue
                    if not counts.idle:
                        summary.sources.append(counts)
                return self.analyse(summary)
            finally:
                lock.release()
        except DatabaseUnavailable as exc:
            raise StoreError(
                f"database {mask_credentials(repr(self.store.url))} is unavailable ({exc.orig}). "
                "If another process (e.g. feedback run) holds the DuckDB file, this poll is "
                "retried once it is done; use PostgreSQL to run flows side by side."
            ) from exc
        finally:
            if self.store.is_duckdb:
                self.store.close()

    def analyse(self, summary: WatchSummary) -> WatchSummary:
        """Run the stages on the records ``summary.run_id`` stored, then deliver P1 alerts.

        With no new records the stages are skipped, but pending P1 alerts (e.g. left by an
        SMTP outage) are still delivered. The iteration gets a row in ``runs`` when it stored,
        sent or failed something.

        Args:
            summary: Ingestion counts of this iteration, filled in further.

        Returns:
            ``summary``.
        """
        context = StageContext(
            store=self.store,
            run_id=summary.run_id,
            options={"alert_kinds": list(WATCH_ALERT_KINDS)},
        )
        try:
            records = load_run_records(self.store, summary.run_id)
            if not records.empty:
                summary.channels = records["channel"].value_counts().to_dict()
                summary.languages = records["lang"].value_counts().to_dict()
            for stage in self.stages:
                if not records.empty:
                    records = stage.run(records, context)
                    summary.stage_rows[stage.name] = save_stage.fn(stage, records, context)
                elif isinstance(stage, AlertStage):
                    stage.deliver(context)
                summary.model_versions[stage.name] = stage.version
                if isinstance(stage, AlertStage) and stage.last_delivery is not None:
                    summary.p1_sent += stage.last_delivery.alerts_sent
                    summary.alerts_waiting += stage.last_delivery.alerts_waiting
                    summary.delivery_errors += stage.last_delivery.errors
        except Exception as exc:
            self._record_run(summary, "failed", str(exc))
            raise
        if summary.eventful():
            self._record_run(summary, "completed")
        return summary

    def _record_run(self, summary: WatchSummary, status: str, message: str | None = None) -> None:
        parameters = {"sources": [source.name for source in self.sources]}
        start_run(self.store, summary.run_id, "watch", parameters)
        counts = {**summary.counts(), "p1_sent": summary.p1_sent}
        finish_run(self.store, summary.run_id, status, counts, summary.model_versions, message)


@flow(name="watch", log_prints=True)
def watch(
    config_dir: str | None = None,
    db: str | None = None,
    sources: list[str] | None = None,
) -> WatchSummary:
    """Ingest and analyse what is new since each source's watermark; mail P1 alerts now.

    Args:
        config_dir: Folder with the YAML configuration; the embedded defaults when None.
        db: Database path or SQLAlchemy URL; overrides ``pipeline.yaml`` and ``$FEEDBACK_DB_URL``.
        sources: Only these source names (default: every enabled source).

    Returns:
        What the run did.

    Raises:
        FeedbackError: A source could not be read (code E011); the others were processed.
    """
    watcher = Watcher.from_config(config_dir, db, sources)
    summary = WatchSummary(run_id=str(flow_run.get_id() or uuid.uuid4()))
    lock = RunLock(watcher.store, summary.run_id, "watch")
    if not lock.try_acquire():
        summary.busy_with = lock.holder()
        print(f"Skipped: {describe_holder(summary.busy_with)} holds the pipeline lock")
        return summary
    try:
        for source in watcher.sources:
            try:
                counts = store_source(source, watcher.store.url, summary.run_id, record_idle=False)
            except FeedbackError as exc:
                summary.failed_sources[source.name] = str(exc)
                continue
            if not counts.idle:
                summary.sources.append(counts)
        watcher.analyse(summary)
    finally:
        lock.release()
    print(f"{summary.stored} new record(s), {summary.p1_sent} P1 alert(s) sent")
    summary.raise_for_failed_sources("the next run retries")
    return summary
