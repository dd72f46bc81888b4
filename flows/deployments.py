"""The pipeline's Prefect deployments, served from one process by ``feedback serve``.

Three deployments, the flows ``prefect.yaml`` declares for a work pool, under their own names
(``-local``), so that stopping ``feedback serve`` (which pauses its deployments) never pauses the
ones ``prefect deploy --all`` registered on the same server:

* ``nightly/nightly-local``: the nightly flow on a cron schedule in the configured timezone
  (``timezone`` in pipeline.yaml, Europe/Istanbul by default), never two runs at once;
* ``watch/watch-local``: the near-real-time watch flow every ``watch_interval`` seconds;
* ``rerun/rerun-local``: the rerun/backfill flow, on demand only
  (``prefect deployment run 'rerun/rerun-local' --param since=2026-11-01``).

Schedules need a Prefect server with its scheduler; when ``PREFECT_API_URL`` is not set,
``serve_locally`` starts one on 127.0.0.1 (SQLite under ``$PREFECT_HOME``), so the team needs
nothing else installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import httpx
from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Interval
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows._children import die_with_parent
from flows.nightly import nightly
from flows.rerun import rerun
from flows.watch import watch
from pipelines._errors import ConfigError
from pipelines.settings import load_settings
from pipelines.storage import resolve_db_url

__all__ = [
    "DEFAULT_NIGHTLY_CRON",
    "DEFAULT_WATCH_INTERVAL",
    "SERVE_SUFFIX",
    "TAGS",
    "build_deployments",
    "local_prefect_server",
    "serve_locally",
]

DEFAULT_NIGHTLY_CRON = "0 2 * * *"
"""02:00 every day, in the configured timezone."""
DEFAULT_WATCH_INTERVAL = timedelta(seconds=60)
TAGS = ["feedback"]
SERVE_SUFFIX = "-local"
"""Appended to the names of the deployments ``feedback serve`` serves (``nightly-local``...)."""
_SERVER_START_TIMEOUT_S = 120.0


def build_deployments(
    config_dir: str | None = None,
    db: str | None = None,
    nightly_cron: str = DEFAULT_NIGHTLY_CRON,
    watch_interval: timedelta = DEFAULT_WATCH_INTERVAL,
) -> list[RunnerDeployment]:
    """The nightly (cron), watch (interval) and rerun (on demand) deployments.

    Args:
        config_dir: Configuration folder passed to every run (default: embedded defaults).
        db: Database path or URL passed to every run (default: pipeline.yaml / env).
        nightly_cron: Cron expression of the nightly run, in pipeline.yaml's ``timezone``.
        watch_interval: Time between two watch runs.

    Returns:
        Deployments ready for ``prefect.serve``.

    Raises:
        ConfigError: The cron expression or the interval is invalid.
    """
    settings = load_settings(config_dir)
    if watch_interval <= timedelta(0):
        raise ConfigError(f"watch interval must be positive, got {watch_interval}.")
    try:
        nightly_schedule = Cron(nightly_cron, timezone=settings.timezone)
    except ValueError as exc:
        raise ConfigError(
            f"invalid cron expression {nightly_cron!r} ({exc}); use five fields such as "
            f"'{DEFAULT_NIGHTLY_CRON}' (02:00 every day)."
        ) from exc
    defaults = {name: value for name, value in (("config_dir", config_dir), ("db", db)) if value}
    return [
        nightly.to_deployment(
            name=f"nightly{SERVE_SUFFIX}",
            schedule=nightly_schedule,
            parameters=defaults,
            concurrency_limit=1,
            tags=TAGS,
            description=f"Nightly ingestion, analysis and report ({nightly_cron}, "
            f"{settings.timezone}).",
        ),
        watch.to_deployment(
            name=f"watch{SERVE_SUFFIX}",
            schedule=Interval(watch_interval, timezone=settings.timezone),
            parameters=defaults,
            concurrency_limit=1,
            tags=TAGS,
            description="New feedback every few minutes; P1 alerts mailed at once.",
        ),
        rerun.to_deployment(
            name=f"rerun{SERVE_SUFFIX}",
            parameters=defaults,
            tags=TAGS,
            description="Backfill or recompute a date range: prefect deployment run "
            f"'rerun/rerun{SERVE_SUFFIX}' --param since=2026-11-01 [--param until=...] "
            "[--param stages='[\"sentiment\"]'] [--param reanalyze=true].",
        ),
    ]


@contextmanager
def local_prefect_server(port: int = 4200) -> Iterator[str]:
    """Run ``prefect server start`` on 127.0.0.1 for the ``with`` block.

    Args:
        port: TCP port of the API and UI.

    Yields:
        The API URL (``http://127.0.0.1:<port>/api``).

    Raises:
        ConfigError: The server did not answer within two minutes (port taken?).
    """
    api_url = f"http://127.0.0.1:{port}/api"
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    # Own session: Ctrl-C reaches only the runner, which pauses its deployments through the
    # still running server before the server is stopped below.
    server = subprocess.Popen(
        command,
        env={**os.environ, "PREFECT_UI_API_URL": api_url},
        start_new_session=True,
        preexec_fn=die_with_parent(),  # no orphan server when `feedback serve` is killed
    )
    try:
        deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
        while not _healthy(api_url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(
                    f"the local Prefect server on port {port} did not start (exit code "
                    f"{server.poll()}). Free the port or pass --port, or point "
                    "PREFECT_API_URL at a running Prefect server."
                )
            time.sleep(0.5)
        yield api_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def serve_locally(
    config_dir: str | None = None,
    db: str | None = None,
    nightly_cron: str = DEFAULT_NIGHTLY_CRON,
    watch_interval: timedelta = DEFAULT_WATCH_INTERVAL,
    port: int = 4200,
) -> None:
    """Serve the three deployments until interrupted (Ctrl-C).

    Uses the Prefect server of ``PREFECT_API_URL`` when set; otherwise starts a local one on
    ``port`` for as long as this runs (UI at http://127.0.0.1:<port>). With a DuckDB database
    (one process at a time) flow runs execute one after the other; with PostgreSQL they may
    overlap, and the pipeline's run lock orders their writes.

    Args:
        config_dir: Configuration folder passed to every run.
        db: Database path or URL passed to every run.
        nightly_cron: Cron expression of the nightly run, in pipeline.yaml's ``timezone``.
        watch_interval: Time between two watch runs.
        port: Port of the local server started when no API URL is configured.
    """
    deployments = build_deployments(config_dir, db, nightly_cron, watch_interval)
    database = db or os.environ.get("FEEDBACK_DB_URL") or load_settings(config_dir).database
    # A DuckDB file admits one process at a time: run one flow run at a time (others wait).
    limit = 1 if resolve_db_url(database).startswith("duckdb") else None
    if PREFECT_API_URL.value():
        serve(*deployments, limit=limit)
        return
    with local_prefect_server(port) as api_url, temporary_settings({PREFECT_API_URL: api_url}):
        serve(*deployments, limit=limit)
