"""Read-only commands work while another process writes the DuckDB file, and expected errors are
one line with their code (the traceback only with ``--debug``); all through real processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.storage import Store

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

WRITER = """
import sys, time
from pipelines.storage import Store
store = Store(sys.argv[1])
print("writing", flush=True)
rows = 0
while True:
    rows += store.quarantine("writer", "run-w", [(f"row {rows}", "test", None)])
    time.sleep(0.1)
"""


def feedback(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``feedback`` CLI in its own process."""
    return subprocess.run(
        [sys.executable, "-c", "from flows.cli import app; app()", *args],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A process writing into a DuckDB file all the time (a transaction, then 100 ms)."""
    database = str(tmp_path / "feedback.duckdb")
    Store(database).close()
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, database], env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "writing"
    yield database, process
    process.kill()
    process.wait()


READ_COMMANDS = """
import json, sys
from typer.main import get_command
from flows.cli import app
for args in json.loads(sys.argv[1]):
    if get_command(app).main(args, prog_name="feedback", standalone_mode=False):
        sys.exit(1)  # an error, printed in one line
    print("=== done", args[0], flush=True)
"""


def test_read_only_commands_work_while_another_process_writes(
    writer: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    database, process = writer
    commands = [
        ["status", "--db", database],
        ["alerts", "list", "--db", database],
        ["topics", "--db", database],
        ["report", "--date", "2026-11-01", "--out", str(tmp_path / "out"), "--db", database],
    ]
    # One process (importing the CLI once) runs the four commands in turn while the writer writes.
    result = subprocess.run(
        [sys.executable, "-c", READ_COMMANDS, json.dumps(commands)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("=== done") == 4
    assert "writer" in result.stdout  # status shows the rows quarantined by the writer
    assert process.poll() is None  # the writer never failed meanwhile


def test_busy_database_is_one_line_error_and_traceback_only_with_debug(tmp_path: Path) -> None:
    database = tmp_path / "feedback.duckdb"
    Store(database).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys\nconnection = duckdb.connect({str(database)!r})\n"
            "print('open', flush=True)\nsys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        env = {**ENV, "FEEDBACK_DB_BUSY_WAIT": "1"}
        result = feedback("status", "--db", str(database), env=env)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr[-3000:]
        assert lines[0].startswith("Error [E060]") and f"process {holder.pid}" in lines[0]
        debug = feedback("--debug", "status", "--db", str(database), env=env)
        assert debug.returncode == 1 and "Traceback" in debug.stderr and "E060" in debug.stderr
    finally:
        holder.communicate("", timeout=30)


def test_flow_failure_is_reported_by_its_feedback_error(
    prefect_harness: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    result = CliRunner().invoke(
        app,
        [
            "rerun",
            "--since",
            "2026-11-02",
            "--until",
            "2026-11-01",
            "--db",
            str(tmp_path / "feedback.duckdb"),
        ],
    )
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith("Error [E001] until (")
    assert "Traceback" not in result.output
    assert "Encountered exception" in caplog.text  # Prefect logged the failure...
    assert not [record for record in caplog.records if record.exc_info]  # ...without traceback


def _attached(store: Store) -> set[str]:
    with store.begin() as connection:
        rows = connection.exec_driver_sql("SELECT database_name FROM duckdb_databases()")
        return {row[0] for row in rows}


OPEN_WHEN_TOLD = """
import sys, duckdb
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
try:
    duckdb.connect(sys.argv[1]).close()
    print("opened", flush=True)
except duckdb.Error as exc:
    print(f"refused: {exc}", flush=True)
"""


def test_a_writer_holds_the_file_through_a_burst_and_lets_go_at_a_pause_or_close(
    tmp_path: Path,
) -> None:
    database = tmp_path / "feedback.duckdb"
    store = Store(database)
    with store.begin() as connection:
        connection.exec_driver_sql("ATTACH ':memory:' AS burst_probe")
    # The next transaction at once reuses the database instance (an open costs ~1 ms, not 40).
    assert "burst_probe" in _attached(store)
    time.sleep(0.5)
    # After a pause the file was let go: this transaction built a new instance.
    assert "burst_probe" not in _attached(store)

    other = subprocess.Popen(
        [sys.executable, "-c", OPEN_WHEN_TOLD, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdout is not None and other.stdin is not None
    assert other.stdout.readline().strip() == "ready"
    _attached(store)
    store.close()  # lets go at once: the other process opens the file without waiting
    other.stdin.write("go\n")
    other.stdin.flush()
    assert other.stdout.readline().strip() == "opened"
    other.wait(timeout=30)
