"""A run lock in the database, so that two flows (nightly + rerun) never write at the same time.

The lock is one row of ``run_locks`` (name, owner run id, lease end, holding process). Taking it
is a single ``INSERT ... ON CONFLICT DO NOTHING``, atomic on DuckDB and PostgreSQL alike, so it
works between threads, processes and machines sharing the database.

A crashed holder never blocks the pipeline for long: the lease is short (60 s) and a heartbeat
thread renews it while the holding process lives, so the lock of a killed run frees itself
within a lease; on the same machine it is taken over at once, since the holder's process is
seen to be gone. Whoever takes the pipeline lock marks runs left ``running`` as ``crashed``
(a run is ``running`` only while it holds the lock). ``force_release`` (``feedback unlock``)
frees the lock of a dead holder by hand and refuses while the holder is alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pipelines._errors import StoreError
from pipelines.storage import schema
from pipelines.storage._runs import mark_crashed
from pipelines.storage._store import Store

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_WAIT",
    "PIPELINE_LOCK",
    "LockHolder",
    "RunLock",
    "force_release",
    "pipeline_lock",
]

PIPELINE_LOCK = "pipeline"
DEFAULT_LEASE = timedelta(seconds=60)
DEFAULT_WAIT = timedelta(hours=2)
_POLL_SECONDS = 0.5
_BEATS_PER_LEASE = 4
_CRASHED = "crashed: its process ended without finishing the run (killed or lost)"

logger = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _this_process() -> str:
    """``host:pid:start`` of this process; the start time tells a reused pid apart."""
    stat = _proc_stat(os.getpid()) if Path("/proc/self/stat").exists() else None
    return f"{socket.gethostname()}:{os.getpid()}:{stat[19] if stat else ''}"


def _process_alive(process: str | None) -> bool | None:
    """Whether the process ``host:pid:start`` still runs.

    Args:
        process: As written in ``run_locks.holder``.

    Returns:
        True or False for a process of this machine; None when this machine cannot tell (the
        process runs on another host, or the lock was written by an older version).
    """
    host, _, rest = (process or "").partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X") and (not start or stat[19] == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockHolder:
    """Who holds a lock and until when (as read from ``run_locks``).

    Args:
        owner: Run id of the holder.
        flow: Flow name of the holder.
        expires_at: End of the holder's lease (UTC).
        process: ``host:pid:start`` of the holding process (None if unknown).
    """

    def __init__(
        self, owner: str, flow: str, expires_at: datetime, process: str | None = None
    ) -> None:
        self.owner = owner
        self.flow = flow
        self.expires_at = _utc(expires_at)
        self.process = process

    def alive(self) -> bool:
        """Whether the holder may still be working: its process runs, or (when this machine
        cannot see it) its lease is still being renewed."""
        running = _process_alive(self.process)
        return running if running is not None else self.expires_at > _now()

    def describe(self) -> str:
        """E.g. ``run 0f3c... (nightly, process 123 on host-a)``."""
        host, _, rest = (self.process or "").partition(":")
        where = f", process {rest.partition(':')[0]} on {host}" if host else ""
        return f"run {self.owner} ({self.flow}{where})"


_UPGRADED: set[str] = set()
_UPGRADE_LOCK = threading.Lock()


def _add_holder_column(store: Store) -> None:
    """Add ``run_locks.holder`` to a database created by an older version (once per process)."""
    with _UPGRADE_LOCK:
        if store.url in _UPGRADED or store.read_only:
            return
        with store.begin() as connection:
            columns = connection.execute(text("SELECT * FROM run_locks LIMIT 0")).keys()
            if "holder" not in columns:
                connection.execute(
                    text("ALTER TABLE run_locks ADD COLUMN IF NOT EXISTS holder TEXT")
                )
        _UPGRADED.add(store.url)


class RunLock:
    """One named lock taken by one run.

    While held, a daemon thread renews the lease every quarter lease, so the lock outlives no
    holder by more than ``lease``.

    Args:
        store: The database holding ``run_locks``.
        owner: Run id taking the lock.
        flow: Flow name, shown to runs that wait.
        name: Lock name; every writing flow uses ``PIPELINE_LOCK``.
        lease: How long the lock stays valid without a renewal.
    """

    def __init__(
        self,
        store: Store,
        owner: str,
        flow: str,
        name: str = PIPELINE_LOCK,
        lease: timedelta = DEFAULT_LEASE,
    ) -> None:
        self.store = store
        self.owner = owner
        self.flow = flow
        self.name = name
        self.lease = lease
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()
        self._lost = False
        self.crashed_runs: list[str] = []
        """Runs this lock marked ``crashed`` when it was taken (to notify about them)."""
        _add_holder_column(store)

    def holder(self) -> LockHolder | None:
        """The current holder, or None when the lock is free."""
        table = schema.run_locks
        query = select(table.c.owner, table.c.flow, table.c.expires_at, table.c.holder).where(
            table.c.name == self.name
        )
        with self.store.engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        return None if row is None else LockHolder(*row)

    def try_acquire(self) -> bool:
        """Take the lock if it is free, ours, expired, or held by a process that is gone.

        Taking the pipeline lock marks runs left ``running`` by dead processes ``crashed``.

        Returns:
            Whether this run holds the lock now.
        """
        table = schema.run_locks
        now = _now()
        with self.store.begin() as connection:
            row = connection.execute(
                select(table.c.owner, table.c.flow, table.c.expires_at, table.c.holder).where(
                    table.c.name == self.name
                )
            ).one_or_none()
            if row is not None and row.owner != self.owner:
                stale = LockHolder(*row)
                if stale.expires_at < now or _process_alive(stale.process) is False:
                    connection.execute(
                        delete(table).where(table.c.name == self.name, table.c.owner == row.owner)
                    )
            connection.execute(
                pg_insert(table)
                .values(
                    name=self.name,
                    owner=self.owner,
                    flow=self.flow,
                    acquired_at=now,
                    expires_at=now + self.lease,
                    holder=_this_process(),
                )
                .on_conflict_do_nothing(index_elements=["name"])
            )
            owner = connection.execute(
                select(table.c.owner).where(table.c.name == self.name)
            ).scalar_one_or_none()
        if owner != self.owner:
            return False
        if self.name == PIPELINE_LOCK:
            crashed = mark_crashed(self.store, _CRASHED, keep=self.owner)
            self.crashed_runs = crashed
            if crashed:
                logger.warning("marked run(s) %s crashed", ", ".join(crashed))
        self._start_heartbeat()
        return True

    def acquire(
        self,
        wait: timedelta = DEFAULT_WAIT,
        on_wait: Callable[[LockHolder], None] | None = None,
    ) -> None:
        """Take the lock, waiting while another live run holds it.

        The database is not held while waiting (a DuckDB file stays usable by others).

        Args:
            wait: Longest time to wait for the other run.
            on_wait: Called once with the holder when this run has to wait (for a log line).

        Raises:
            StoreError: The lock was still held by another run after ``wait`` (code E022).
        """
        deadline = time.monotonic() + wait.total_seconds()
        told = False
        while not self.try_acquire():
            holder = self.holder()
            if holder is not None and not told and on_wait is not None:
                on_wait(holder)
                told = True
            if time.monotonic() >= deadline:
                who = (
                    f"run {holder.owner} ({holder.flow}), lease until "
                    f"{holder.expires_at:%Y-%m-%d %H:%M:%S} UTC"
                    if holder is not None
                    else "another run"
                )
                raise StoreError(
                    f"the {self.name!r} run lock is held by {who}; waited "
                    f"{wait.total_seconds():.0f} s. Wait for that run to finish (see `feedback "
                    "status`); if its process is gone, `feedback unlock` frees the lock.",
                    code="E022",
                )
            time.sleep(_POLL_SECONDS)

    def _extend(self) -> bool:
        table = schema.run_locks
        with self.store.begin() as connection:
            return bool(
                connection.execute(
                    update(table)
                    .where(and_(table.c.name == self.name, table.c.owner == self.owner))
                    .values(expires_at=_now() + self.lease)
                ).rowcount
            )

    def renew(self) -> None:
        """Extend the lease now (the heartbeat also does) and check the lock is still ours.

        Raises:
            StoreError: The lock is no longer ours (its lease ended and another run took it).
        """
        if self._lost or not self._extend():
            self._lost = True
            raise StoreError(
                f"run {self.owner} lost the {self.name!r} run lock (its lease of "
                f"{self.lease} ended while it worked). Rerun it; results already saved are "
                "kept and nothing is stored twice.",
                code="E022",
            )

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None or self.lease <= timedelta(0):
            return
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"run-lock-heartbeat-{self.owner}", daemon=True
        )
        self._heartbeat.start()

    def _beat(self) -> None:
        interval = self.lease.total_seconds() / _BEATS_PER_LEASE
        while not self._stop.wait(interval):
            try:
                if not self._extend():
                    self._lost = True
                    return
            except Exception as exc:  # a busy or unreachable database: the next beat retries
                logger.warning("could not renew the %r run lock: %s", self.name, exc)

    def release(self) -> None:
        """Stop the heartbeat and give the lock back (a no-op when another run holds it)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        table = schema.run_locks
        with self.store.begin() as connection:
            connection.execute(
                delete(table).where(table.c.name == self.name, table.c.owner == self.owner)
            )


