"""Shared fixtures: paths to ../shared, a fresh DuckDB store, Prefect's test harness."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipelines.store import Store

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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh DuckDB file store."""
    with Store(tmp_path / "feedback.duckdb") as fresh:
        yield fresh


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness (temporary server + database), started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
