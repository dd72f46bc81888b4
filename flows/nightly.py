"""The nightly flow: read every source concurrently, store what is new, run the analysis stages,
write the day's report.

The run holds the pipeline's run lock (``pipelines.storage``) from start to end, so a nightly
run and a rerun started at the same time never write at once; the second waits for the first.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows._tasks import (
    FailureMail,
    RunSummary,
    analyse,
    log_lock_wait,
    open_store,
    recorded_run,
    store_source,
    summary_markdown,
)
from pipelines._errors import FeedbackError
from pipelines.analysis import run_scope
from pipelines.config import config_path
from pipelines.delivery.alerts import AlertStage, delivery_backlog
from pipelines.delivery.report import (
    GeneratedReport,
    generate_report,
    priority_rows,
    report_markdown,
)
from pipelines.ingest.sources import load_sources
from pipelines.registry import build_stages
from pipelines.settings import PipelineSettings, load_settings, outbox_dir_for
from pipelines.stages import StageContext
from pipelines.storage import Store, pipeline_lock, resolve_db_url

__all__ = [
    "RunSummary",
    "log_lock_wait",
    "nightly",
    "open_store",
    "store_source",
    "write_report",
]

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@task(name="write-report", cache_policy=NO_CACHE)
def write_report(
    store: Store, settings: PipelineSettings, config_dir: str | None = None
) -> GeneratedReport:
    """Write the HTML report of the last complete day and publish it as Prefect artifacts.

    Args:
        store: The database.
        settings: Timezone and ``reports_dir``.
        config_dir: Configuration folder (``topics.yaml`` spike thresholds).

    Returns:
        The report and its file.
    """
    generated = generate_report(store, settings, config_dir=config_dir)
    create_markdown_artifact(
        report_markdown(generated.report, generated.path),
        key="daily-report",
        description=f"Customer feedback report {generated.report.day.isoformat()}",
    )
    create_table_artifact(
        priority_rows(generated.report),
        key="p1-p2-items",
        description=f"P1/P2 items created on {generated.report.day.isoformat()}",
    )
    get_run_logger().info("report written to %s", generated.path)
    return generated


@flow(name="nightly", log_prints=True)
def nightly(
    config_dir: str | None = None,
    db: str | None = None,
    sources: list[str] | None = None,
    since: datetime | None = None,
    stages: list[str] | None = None,
    resend_alerts: bool = False,
) -> RunSummary:
    """Nightly ingestion and analysis of all configured sources, then the day's report.

    Args:
        config_dir: Folder with the YAML configuration; the embedded defaults when None.
        db: Database path or SQLAlchemy URL; overrides ``pipeline.yaml`` and ``$FEEDBACK_DB_URL``.
        sources: Only these source names (default: every enabled source).
        since: Read every source from the start and keep the rows created at or after this
            instant (naive: UTC), instead of reading from each source's watermark; the others
            count as skipped and the watermarks stay.
        stages: Analysis stages to run (default: ``stages`` in ``pipeline.yaml``).
        resend_alerts: Mail alerts for this run's records again even if already sent.

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
        "resend_alerts": resend_alerts,
    }
    failure_mail = FailureMail(
        settings.failure_mail_to, outbox_dir_for(settings, db_url), config_dir, db
    )
    with recorded_run(store, run_id, "nightly", parameters, failure_mail) as summary:
        selected = [
            source
            for source in load_sources(config_path("sources.yaml", config_dir))
            if sources is None or source.name in sources
        ]
        start = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
        analysis_stages = build_stages(
            stages if stages is not None else settings.stages, config_dir
        )
        with pipeline_lock(store, run_id, "nightly", on_wait=log_lock_wait) as lock:
            # Each source is streamed into the database chunk by chunk, under the lock.
            for source in selected:
                try:
                    summary.sources.append(store_source(source, db_url, run_id, start=start))
                except FeedbackError as exc:
                    summary.failed_sources[source.name] = str(exc)
                lock.renew()
            scope = run_scope(run_id, unanalysed_by=[stage.name for stage in analysis_stages])
            context = StageContext(
                store=store, run_id=run_id, options={"resend_alerts": resend_alerts}
            )
            analyse(
                scope,
                analysis_stages,
                context,
                summary,
                settings.analysis_chunk_size,
                lock=lock,
                executor=settings.executor,
                config_dir=config_dir,
            )
            # Digests the watch flow queued, and alerts an SMTP outage left, go out even on a
            # night without new records (deliver_pending sends nothing twice).
            for stage in analysis_stages:
                if isinstance(stage, AlertStage):
                    stage.deliver(context)
                    summary.delivery = delivery_backlog(store)
        summary.report = str(write_report(store, settings, config_dir).path)
        create_markdown_artifact(
            summary_markdown(f"Nightly run `{run_id}`", summary),
            key="nightly-summary",
            description="Counts of this run",
        )
        summary.raise_for_failed_sources("rerun once the source is reachable")
    return summary
