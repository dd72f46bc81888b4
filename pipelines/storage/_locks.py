"""A run lock in the database, so that two flows (nightly + rerun) never write at the same time.

The lock is one row of ``run_locks`` (name, owner run id, lease end). Taking it is a single
``INSERT ... ON CONFLICT DO NOTHING``, atomic on DuckDB and PostgreSQL alike, so it works between
threads, processes and machines sharing the database. The holder renews the lease between steps;
a run that died without releasing it blocks others only until its lease ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pipelines._errors import StoreError
from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_WAIT",
    "PIPELINE_LOCK",
    "LockHolder",
    "RunLock",
    "pipeline_lock",
]

PIPELINE_LOCK = "pipeline"
DEFAULT_LEASE = timedelta(hours=1)
DEFAULT_WAIT = timedelta(hours=2)
_POLL_SECONDS = 0.5


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class LockHolder:
    """Who holds a lock and until when (as read from ``run_locks``).

    Args:
        owner: Run id of the holder.
        flow: Flow name of the holder.
        expires_at: End of the holder's lease (UTC).
    """

    def __init__(self, owner: str, flow: str, expires_at: datetime) -> None:
        self.owner = owner
        self.flow = flow
        self.expires_at = _utc(expires_at)


class RunLock:
    """One named lock taken by one run.

    Args:
        store: The database holding ``run_locks``.
        owner: Run id taking the lock.
        flow: Flow name, shown to runs that wait.
        name: Lock name; every writing flow uses ``PIPELINE_LOCK``.
        lease: How long the lock stays valid without ``renew``.
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

    def holder(self) -> LockHolder | None:
        """The current holder, or None when the lock is free."""
        table = schema.run_locks
        query = select(table.c.owner, table.c.flow, table.c.expires_at).where(
            table.c.name == self.name
        )
        with self.store.engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        return None if row is None else LockHolder(row.owner, row.flow, row.expires_at)

    def try_acquire(self) -> bool:
        """Take the lock if it is free, expired or already ours.

        Returns:
            Whether this run holds the lock now.
        """
        table = schema.run_locks
        now = _now()
        with self.store.begin() as connection:
            connection.execute(
                delete(table).where(table.c.name == self.name, table.c.expires_at < now)
            )
            connection.execute(
                pg_insert(table)
                .values(
                    name=self.name,
                    owner=self.owner,
                    flow=self.flow,
                    acquired_at=now,
                    expires_at=now + self.lease,
                )
                .on_conflict_do_nothing(index_elements=["name"])
            )
            owner = connection.execute(
                select(table.c.owner).where(table.c.name == self.name)
            ).scalar_one_or_none()
        return owner == self.owner

    def acquire(
        self,
        wait: timedelta = DEFAULT_WAIT,
        on_wait: Callable[[LockHolder], None] | None = None,
    ) -> None:
        """Take the lock, waiting while another run holds it.

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
                    f"{holder.expires_at:%Y-%m-%d %H:%M} UTC"
                    if holder is not None
                    else "another run"
                )
                raise StoreError(
                    f"the {self.name!r} run lock is held by {who}; waited "
                    f"{wait.total_seconds():.0f} s. Wait for that run to finish (see `feedback "
                    "status`), or, if it died, for its lease to end, then start this run again.",
                    code="E022",
                )
            time.sleep(_POLL_SECONDS)

    def renew(self) -> None:
        """Extend the lease of a lock this run holds.

        Raises:
            StoreError: The lock is no longer ours (its lease ended and another run took it).
        """
        table = schema.run_locks
        with self.store.begin() as connection:
            renewed = connection.execute(
                update(table)
                .where(and_(table.c.name == self.name, table.c.owner == self.owner))
                .values(expires_at=_now() + self.lease)
            ).rowcount
        if not renewed:
            raise StoreError(
                f"run {self.owner} lost the {self.name!r} run lock (its lease of "
                f"{self.lease} ended while it worked). Rerun it; results already saved are "
                "kept and nothing is stored twice.",
                code="E022",
            )

    def release(self) -> None:
        """Give the lock back (a no-op when another run holds it)."""
        table = schema.run_locks
        with self.store.begin() as connection:
            connection.execute(
                delete(table).where(table.c.name == self.name, table.c.owner == self.owner)
            )


@contextmanager
def pipeline_lock(
    store: Store,
    owner: str,
    flow: str,
    wait: timedelta = DEFAULT_WAIT,
    on_wait: Callable[[LockHolder], None] | None = None,
) -> Iterator[RunLock]:
    """Hold the pipeline's run lock for the ``with`` block; released even on error.

    Args:
        store: The database.
        owner: Run id taking the lock.
        flow: Flow name.
        wait: Longest time to wait for another run to finish.
        on_wait: Called once with the holder if this run has to wait.

    Yields:
        The held lock (call ``renew`` between long steps).

    Raises:
        StoreError: The lock could not be taken within ``wait`` (code E022).
    """
    lock = RunLock(store, owner, flow)
    lock.acquire(wait, on_wait)
    try:
        yield lock
    finally:
        lock.release()
