"""The rerun / backfill flow: re-read a date range from the sources and (re)analyse it.

Use it when a source delivered late, a run crashed, or a model changed::

    prefect deployment run 'rerun/rerun' --param since=2026-11-01 --param until=2026-11-08
    feedback rerun --since 2026-11-01 --until 2026-11-08 --stage sentiment --reanalyze

What it does, for records created in ``[since, until)``:

1. streams every selected source from the start, ignoring (and not moving) watermarks, and
   keeps the rows in the range (the others count as skipped, ``out_of_range``); ids already
   stored count as duplicates, so nothing is stored twice;
2. runs the stages on **all** stored records of the range (not only the ones just stored):
   a stage saves the records it never analysed, or, with ``reanalyze``, every record again with
   its current version, beside earlier versions' results;
3. Prefect caches each stage's computation on the stage version and the records' ids and text
   (never the run id): running the same rerun twice recomputes nothing, and a rerun after a
   crash only computes what the crashed run had not finished.

It holds the pipeline's run lock while it writes, like the nightly flow.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows._tasks import (
    FailureMail,
    RunSummary,
    analyse,
    open_store,
    recorded_run,
    store_source,
    summary_markdown,
)
from flows.nightly import log_lock_wait
from pipelines._errors import ConfigError, FeedbackError
from pipelines.analysis import range_scope, scoped_ids
from pipelines.config import config_path
from pipelines.delivery.alerts import AlertStage, delivery_backlog, rearm_alerts
from pipelines.ingest.sources import load_sources
from pipelines.registry import build_stages
from pipelines.settings import load_settings, outbox_dir_for
from pipelines.stages import StageContext
from pipelines.storage import pipeline_lock, resolve_db_url

__all__ = ["rerun", "to_utc"]

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def to_utc(moment: datetime | date, timezone: str) -> datetime:
    """An aware UTC instant; naive values and plain dates are read in ``timezone``.

    Args:
        moment: Instant or day (a day means its local midnight).
        timezone: IANA zone of naive values.

    Returns:
        The instant in UTC.
    """
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, time.min)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(timezone))
    return moment.astimezone(UTC)


def _describe(start: datetime, end: datetime | None) -> str:
    return f"{start:%Y-%m-%d %H:%M} UTC to " + (f"{end:%Y-%m-%d %H:%M} UTC" if end else "now")


@flow(name="rerun", log_prints=True)
def rerun(
    since: datetime,
    until: datetime | None = None,
    sources: list[str] | None = None,
    stages: list[str] | None = None,
    reanalyze: bool = False,
    resend_alerts: bool = False,
    config_dir: str | None = None,
    db: str | None = None,
    read_sources: bool = True,
) -> RunSummary:
    """Backfill or recompute the records created in ``[since, until)``.

    Args:
        since: First instant of the range (e.g. ``2026-11-01``); naive values are in the
            ``timezone`` of pipeline.yaml.
        until: End of the range, excluded (default: now).
        sources: Only these source names (default: every enabled source).
        stages: Analysis stages to run, e.g. ``["sentiment"]`` (default: ``stages`` in
            pipeline.yaml; ``[]`` only re-reads the sources).
        reanalyze: Save every record of the range again with the current stage versions (for a
            new model version), instead of only the records a stage never analysed.
        resend_alerts: Mail the alerts of the range's records again, to every recipient, even
            if already sent (with or without ``reanalyze``).
        config_dir: Folder with the YAML configuration; the embedded defaults when None.
        db: Database path or SQLAlchemy URL; overrides pipeline.yaml and ``$FEEDBACK_DB_URL``.
        read_sources: Re-read the sources first (False: only analyse what is stored).

    Returns:
        The run summary (also stored in ``runs`` and published as a markdown artifact).

    Raises:
        ConfigError: ``until`` is not after ``since``, or ``sources`` names an unknown source.
        FeedbackError: A source could not be read (code E011); the others were processed.
    """
    settings = load_settings(config_dir)
    db_url = resolve_db_url(db or os.environ.get("FEEDBACK_DB_URL") or settings.database)
    store = open_store(db_url)
    run_id = str(flow_run.get_id() or uuid.uuid4())
    start = to_utc(since, settings.timezone)
    end = to_utc(until, settings.timezone) if until is not None else None
    parameters = {
        "since": start.isoformat(),
        "until": end.isoformat() if end else None,
        "sources": sources,
        "stages": stages,
        "reanalyze": reanalyze,
        "resend_alerts": resend_alerts,
        "read_sources": read_sources,
    }
    failure_mail = FailureMail(
        settings.failure_mail_to, outbox_dir_for(settings, db_url), config_dir, db
    )
    with recorded_run(store, run_id, "rerun", parameters, failure_mail) as summary:
        if end is not None and end <= start:
            raise ConfigError(
                f"until ({end.isoformat()}) must be after since ({start.isoformat()}); "
                "the range is [since, until)."
            )
        configured = load_sources(config_path("sources.yaml", config_dir))
        unknown = sorted(set(sources or ()) - {source.name for source in configured})
        if unknown:
            raise ConfigError(
                f"unknown or disabled source(s) {unknown}; use names from sources.yaml: "
                f"{sorted(source.name for source in configured)}"
            )
        selected = [s for s in configured if sources is None or s.name in sources]
        analysis_stages = build_stages(
            stages if stages is not None else settings.stages, config_dir
        )
        with pipeline_lock(store, run_id, "rerun", on_wait=log_lock_wait) as lock:
            for source in selected if read_sources else ():
                try:
                    summary.sources.append(store_source(source, db_url, run_id, start, end))
                except FeedbackError as exc:
                    summary.failed_sources[source.name] = str(exc)
                lock.renew()
            scope = range_scope(start, end, sources)
            # Re-armed here, not by the alerts stage: the stage only sees records it must save,
            # which without --reanalyze are none of the records already analysed.
            rearmed = (
                rearm_alerts(store, record_ids=scoped_ids(store, scope)) if resend_alerts else 0
            )
            context = StageContext(store=store, run_id=run_id)
            analysis = analyse(
                scope,
                analysis_stages,
                context,
                summary,
                settings.analysis_chunk_size,
                reanalyze=reanalyze,
                lock=lock,
                executor=settings.executor,
                config_dir=config_dir,
            )
            alert_stages = [stage for stage in analysis_stages if isinstance(stage, AlertStage)]
            if resend_alerts and not alert_stages:
                alert_stages = [AlertStage.from_config(config_dir)]
            for stage in alert_stages:
                stage.deliver(context)
                summary.delivery = delivery_backlog(store)
        print(
            f"{sum(c.stored for c in summary.sources)} record(s) stored, "
            f"{summary.analysed} of {analysis.in_scope} in range analysed"
            + (f", from cache: {', '.join(summary.cached_stages)}" if summary.cached_stages else "")
            + (f", {rearmed} alert(s) re-armed to be mailed again" if resend_alerts else "")
        )
        create_markdown_artifact(
            summary_markdown(f"Rerun `{run_id}`: {_describe(start, end)}", summary),
            key="rerun-summary",
            description="Counts of this rerun",
        )
        summary.raise_for_failed_sources("rerun once the source is reachable")
    return summary
