"""Durable storage: DuckDB file by default, any SQLAlchemy URL (PostgreSQL) in production."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import pandas as pd
from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from pipelines._errors import StoreError
from pipelines._secrets import mask_credentials
from pipelines.records import storable
from pipelines.storage import schema
from pipelines.storage._connect import create_store_engine

__all__ = ["DB_URL_ENV", "DEFAULT_DB_PATH", "Refused", "Store", "resolve_db_url"]

DEFAULT_DB_PATH = Path("data/feedback.duckdb")
DB_URL_ENV = "FEEDBACK_DB_URL"


def resolve_db_url(db: str | os.PathLike[str] | None = None) -> str:
    """Turn a path or URL (or nothing) into an SQLAlchemy URL.

    Args:
        db: A SQLAlchemy URL (``postgresql+psycopg://...``), a DuckDB file path, or None to use
            ``$FEEDBACK_DB_URL`` and then ``data/feedback.duckdb``.

    Returns:
        The SQLAlchemy URL to connect to.
    """
    value = str(db) if db is not None else os.environ.get(DB_URL_ENV) or str(DEFAULT_DB_PATH)
    if "://" in value:
        return value
    path = Path(value).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"duckdb:///{path}"


def _now() -> datetime:
    return datetime.now(UTC)


def _duckdb_file(url: str) -> Path:
    return Path(url.removeprefix("duckdb:///"))


# Errors that blame the values of a row (too long, out of range, NULL in a NOT NULL column...),
# as opposed to the database being unreachable; DuckDB's come unwrapped from ``_duckdb_insert``.
_ROW_ERRORS = (DataError, IntegrityError, duckdb.DataError, duckdb.IntegrityError)
_QUOTED_OR_VALUE = re.compile(r"'[^']*'|\"[^\"]*\"|(?<=value )\S+")


def _refusal(exc: Exception) -> str:
    """The database's reason for refusing a row, without the row's values (they may be PII)."""
    error = getattr(exc, "orig", None) or exc
    diag = getattr(error, "diag", None)
    if diag is not None and diag.message_primary:
        return f"{diag.sqlstate}: {diag.message_primary}"
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return _QUOTED_OR_VALUE.sub("...", first_line)[:300]


@dataclass(frozen=True)
class Refused:
    """A row the database would not store, with its reason (no data values quoted)."""

    row: Mapping[str, Any]
    reason: str


class Store:
    """Thin facade over the database: schema creation, idempotent upserts and the few queries
    every stage needs.

    A DuckDB file is opened per transaction and let go 50 ms after the last one (see
    ``_connect``), so other processes can use it while this one works.

    Args:
        url: Anything ``resolve_db_url`` accepts.
        read_only: For commands that only read: open an existing DuckDB file read-only, so
            that several of them can read at once.
    """

    def __init__(self, url: str | os.PathLike[str] | None = None, read_only: bool = False) -> None:
        self.url = resolve_db_url(url)
        self.is_duckdb = self.url.startswith("duckdb")
        self.read_only = read_only and self.is_duckdb and _duckdb_file(self.url).exists()
        try:
            self.engine: Engine = create_store_engine(self.url, self.read_only)
            if not self.read_only:
                schema.create_schema(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open database {mask_credentials(repr(self.url))}: "
                f"{mask_credentials(exc)}. Check --db / ${DB_URL_ENV}; for PostgreSQL use "
                "postgresql+psycopg://user:password@host/dbname."
            ) from exc
        # DuckDB allows one writer per process; serialise our writes so threads can share a Store.
        self._write_lock = threading.RLock()

    def close(self) -> None:
        """Release the connection pool (a DuckDB file is already closed between transactions)."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction; commits on success, rolls back on error."""
        with self._write_lock, self.engine.begin() as connection:
            yield connection

    def insert_ignore(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert rows, skipping any whose primary key already exists.

        Args:
            table: Target table.
            rows: Column -> value mappings.

        Returns:
            Number of rows actually inserted.
        """
        if not rows:
            return 0
        keys = [column.name for column in table.primary_key.columns]
        with self.begin() as connection:
            before = connection.execute(select(func.count()).select_from(table)).scalar_one()
            if self.is_duckdb:
                self._duckdb_insert(connection, table, rows, "IGNORE")
            else:
                statement = pg_insert(table).on_conflict_do_nothing(index_elements=keys)
                connection.execute(statement, list(rows))
            after = connection.execute(select(func.count()).select_from(table)).scalar_one()
        return int(after - before)

    def insert_or_refuse(
        self, table: Table, rows: Sequence[Mapping[str, Any]]
    ) -> tuple[int, list[Refused]]:
        """``insert_ignore``, except that rows the database refuses do not fail the others.

        A refused batch is split in halves until the refused rows are alone, so a batch with
        ``k`` bad rows among ``n`` costs about ``2 k log2(n)`` extra inserts.

        Args:
            table: Target table.
            rows: Column -> value mappings.

        Returns:
            Rows inserted, and the rows refused with the database's reason.
        """
        try:
            return self.insert_ignore(table, rows), []
        except _ROW_ERRORS as exc:
            if len(rows) == 1:
                return 0, [Refused(rows[0], _refusal(exc))]
        middle = len(rows) // 2
        first, first_refused = self.insert_or_refuse(table, rows[:middle])
        second, second_refused = self.insert_or_refuse(table, rows[middle:])
        return first + second, first_refused + second_refused

    def upsert(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows, replacing the non-key columns of rows whose primary key exists.

        Args:
            table: Target table.
            rows: Column -> value mappings; every row must carry the same columns.
        """
        if not rows:
            return
        if self.is_duckdb:
            with self.begin() as connection:
                self._duckdb_insert(connection, table, rows, "REPLACE")
            return
        keys = [column.name for column in table.primary_key.columns]
        statement = pg_insert(table)
        updates = {name: statement.excluded[name] for name in rows[0] if name not in keys}
        if updates:
            statement = statement.on_conflict_do_update(index_elements=keys, set_=updates)
        else:
            statement = statement.on_conflict_do_nothing(index_elements=keys)
        with self.begin() as connection:
            connection.execute(statement, list(rows))

    @staticmethod
    def _duckdb_insert(
        connection: Connection,
        table: Table,
        rows: Sequence[Mapping[str, Any]],
        on_conflict: Literal["IGNORE", "REPLACE"],
    ) -> None:
        """One ``INSERT OR IGNORE/REPLACE ... SELECT`` from a registered DataFrame.

        SQLAlchemy's executemany costs ~3 ms a row on DuckDB (a minute for 20,000 records);
        this takes milliseconds. Object dtype keeps None as NULL instead of NaN.
        """
        names = [column.name for column in table.columns if column.name in rows[0]]
        frame = pd.DataFrame(
            [[row.get(name) for name in names] for row in rows], columns=names, dtype=object
        )
        for column in table.columns:
            if column.name in names and isinstance(column.type, schema.JSONText):
                frame[column.name] = [
                    None
                    if value is None
                    else json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
                    for value in frame[column.name]
                ]
        view = f"incoming_{uuid.uuid4().hex}"
        quoted = ", ".join(f'"{name}"' for name in names)
        duck = connection.connection.driver_connection
        duck.register(view, frame)
        try:
            target = f'"{table.name}" ({quoted})'
            duck.execute(f"INSERT OR {on_conflict} INTO {target} SELECT {quoted} FROM {view}")
        finally:
            # After a refused row DuckDB allows nothing but ROLLBACK; the view goes with the
            # connection then.
            with suppress(duckdb.TransactionException):
                duck.unregister(view)

    def existing_ids(self, table: Table, column: str, values: Iterable[str]) -> set[str]:
        """Which of ``values`` are already present in ``table.column``."""
        wanted = list(dict.fromkeys(values))
        found: set[str] = set()
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), 1000):
                chunk = wanted[start : start + 1000]
                result = connection.execute(
                    select(table.c[column]).where(table.c[column].in_(chunk))
                )
                found.update(row[0] for row in result)
        return found

    def get_watermark(self, source: str) -> str | None:
        """The last watermark stored for ``source`` (ISO timestamp or cursor), if any."""
        table = schema.watermarks
        with self.engine.connect() as connection:
            return connection.execute(
                select(table.c.value).where(table.c.source == source)
            ).scalar_one_or_none()

    def set_watermark(self, source: str, value: str) -> None:
        """Store the watermark a later incremental run of ``source`` resumes from."""
        self.upsert(schema.watermarks, [{"source": source, "value": value, "updated_at": _now()}])

    def quarantine(
        self, source: str, run_id: str, rows: Iterable[tuple[str, str, str | None]]
    ) -> int:
        """Park malformed rows with the reason they were rejected.

        Args:
            source: Source name.
            run_id: Current run.
            rows: ``(raw_row_text, reason, detail)`` triples; characters a database refuses
                (NUL...) are removed first.

        Returns:
            Number of rows newly quarantined (a row quarantined by an earlier run is not repeated).
        """
        records = [
            {
                "id": hashlib.sha256(f"{source}\x1f{reason}\x1f{raw}".encode()).hexdigest()[:32],
                "source": source,
                "run_id": run_id,
                "reason": reason,
                "detail": detail,
                "raw": raw,
                "created_at": _now(),
            }
            for raw, reason, detail in (storable(row) for row in rows)
        ]
        return self.insert_ignore(schema.quarantine, records)

    def count(self, table: Table, **equals: Any) -> int:
        """Row count of ``table``, optionally filtered by column equality."""
        query = select(func.count()).select_from(table)
        for name, value in equals.items():
            query = query.where(table.c[name] == value)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())
