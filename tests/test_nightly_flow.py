"""The nightly flow on the demo data, through Prefect's real engine, and the CLI around it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from flows.cli import app
from flows.nightly import nightly
from pipelines.config import DEFAULT_CONFIG_DIR
from pipelines.storage import Store, schema

# What demo/README.md documents: rows per source, deliberate duplicates and broken rows.
EXPECTED = {
    "store_reviews": (92, 88, 2, 2),
    "app_reviews": (72, 68, 2, 2),
    "tr_legacy_reviews": (25, 25, 0, 0),
    "nps_survey_csv": (80, 78, 0, 2),
    "nps_survey_xlsx": (46, 46, 0, 0),
    "social_posts": (92, 90, 2, 0),
}


@pytest.fixture
def ingest_only_config(tmp_path: Path) -> Path:
    """The embedded configuration with the analysis stages switched off."""
    config_dir = tmp_path / "configs"
    shutil.copytree(DEFAULT_CONFIG_DIR, config_dir)
    (config_dir / "sources.yaml").write_text(
        (DEFAULT_CONFIG_DIR / "sources.yaml")
        .read_text(encoding="utf-8")
        .replace("data_dir: ../demo", f"data_dir: {DEFAULT_CONFIG_DIR.parent / 'demo'}"),
        encoding="utf-8",
    )
    pipeline = config_dir / "pipeline.yaml"
    settings = {
        "stages:": "stages: []",
        "reports_dir:": f"reports_dir: {tmp_path / 'reports'}",
        "outbox_dir:": f"outbox_dir: {tmp_path / 'outbox'}",
    }
    pipeline.write_text(
        "\n".join(
            next((new for key, new in settings.items() if line.startswith(key)), line)
            for line in pipeline.read_text(encoding="utf-8").splitlines()
        ),
        encoding="utf-8",
    )
    return config_dir


def test_nightly_on_demo_data_balances_and_reruns_as_noop(
    prefect_harness: None, ingest_only_config: Path, db_url: str
) -> None:
    db = db_url
    summary = nightly(config_dir=str(ingest_only_config), db=db)
    got = {c.source: (c.read, c.stored, c.duplicates, c.quarantined) for c in summary.sources}
    assert got == EXPECTED
    assert set(summary.languages) >= {"tr", "fa", "ro", "en"}
    assert set(summary.channels) == {"review", "survey", "social"}

    with Store(db) as store:
        stored = store.count(schema.feedback)
        quarantined = store.count(schema.quarantine)
    copy_paste_spam = 4  # kept, marked duplicate_of; the 2 repeated ids are not stored again
    assert stored == sum(row[1] for row in EXPECTED.values()) + copy_paste_spam

    second = nightly(config_dir=str(ingest_only_config), db=db)
    assert sum(c.stored for c in second.sources) == 0
    with Store(db) as store:
        assert store.count(schema.feedback) == stored
        assert store.count(schema.quarantine) == quarantined
        with store.engine.connect() as connection:
            statuses = connection.execute(select(schema.runs.c.status)).scalars().all()
    assert statuses == ["completed", "completed"]


def test_cli_reports_a_bad_config_key(tmp_path: Path) -> None:
    config_dir = tmp_path / "configs"
    shutil.copytree(DEFAULT_CONFIG_DIR, config_dir)
    (config_dir / "pipeline.yaml").write_text("timezone: Mars/Olympus\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["status", "--config", str(config_dir)])
    assert result.exit_code == 1
    message = result.output.strip()
    assert "E001" in message and "timezone" in message and "IANA" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1


def test_cli_status_shows_runs_and_quarantine(
    prefect_harness: None, ingest_only_config: Path, db_url: str
) -> None:
    db = db_url
    runner = CliRunner()
    ingest = runner.invoke(app, ["ingest", "--config", str(ingest_only_config), "--db", db])
    assert ingest.exit_code == 0, ingest.output
    assert "store_reviews" in ingest.output
    result = runner.invoke(app, ["status", "--db", db, "--config", str(ingest_only_config)])
    assert result.exit_code == 0, result.output
    assert "completed" in result.output
    assert "bad_csv_row" in result.output and "not_json" in result.output


def test_nightly_analyses_what_an_ingest_only_run_left(
    prefect_harness: None, ingest_only_config: Path, db_url: str
) -> None:
    db = db_url
    nightly(config_dir=str(ingest_only_config), db=db)
    summary = nightly(config_dir=str(ingest_only_config), db=db, stages=["flagging"])
    assert sum(c.stored for c in summary.sources) == 0
    stored = sum(row[1] for row in EXPECTED.values())
    assert summary.stage_rows == {"flagging": stored}
    with Store(db) as store:
        assert store.count(schema.flags) == stored
    again = nightly(config_dir=str(ingest_only_config), db=db, stages=["flagging"])
    assert again.stage_rows == {"flagging": 0}
