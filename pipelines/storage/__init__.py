"""Storage: the one place SQL lives. DuckDB by default, PostgreSQL by URL.

``schema`` holds the tables; ``Store`` opens the database and writes idempotently; the run lock
and run bookkeeping are here too, so that DuckDB/PostgreSQL differences stay in one package.
"""

from pipelines.storage import schema
from pipelines.storage._labels import (
    LABEL_KINDS,
    POLARITIES,
    RATING_LABEL_MIN_CHARS,
    Label,
    labelled_texts,
    latest_labels,
    rating_sentiment,
    record_labels,
    record_rating_labels,
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
from pipelines.storage._models import (
    MODEL_STATUSES,
    ModelArtifact,
    ModelVersion,
    list_models,
    model_artifact,
    promote_model,
    promoted_model,
    register_model,
    rollback_model,
)
from pipelines.storage._runs import finish_run, mark_crashed, recent_runs, start_run
from pipelines.storage._store import DB_URL_ENV, DEFAULT_DB_PATH, Refused, Store, resolve_db_url

__all__ = [
    "DB_URL_ENV",
    "DEFAULT_DB_PATH",
    "DEFAULT_LEASE",
    "DEFAULT_WAIT",
    "LABEL_KINDS",
    "MODEL_STATUSES",
    "PIPELINE_LOCK",
    "POLARITIES",
    "RATING_LABEL_MIN_CHARS",
    "Label",
    "LockHolder",
    "ModelArtifact",
    "ModelVersion",
    "Refused",
    "RunLock",
    "Store",
    "finish_run",
    "force_release",
    "labelled_texts",
    "latest_labels",
    "list_models",
    "mark_crashed",
    "model_artifact",
    "pipeline_lock",
    "promote_model",
    "promoted_model",
    "rating_sentiment",
    "recent_runs",
    "record_labels",
    "record_rating_labels",
    "register_model",
    "resolve_db_url",
    "resolve_external_ids",
    "rollback_model",
    "schema",
    "start_run",
]
