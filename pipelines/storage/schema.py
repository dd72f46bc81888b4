"""SQLAlchemy Core schema: one ``MetaData`` for every table the pipeline writes.

JSON is stored as text (``JSONText``) so the same schema works on DuckDB and PostgreSQL. Free text
(author, product, store...) is unbounded ``Text``; only ids and codes are bounded.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeDecorator

__all__ = [
    "JSONText",
    "alert_assignments",
    "alert_deliveries",
    "alerts",
    "aspects",
    "create_schema",
    "embeddings",
    "feedback",
    "flags",
    "labels",
    "login_attempts",
    "metadata",
    "model_versions",
    "quarantine",
    "quarantine_replays",
    "record_topics",
    "run_locks",
    "run_source_counts",
    "runs",
    "sentiment",
    "stage_results",
    "topic_labels",
    "topic_models",
    "topics",
    "triage_events",
    "watermarks",
]


class JSONText(TypeDecorator[Any]):
    """JSON value serialised to a TEXT column (portable across DuckDB and PostgreSQL)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


metadata = MetaData()

feedback = Table(
    "feedback",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("source", String(100), nullable=False, index=True),
    Column("channel", String(16), nullable=False),
    Column("external_id", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("text", Text, nullable=False, comment="normalized, PII-redacted analysis text"),
    Column("title", Text),
    Column("rating", Integer),
    Column("nps", Integer),
    Column("customer_id", String(200)),
    Column("customer_value", Float),
    Column("author", Text),
    Column("author_followers", Integer),
    Column("platform", Text),
    Column("url", Text),
    Column("product", Text),
    Column("store", Text),
    Column("metadata", JSONText),
    Column("raw", JSONText, comment="configured columns of the source row, redacted"),
    Column("text_hash", String(32), nullable=False, comment="hash of the analysis text"),
    Column("pii_counts", JSONText),
    Column("lang", String(8)),
    Column("lang_confidence", Float),
    Column("duplicate_of", String(32), comment="set for copy-paste duplicates of another record"),
    Column("run_id", String(36), nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("flow", String(50), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(20), nullable=False),
    Column("parameters", JSONText),
    Column("counts", JSONText),
    Column("model_versions", JSONText),
    Column("message", Text),
)

run_source_counts = Table(
    "run_source_counts",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("source", String(100), primary_key=True),
    Column("read", Integer, nullable=False),
    Column("stored", Integer, nullable=False),
    Column("duplicates", Integer, nullable=False),
    Column("quarantined", Integer, nullable=False),
    Column("skipped", Integer, nullable=False, server_default="0"),
    Column("skip_reasons", JSONText, comment="reason -> rows skipped on purpose"),
)

watermarks = Table(
    "watermarks",
    metadata,
    Column("source", String(100), primary_key=True),
    Column("value", Text, nullable=False, comment="ISO timestamp or API cursor"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", String(32), primary_key=True, comment="hash of source, reason and raw row"),
    Column("source", String(100), nullable=False, index=True),
    Column("run_id", String(36), nullable=False),
    Column("reason", String(50), nullable=False),
    Column("detail", Text),
    Column("raw", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

embeddings = Table(
    "embeddings",
    metadata,
    Column("model_version", String(100), primary_key=True),
    Column("text_hash", String(32), primary_key=True),
    Column("vector", LargeBinary, nullable=False, comment="float32 little-endian"),
)

sentiment = Table(
    "sentiment",
    metadata,
    Column("record_id", String(32), primary_key=True),
    Column("model_version", String(100), primary_key=True),
    Column("label", String(10), nullable=False),
    Column("negative", Float, nullable=False),
    Column("neutral", Float, nullable=False),
    Column("positive", Float, nullable=False),
    Column("sentences", JSONText),
    Column("run_id", String(36), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

flags = Table(
    "flags",
    metadata,
    Column("record_id", String(32), primary_key=True),
    Column("rules_version", String(100), primary_key=True),
    Column("flagged", Boolean, nullable=False),
    Column("priority", String(2), comment="P1/P2/P3; NULL when not flagged"),
    Column("points", Integer, nullable=False),
    Column("reasons", JSONText, nullable=False, comment="list of human-readable reasons"),
    Column("churn_intent", Boolean, nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("record_id", String(32), primary_key=True),
    Column("route", String(100), primary_key=True),
    Column("kind", String(10), primary_key=True, comment="p1 (one mail) or digest"),
    Column("alert_id", String(16), nullable=False, comment="short id for the CLI"),
    Column("priority", String(2), nullable=False),
    Column("recipients", JSONText, nullable=False),
    Column("status", String(10), nullable=False, comment="pending, sending, sent or failed"),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("generation", Integer, nullable=False, comment="times re-armed with resend"),
    Column("payload", JSONText, nullable=False, comment="redacted record snapshot for the mail"),
    Column("sla_hours", Float, nullable=False),
    Column("respond_by", DateTime(timezone=True), nullable=False),
    Column("message_id", String(250)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("claimed_at", DateTime(timezone=True)),
    Column("sent_at", DateTime(timezone=True)),
    Column("acked_at", DateTime(timezone=True)),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolution", Text),
)

alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("alert_id", String(16), primary_key=True),
    Column("recipient", Text, primary_key=True),
    Column("status", String(10), nullable=False, index=True, comment="pending/sending/sent/failed"),
    Column("attempts", Integer, nullable=False),
    Column("last_code", Integer, comment="SMTP reply code of the last failed attempt"),
    Column("last_reply", Text, comment="SMTP reply text, or connection error, of that attempt"),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("claimed_at", DateTime(timezone=True)),
    Column("claim", String(32), comment="token of the delivery run holding the claim"),
    Column("sent_at", DateTime(timezone=True)),
    Column("message_id", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    comment="one row per alert and recipient; the alert is sent when every recipient accepted",
)

aspects = Table(
    "aspects",
    metadata,
    Column("record_id", String(32), primary_key=True),
    Column("aspect", String(64), primary_key=True),
    Column("model_version", String(100), primary_key=True),
    Column("polarity", String(10), nullable=False, comment="negative, neutral or positive"),
    Column("score", Float, nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

topic_models = Table(
    "topic_models",
    metadata,
    Column("version", String(100), primary_key=True),
    Column("encoder_version", String(100), nullable=False),
    Column("fitted_at", DateTime(timezone=True), nullable=False, index=True),
    Column("meta", JSONText, nullable=False, comment="topic ids, keywords, sizes, settings"),
    Column("arrays", LargeBinary, nullable=False, comment="safetensors: centroids, language means"),
)

topics = Table(
    "topics",
    metadata,
    Column("model_version", String(100), primary_key=True),
    Column("topic_id", Integer, primary_key=True, comment="stable across refits; -1 unassigned"),
    Column("keywords", JSONText, nullable=False),
    Column("size", Integer, nullable=False, comment="records in the fitting window"),
    Column("auto_label", Text, nullable=False),
)

topic_labels = Table(
    "topic_labels",
    metadata,
    Column("topic_id", Integer, primary_key=True, autoincrement=False),
    Column("label", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

record_topics = Table(
    "record_topics",
    metadata,
    Column("record_id", String(32), primary_key=True),
    Column("model_version", String(100), primary_key=True),
    Column("topic_id", Integer, nullable=False, index=True),
    Column("similarity", Float, nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

stage_results = Table(
    "stage_results",
    metadata,
    Column("record_id", String(32), primary_key=True),
    Column("stage", String(50), primary_key=True),
    Column("version", String(100), primary_key=True, comment="stage code + model version"),
    Column("run_id", String(36), nullable=False, comment="run that last saved the results"),
    Column("saved_at", DateTime(timezone=True), nullable=False),
    comment="which records each stage version has analysed and saved; drives reruns",
)

run_locks = Table(
    "run_locks",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("owner", String(36), nullable=False, comment="run id holding the lock"),
    Column("flow", String(50), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, comment="lease end; renewed"),
    Column("holder", Text, nullable=True, comment="host:pid:start of the process holding it"),
)


labels = Table(
    "labels",
    metadata,
    Column("label_id", String(32), primary_key=True, comment="hash of record, kind, who, when"),
    Column("record_id", String(32), nullable=False, index=True),
    Column("sentiment", String(10), comment="negative, neutral or positive; NULL: not given"),
    Column("aspects", JSONText, comment="aspect -> polarity; NULL: not given"),
    Column("not_complaint", Boolean, nullable=False, comment="a person said: not a complaint"),
    Column("kind", String(10), nullable=False, comment="human, rating or nps"),
    Column("labelled_by", Text, comment="who gave a human label (lead, analyst, import file)"),
    Column("note", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    comment="labels for training: the newest human label of a record wins over weak ones",
)

quarantine_replays = Table(
    "quarantine_replays",
    metadata,
    Column("quarantine_id", String(32), primary_key=True),
    Column("outcome", String(20), nullable=False, comment="replayed or still_quarantined"),
    Column("record_ids", JSONText, comment="records the row became (replayed)"),
    Column("reason", String(50), comment="why it is still quarantined"),
    Column("detail", Text),
    Column("run_id", String(36), nullable=False, comment="the replay run"),
    Column("replayed_at", DateTime(timezone=True), nullable=False),
    comment="latest replay of each quarantined row; a replayed row is never replayed again",
)

triage_events = Table(
    "triage_events",
    metadata,
    Column("event_id", String(32), primary_key=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", Text, nullable=False, comment="lead address, or cli:<user>"),
    Column("action", String(20), nullable=False, comment="signin, ack, assign, resolve, label..."),
    Column("alert_id", String(16), index=True),
    Column("record_id", String(32)),
    Column("note", Text),
    Column("detail", JSONText),
    comment="audit log of every triage action (web page and CLI); an alert's history",
)

alert_assignments = Table(
    "alert_assignments",
    metadata,
    Column("alert_id", String(16), primary_key=True),
    Column("assignee", Text, nullable=False, comment="lead address the alert is assigned to"),
    Column("assigned_by", Text, nullable=False),
    Column("assigned_at", DateTime(timezone=True), nullable=False),
)

login_attempts = Table(
    "login_attempts",
    metadata,
    Column("attempt_id", String(32), primary_key=True),
    Column("key", String(64), nullable=False, index=True, comment="keyed hash: address or client"),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    comment="sign-in link requests, for rate limiting (no address kept in clear)",
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("version", String(100), primary_key=True, comment="the head's version"),
    Column("kind", String(20), nullable=False, index=True, comment="sentiment"),
    Column("status", String(12), nullable=False, comment="candidate, promoted or retired"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("promoted_at", DateTime(timezone=True), comment="last promotion; kept when retired"),
    Column("parent_version", String(100), comment="model in use when it was trained"),
    Column("metrics", JSONText, nullable=False, comment="dev, held-back and gate figures"),
    Column("head_metadata", JSONText, nullable=False, comment="the head's JSON metadata"),
    Column("weights", LargeBinary, nullable=False, comment="head weights, safetensors bytes"),
    comment="models trained from the store's labels; the promoted one is used for analysis",
)

# Arbitrary constant: the PostgreSQL advisory lock that serialises schema creation.
_SCHEMA_LOCK_KEY = 0x46454544_0001
_duckdb_schema_lock = threading.Lock()


def create_schema(engine: Engine) -> None:
    """Create the missing tables, safely when several processes do it at once.

    On PostgreSQL, ``create_all`` runs in one transaction under a transaction-scoped advisory
    lock (two first runs at once would otherwise both try to create the same tables), and free
    text columns an older schema made ``VARCHAR(n)`` are widened to ``TEXT``. A DuckDB file has
    one writing process at a time, but threads of that process (a flow and a helper watching
    it) would conflict on the catalog: they create the tables one at a time.

    Args:
        engine: The database.
    """
    if engine.dialect.name != "postgresql":
        with _duckdb_schema_lock, engine.begin() as connection:
            metadata.create_all(connection)
        return
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        metadata.create_all(connection)
        _widen_text_columns(connection)


def _widen_text_columns(connection: Connection) -> None:
    bounded = connection.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND data_type = 'character varying'"
        )
    ).all()
    for table_name, column_name in bounded:
        table = metadata.tables.get(table_name)
        if table is None or column_name not in table.c:
            continue
        column_type = table.c[column_name].type
        if isinstance(column_type, Text | JSONText):
            connection.execute(
                text(f'ALTER TABLE "{table_name}" ALTER COLUMN "{column_name}" TYPE TEXT')
            )
