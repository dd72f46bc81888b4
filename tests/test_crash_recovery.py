"""A run killed with ``kill -9`` (real subprocesses) blocks nothing: its lock is taken over at
once on the same machine, its run is marked crashed, ``feedback unlock`` refuses a live holder,
and Prefect's temporary server dies with the killed CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from flows.cli import app
from pipelines.storage import LockHolder, RunLock, Store, schema

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

HOLD_LOCK = """
import sys, time
from pipelines.storage import RunLock, Store, start_run
store = Store(sys.argv[1])
RunLock(store, "dead-run", "nightly").acquire()
start_run(store, "dead-run", "nightly", {})
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def lock_holder(db_url: str) -> Iterator[subprocess.Popen[str]]:
    """A real process holding the pipeline lock for run ``dead-run`` (marked running)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, db_url],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def _status(store: Store, run_id: str) -> str:
    with store.engine.connect() as connection:
        return connection.execute(
            select(schema.runs.c.status).where(schema.runs.c.run_id == run_id)
        ).scalar_one()


def test_lock_of_a_killed_run_is_taken_at_once_and_the_run_marked_crashed(
    db_url: str, lock_holder: subprocess.Popen[str]
) -> None:
    store = Store(db_url)
    assert not RunLock(store, "next-run", "nightly").try_acquire()  # alive: waits
    lock_holder.send_signal(signal.SIGKILL)
    lock_holder.wait()

    started = time.monotonic()
    lock = RunLock(store, "next-run", "nightly")
    lock.acquire(wait=timedelta(seconds=20))
    assert time.monotonic() - started < 5
    assert _status(store, "dead-run") == "crashed"
    lock.release()


def test_unlock_refuses_a_live_holder_and_frees_a_dead_one(
    db_url: str, lock_holder: subprocess.Popen[str]
) -> None:
    refused = CliRunner().invoke(app, ["unlock", "--db", db_url])
    assert refused.exit_code == 1
    assert "[E027]" in refused.output and f"process {lock_holder.pid}" in refused.output
    assert "Traceback" not in refused.output
    store = Store(db_url)
    assert _status(store, "dead-run") == "running"

    lock_holder.send_signal(signal.SIGKILL)
    lock_holder.wait()
    freed = CliRunner().invoke(app, ["unlock", "--db", db_url])
    assert freed.exit_code == 0, freed.output
    assert "run dead-run (nightly" in freed.output and "Marked crashed: dead-run" in freed.output
    assert RunLock(store, "next-run", "nightly").holder() is None
    assert _status(store, "dead-run") == "crashed"


def test_heartbeat_keeps_a_short_lease_alive_while_the_holder_lives(store: Store) -> None:
    holder = RunLock(store, "run-a", "nightly", lease=timedelta(seconds=1))
    assert holder.try_acquire()
    time.sleep(2.5)  # more than two leases: only the heartbeat kept it
    assert not RunLock(store, "run-b", "rerun").try_acquire()
    holder.release()
    other = RunLock(store, "run-b", "rerun")
    assert other.try_acquire()
    other.release()


def test_holder_on_another_machine_is_alive_while_its_lease_runs() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=30)
    past = datetime.now(UTC) - timedelta(seconds=1)
    assert LockHolder("r", "nightly", soon, "other-host:1:1").alive()
    assert not LockHolder("r", "nightly", past, "other-host:1:1").alive()
    assert not LockHolder("r", "nightly", soon, f"{os.uname().nodename}:999999999:1").alive()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_prefect_temporary_server_dies_with_a_killed_cli(tmp_path: Path) -> None:
    env = {key: value for key, value in ENV.items() if key != "PREFECT_API_URL"}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    (tmp_path / "configs").mkdir()
    (tmp_path / "reviews.csv").write_text("id,at,body\n1,2026-11-01T10:00:00,Fine\n")
    (tmp_path / "configs" / "sources.yaml").write_text(
        f"data_dir: {tmp_path}\nsources:\n  - name: reviews\n    kind: csv\n"
        "    channel: review\n    path: reviews.csv\n"
        "    columns: {external_id: id, created_at: at, text: body}\n",
        encoding="utf-8",
    )
    (tmp_path / "configs" / "pipeline.yaml").write_text("stages: []\n", encoding="utf-8")
    cli = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from flows.cli import app; app()",
            "ingest",
            "--config",
            str(tmp_path / "configs"),
            "--db",
            str(tmp_path / "feedback.duckdb"),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers: list[int] = []
    try:
        deadline = time.monotonic() + 400  # importing the CLI takes minutes on a loaded machine
        while not servers and time.monotonic() < deadline and cli.poll() is None:
            servers = [
                pid
                for pid in _children(cli.pid)
                if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            time.sleep(0.2)
        assert servers, "the CLI never started Prefect's temporary server"
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in servers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in servers), "orphaned Prefect server"
    finally:
        cli.kill()
        cli.wait()
        for pid in servers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
