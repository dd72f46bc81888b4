"""Storage: the one place SQL lives. DuckDB by default, PostgreSQL by URL.

``schema`` holds the tables; ``Store`` opens the database and writes idempotently; the run lock
and run bookkeeping are here too, so that DuckDB/PostgreSQL differences stay in one package.
"""

from pipelines.storage import schema
from pipelines.storage._alert_queries import (
    ClaimedDelivery,
    DeliveryOutcome,
    DeliveryRow,
    ack_alerts,
    alert_ids_of_records,
    alert_statuses,
    alert_timings,
    claim_deliveries,
    describe_reply,
    ensure_deliveries,
    pending_deliveries,
    query_alerts,
    rearm_deliveries,
    release_stale_claims,
    resolve_alerts,
    retry_failed_deliveries,
    settle_deliveries,
    undelivered,
)
from pipelines.storage._locks import (
    DEFAULT_LEASE,
    DEFAULT_WAIT,
    PIPELINE_LOCK,
    LockHolder,
    RunLock,
    force_release,
    pipeline_lock,
)
from pipelines.storage._runs import finish_run, mark_crashed, recent_runs, start_run
from pipelines.storage._store import DB_URL_ENV, DEFAULT_DB_PATH, Refused, Store, resolve_db_url

__all__ = [
    "DB_URL_ENV",
    "DEFAULT_DB_PATH",
    "DEFAULT_LEASE",
    "DEFAULT_WAIT",
    "PIPELINE_LOCK",
    "ClaimedDelivery",
    "DeliveryOutcome",
    "DeliveryRow",
    "LockHolder",
    "Refused",
    "RunLock",
    "Store",
    "ack_alerts",
    "alert_ids_of_records",
    "alert_statuses",
    "alert_timings",
    "claim_deliveries",
    "describe_reply",
    "ensure_deliveries",
    "finish_run",
    "force_release",
    "mark_crashed",
    "pending_deliveries",
    "pipeline_lock",
    "query_alerts",
    "rearm_deliveries",
    "recent_runs",
    "release_stale_claims",
    "resolve_alerts",
    "resolve_db_url",
    "retry_failed_deliveries",
    "schema",
    "settle_deliveries",
    "start_run",
    "undelivered",
]
