"""Storage: the one place SQL lives. DuckDB by default, PostgreSQL by URL.

``schema`` holds the tables; ``Store`` opens the database and writes idempotently; the run lock
and run bookkeeping are here too, so that DuckDB/PostgreSQL differences stay in one package.
"""

from pipelines.storage import schema
from pipelines.storage._labels import (
    LABEL_KINDS,
    POLARITIES,
    Label,
    latest_labels,
    record_labels,
    resolve_external_ids,
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
from pipelines.storage._triage import (
    RecordContext,
    TriageEvent,
    alert_ids_for,
    assign_alert,
    count_login_attempts,
    negative_aspects,
    note_login_attempt,
    record_context,
    record_event,
    similar_records,
    triage_alerts,
    triage_events,
)

__all__ = [
    "DB_URL_ENV",
    "DEFAULT_DB_PATH",
    "DEFAULT_LEASE",
    "DEFAULT_WAIT",
    "LABEL_KINDS",
    "PIPELINE_LOCK",
    "POLARITIES",
    "Label",
    "LockHolder",
    "RecordContext",
    "Refused",
    "RunLock",
    "Store",
    "TriageEvent",
    "alert_ids_for",
    "assign_alert",
    "count_login_attempts",
    "finish_run",
    "force_release",
    "latest_labels",
    "mark_crashed",
    "negative_aspects",
    "note_login_attempt",
    "pipeline_lock",
    "recent_runs",
    "record_context",
    "record_event",
    "record_labels",
    "resolve_db_url",
    "resolve_external_ids",
    "schema",
    "similar_records",
    "start_run",
    "triage_alerts",
    "triage_events",
]