def force_release(store: Store, name: str = PIPELINE_LOCK) -> tuple[LockHolder | None, list[str]]:
    """Free a lock whose holder died (``feedback unlock``) and mark its run ``crashed``.

    Args:
        store: The database.
        name: Lock name.

    Returns:
        The holder removed (None when the lock was free) and the runs marked crashed.

    Raises:
        StoreError: The holder is alive (code E027): its process runs on this machine, or,
            on another machine, its lease is still being renewed.
    """
    lock = RunLock(store, "unlock", "unlock", name=name)
    holder = lock.holder()
    if holder is None:
        return None, mark_crashed(store, _CRASHED)
    if holder.alive():
        raise StoreError(
            f"the {name!r} run lock is held by {holder.describe()}, which is alive (lease "
            f"until {holder.expires_at:%H:%M:%S} UTC). Let it finish, or stop that process "
            "first; a dead holder's lease ends within a minute anyway.",
            code="E027",
        )
    table = schema.run_locks
    with store.begin() as connection:
        connection.execute(delete(table).where(table.c.name == name, table.c.owner == holder.owner))
    return holder, mark_crashed(store, _CRASHED)


_HELD: dict[tuple[str, str, str], RunLock] = {}
_HELD_LOCK = threading.Lock()


@contextmanager
def pipeline_lock(
    store: Store,
    owner: str,
    flow: str,
    wait: timedelta = DEFAULT_WAIT,
    on_wait: Callable[[LockHolder], None] | None = None,
) -> Iterator[RunLock]:
    """Hold the pipeline's run lock for the ``with`` block; released even on error.

    Re-entrant per run: inside a ``pipeline_lock`` of the same run (``recorded_run`` holds one
    for the whole run), it yields the held lock and leaves releasing it to the outer block.

    Args:
        store: The database.
        owner: Run id taking the lock.
        flow: Flow name.
        wait: Longest time to wait for another run to finish.
        on_wait: Called once with the holder if this run has to wait.

    Yields:
        The held lock (renewed by its heartbeat; ``renew`` checks it is still ours).

    Raises:
        StoreError: The lock could not be taken within ``wait`` (code E022).
    """
    key = (store.url, PIPELINE_LOCK, owner)
    with _HELD_LOCK:
        held = _HELD.get(key)
    if held is not None:
        yield held
        return
    lock = RunLock(store, owner, flow)
    lock.acquire(wait, on_wait)
    with _HELD_LOCK:
        _HELD[key] = lock
    try:
        yield lock
    finally:
        with _HELD_LOCK:
            _HELD.pop(key, None)
        lock.release()
