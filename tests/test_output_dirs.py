"""Reports and outbox belong to their database: a run against another database never writes
over the real daily report or outbox."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.delivery.alerts import AlertStage, enqueue_alerts
from pipelines.delivery.routing import load_routing
from pipelines.settings import PipelineSettings, beside_database, outbox_dir_for, reports_dir_for
from pipelines.stages import StageContext
from pipelines.storage import Store
from tests.test_alerts import ROUTING, T0, flagged


def test_folders_beside_the_database_unless_configured() -> None:
    default = PipelineSettings(stages=[])
    assert reports_dir_for(default, "duckdb:////srv/a/feedback.duckdb") == Path("/srv/a/reports")
    assert outbox_dir_for(default, "data/feedback.duckdb") == Path("data/outbox")
    assert reports_dir_for(default, "duckdb:///tmp.duckdb") == Path("reports")
    url = "postgresql+psycopg://feedback:secret@db.internal:5432/feedback_test?sslmode=require"
    assert reports_dir_for(default, url) == Path("reports/feedback_test")
    assert beside_database("postgresql+psycopg://db.internal/", "outbox") == Path("outbox/database")
    pinned = PipelineSettings(stages=[], reports_dir=Path("/var/reports"))
    assert reports_dir_for(pinned, "duckdb:////srv/a/feedback.duckdb") == Path("/var/reports")
    assert outbox_dir_for(pinned, "duckdb:////srv/a/feedback.duckdb") == Path("/srv/a/outbox")


def test_report_and_outbox_land_beside_another_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEEDBACK_SMTP_HOST", raising=False)
    monkeypatch.chdir(tmp_path)  # a report in ./reports would be the real one's folder
    other = tmp_path / "scratch" / "trial.duckdb"
    other.parent.mkdir()
    folder = tmp_path / "routing"
    folder.mkdir()
    (folder / "routing.yaml").write_text(ROUTING, encoding="utf-8")
    with Store(other) as store:
        enqueue_alerts(pd.DataFrame([flagged("c1", "P1")]), store, load_routing(folder), now=T0)
        report = AlertStage(load_routing(folder)).deliver(StageContext(store, "run-1"))
    assert report.alerts_sent == 1
    assert len(list((other.parent / "outbox").glob("*.eml"))) == 1

    result = CliRunner().invoke(app, ["report", "--db", str(other), "--date", "2025-03-10"])
    assert result.exit_code == 0, result.output
    assert (other.parent / "reports" / "2025-03-10.html").is_file()
    assert not (tmp_path / "reports").exists() and not (tmp_path / "outbox").exists()
