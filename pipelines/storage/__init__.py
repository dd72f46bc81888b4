"""Storage: the one place SQL lives. DuckDB by default, PostgreSQL by URL.

``schema`` holds the tables; ``Store`` opens the database and writes idempotently; the run lock
and run bookkeeping are here too, so that DuckDB/PostgreSQL differences stay in one package.
"""

from pipelines.storage import schema
from pipelines.storage._export import analysed_records
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
from pipelines.storage._quarantine_view import (
    REPLAYED,
    STILL_QUARANTINED,
    find_quarantined,
    list_quarantined,
    record_replays,
)
from pipelines.storage._runs import finish_run, mark_crashed, recent_runs, start_run
from pipelines.storage._store import DB_URL_ENV, DEFAULT_DB_PATH, Refused, Store, resolve_db_url

__all__ = [
    "DB_URL_ENV",
    "DEFAULT_DB_PATH",
    "DEFAULT_LEASE",
    "DEFAULT_WAIT",
    "LABEL_KINDS",
    "PIPELINE_LOCK",
    "POLARITIES",
    "REPLAYED",
    "STILL_QUARANTINED",
    "Label",
    "LockHolder",
    "Refused",
    "RunLock",
    "Store",
    "analysed_records",
    "find_quarantined",
    "finish_run",
    "force_release",
    "latest_labels",
    "list_quarantined",
    "mark_crashed",
    "pipeline_lock",
    "recent_runs",
    "record_labels",
    "record_replays",
    "resolve_db_url",
    "resolve_external_ids",
    "schema",
    "start_run",
]
