"""Shared fixtures: paths to ../shared, fresh databases (DuckDB and PostgreSQL), Prefect's harness.

PostgreSQL tests need ``FEEDBACK_TEST_PG_URL`` (a server URL whose user may create databases;
``.ci/run`` starts a throwaway cluster and sets it). Without it they skip with a message.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipelines.storage import Store

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("FEEDBACK_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder (datasets, seeds); skips the test when it is absent."""
    if not (SHARED_DIR / "datasets").is_dir():
        pytest.skip(f"../shared not found at {SHARED_DIR}; set FEEDBACK_SHARED_DIR")
    return SHARED_DIR


@pytest.fixture(scope="session")
def seed_texts(shared_dir: Path) -> dict[str, str]:
    """Real article texts from ../shared/seeds keyed by file name."""
    return {
        path.name: path.read_text(encoding="utf-8")
        for path in sorted((shared_dir / "seeds").glob("*.txt"))
    }


PG_URL_ENV = "FEEDBACK_TEST_PG_URL"
BACKENDS = ("duckdb", "postgresql")


def _fresh_pg_database(server_url: str) -> Iterator[str]:
    """Create an empty database on the test server, yield its URL, drop it afterwards."""
    name = f"feedback_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once per backend: a DuckDB file, then a fresh PostgreSQL database.

    The PostgreSQL case skips with a message when ``FEEDBACK_TEST_PG_URL`` is not set.
    """
    if request.param == "duckdb":
        yield str(tmp_path / "feedback.duckdb")
        return
    server_url = os.environ.get(PG_URL_ENV)
    if not server_url:
        pytest.skip(f"PostgreSQL tests need {PG_URL_ENV} (bash .ci/run starts a server)")
    yield from _fresh_pg_database(server_url)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A fresh store on each backend (see ``db_url``)."""
    with Store(db_url) as fresh:
        yield fresh


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness (temporary server + database), started once per session.

    Prefect's logging is configured here too: its first configuration in a process replaces the
    root logger's handlers, so a test's ``caplog`` would see Prefect's records only if an
    earlier test had configured it.
    """
    from prefect.logging.configuration import setup_logging
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        setup_logging()
        yield
