"""Engines that share a DuckDB file between processes: open per transaction, wait when busy.

DuckDB lets one process at a time open a database file (several may open it read-only when no
process writes). A long-lived connection pool would keep the file for the whole run and make
every other command (``feedback status`` during ``feedback run``) fail. So DuckDB engines use no
pool: each ``connect()``/``begin()`` opens the file and closing it lets another process in; a
read-only engine (short commands) keeps its connection until disposed. An open that meets
another process's lock is retried with backoff for ``$FEEDBACK_DB_BUSY_WAIT`` seconds (default
120), then fails with one line (code E060). PostgreSQL engines keep their pool.

Opening a file costs 30-45 ms (DuckDB builds a database instance: its catalog of built-in
functions) but about 1 ms while another connection of the process has it open. A writer keeps
the instance for ``_LINGER`` seconds after each transaction: a burst of transactions with no work
in between (a chunk's saves: ~250 transactions in a nightly of 90 records, 10 s of its 43 s)
opens the file once, and any pause longer than that lets other processes in. ``Store.close``
(``Engine.dispose``) lets go at once.

DuckDB files are opened with ``max_vacuum_tasks = 0``. The checkpoint that closing a connection
runs would otherwise merge the row groups of a table of wide rows (``embeddings``: 1.5 KB a row)
into new ones, holding the whole table in memory while it does: +0.6 GB at 120,000 vectors,
+1.2 GB at 320,000, growing with the database (benchmarks/duckdb_checkpoint_memory.py). Without
it the checkpoint writes only what changed (+80 MB at 320,000). Row groups whose rows were all
deleted are still dropped and their blocks reused, so reanalysing history does not grow the file.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from pipelines._errors import StoreError

__all__ = ["BUSY_WAIT_ENV", "DEFAULT_BUSY_WAIT", "DatabaseUnavailable", "create_store_engine"]

DatabaseUnavailable = OperationalError
"""The database could not be reached or opened mid-run (``.orig``: the driver's error)."""

BUSY_WAIT_ENV = "FEEDBACK_DB_BUSY_WAIT"
DEFAULT_BUSY_WAIT = 120.0
"""Seconds an open waits for another process to release a DuckDB file."""

_FIRST_DELAY = 0.02
_MAX_DELAY = 0.1
_BUSY_SIGNS = ("Could not set lock on file", "Unique file handle conflict")
_HOLDER = re.compile(r"held in (?P<program>\S+) \(PID (?P<pid>\d+)\)")
_DUCKDB_CONFIG = {"max_vacuum_tasks": 0}
_LINGER = 0.05
# DuckDB's Python client shares one database instance between a process's connections to a file
# and registers its pandas scan just after creating it: a thread opening the file while another
# creates or closes that instance could get it without the scan ("Table Function with name
# pandas_scan does not exist" on the next bulk insert) or a file handle conflict. Opens and
# closes of this process are therefore serialised (an open takes ~12 ms). Reentrant: the garbage
# collector may close a connection dropped without ``close`` while this thread opens another.
_INSTANCE_LOCK = threading.RLock()


def _busy_wait() -> float:
    value = os.environ.get(BUSY_WAIT_ENV)
    try:
        return DEFAULT_BUSY_WAIT if value is None else max(0.0, float(value))
    except ValueError:
        return DEFAULT_BUSY_WAIT


def _is_file_lock_conflict(exc: BaseException) -> bool:
    # The second: two threads of this process opening the file at the same instant.
    return any(sign in str(exc) for sign in _BUSY_SIGNS)


def _is_config_conflict(exc: BaseException) -> bool:
    return "different configuration" in str(exc)


def create_store_engine(url: str, read_only: bool = False) -> Engine:
    """An SQLAlchemy engine for ``url``; for DuckDB, unpooled and waiting on busy files.

    Args:
        url: SQLAlchemy URL.
        read_only: Open DuckDB files read-only (several readers may share the file).

    Returns:
        The engine. A DuckDB open still blocked after ``$FEEDBACK_DB_BUSY_WAIT`` seconds
        (default 120) raises ``StoreError`` (code E060).
    """
    if not url.startswith("duckdb"):
        return create_engine(url, future=True)
    # A reader keeps its connection until ``Store.close``: once in, a short command needs no
    # second gap between another process's writes.
    engine = create_engine(
        url,
        future=True,
        connect_args={"config": dict(_DUCKDB_CONFIG)},
        **({} if read_only else {"poolclass": NullPool}),
    )
    keeper = None if read_only else _InstanceKeeper(_LINGER)
    if keeper is not None:
        event.listen(engine, "engine_disposed", lambda _engine: keeper.release())

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
        wait = _busy_wait()
        deadline = time.monotonic() + wait
        delay = _FIRST_DELAY
        while True:
            try:
                with _INSTANCE_LOCK:
                    connection = _open(dialect, cargs, cparams, read_only)
                    if keeper is not None:
                        try:
                            keeper.opened(lambda: _open(dialect, cargs, cparams, read_only))
                        except Exception:
                            connection.close()
                            raise
                return _closing_under_lock(connection, keeper)
            except Exception as exc:
                if not _is_file_lock_conflict(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise _busy_error(url, wait, str(exc)) from None
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _MAX_DELAY)

    return engine


def _closing_under_lock(connection: Any, keeper: _InstanceKeeper | None) -> Any:
    """``connection`` (duckdb_engine's wrapper), its ``close`` taking ``_INSTANCE_LOCK`` and
    telling ``keeper``."""
    close = connection.close

    def close_under_lock() -> None:
        with _INSTANCE_LOCK:
            close()
            if keeper is not None:
                keeper.closed()

    connection.close = close_under_lock
    return connection


class _InstanceKeeper:
    """Holds one extra connection to a DuckDB file while the engine's connections are open and
    for ``linger`` seconds after the last one closed, so that the next open reuses the database
    instance. Every method but ``release`` runs under ``_INSTANCE_LOCK``.

    Args:
        linger: Seconds to keep the file open after the last transaction.
    """

    def __init__(self, linger: float) -> None:
        self._linger = linger
        self._holder: Any = None
        self._open_connections = 0
        self._release_at: float | None = None
        self._wake = threading.Condition(_INSTANCE_LOCK)
        self._releaser: threading.Thread | None = None

    def opened(self, open_holder: Callable[[], Any]) -> None:
        """A connection was opened; ``open_holder`` opens the extra one if none is held."""
        if self._holder is None:
            self._holder = open_holder()
        self._open_connections += 1
        self._release_at = None

    def closed(self) -> None:
        """A connection was closed: the last one starts the linger."""
        self._open_connections -= 1
        if self._open_connections or self._holder is None:
            return
        self._release_at = time.monotonic() + self._linger
        if self._releaser is None:
            self._releaser = threading.Thread(
                target=self._release_when_idle, name="duckdb-linger", daemon=True
            )
            self._releaser.start()
        self._wake.notify()

    def release(self) -> None:
        """Close the extra connection now (the engine is disposed)."""
        with _INSTANCE_LOCK:
            self._close_holder()
            self._wake.notify()

    def _close_holder(self) -> None:
        holder, self._holder, self._release_at = self._holder, None, None
        if holder is not None:
            holder.close()

    def _release_when_idle(self) -> None:
        with _INSTANCE_LOCK:
            while self._holder is not None:
                if self._release_at is None:
                    self._wake.wait()
                    continue
                left = self._release_at - time.monotonic()
                if left <= 0:
                    self._close_holder()
                else:
                    self._wake.wait(left)
            self._releaser = None


def _open(dialect: Any, cargs: tuple[Any, ...], cparams: dict[str, Any], read_only: bool) -> Any:
    if read_only:
        try:
            return dialect.connect(*cargs, **{**cparams, "read_only": True})
        except Exception as exc:
            # This process has the file open read-write already (a flow in another thread).
            if not _is_config_conflict(exc):
                raise
    return dialect.connect(*cargs, **dict(cparams))


def _busy_error(url: str, wait: float, reason: str) -> StoreError:
    holder = _HOLDER.search(reason)
    who = f"process {holder['pid']} ({holder['program']})" if holder else "another process"
    return StoreError(
        f"database {url.removeprefix('duckdb:///')} is busy: {who} kept it open for more than "
        f"{wait:g} s. Wait for that process to end (or stop it), or raise ${BUSY_WAIT_ENV}; "
        "use PostgreSQL to run many processes at once.",
        code="E060",
    )
