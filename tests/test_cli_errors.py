"""Errors people meet first: configuration checked before Prefect starts, dates in any ISO form
with the expected format in the error, a user's ``lang`` column, unsupported languages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import feedback_pipeline as fp
from flows._tasks import RunSummary, summary_markdown
from flows.cli import app
from pipelines._errors import ConfigError
from pipelines.analysis.analyze import read_feedback_file
from pipelines.config import DEFAULT_CONFIG_DIR

REPO = Path(__file__).resolve().parent.parent
_CLI = "from flows.cli import app; app(prog_name='feedback')"


def _broken_config(tmp_path: Path) -> Path:
    config = tmp_path / "configs"
    shutil.copytree(DEFAULT_CONFIG_DIR, config)
    routing = config / "routing.yaml"
    routing.write_text(routing.read_text(encoding="utf-8") + "\nescalate_after: 2h\n", "utf-8")
    return config


@pytest.mark.parametrize(
    "command", [["run"], ["rerun", "--since", "2026-11-01"], ["serve", "--port", "1"]]
)
def test_a_config_error_stops_the_command_before_prefect(
    tmp_path: Path, command: list[str]
) -> None:
    config = _broken_config(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        # Nothing listens there: a command that reached Prefect would fail on the connection.
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
        "FEEDBACK_DB_URL": str(tmp_path / "feedback.duckdb"),
    }
    # At exit the process prints which flow modules it imported: none, so the error comes at
    # once, without the seconds their imports (Prefect's flow machinery, the stages) take.
    flows_imported = (
        "import atexit, sys; atexit.register(lambda: print(sorted(name for name in sys.modules "
        "if name in ('flows.nightly', 'flows.rerun', 'flows.deployments'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"{flows_imported}; {_CLI}", *command, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error [E001]"), result.stderr
    assert "routing.yaml" in lines[0] and "escalate_after" in lines[0]
    assert "Traceback" not in result.stderr and "2h" not in result.stderr  # values never echoed
    assert result.stdout.strip() == "[]"
    assert not (tmp_path / "feedback.duckdb").exists()


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["rerun", "--since", "01/11/2026"], "--since"),
        (["rerun", "--since", "2026-11-01", "--until", "next week"], "--until"),
        (["report", "--date", "2026-13-01"], "--date"),
        (["run", "--since", "yesterday"], "--since"),
    ],
)
def test_a_bad_date_is_a_usage_error_that_shows_the_format(command: list[str], option: str) -> None:
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    assert option in result.output and "YYYY-MM-DD" in result.output
    assert "ISO 8601" in result.output and "2026-11-01T08:30:00+03:00" in result.output


def test_a_given_lang_is_kept_and_an_unknown_one_rejected(tmp_path: Path) -> None:
    rows = pd.DataFrame(
        {
            "id": ["1", "2", "3"],
            "text": ["Kargo geç geldi ama ürün güzel", "Delivery was late", "Livrare rapidă"],
            "lang": ["en", None, "RO"],
        }
    )
    scored = fp.analyze(rows, stages=[])
    assert list(scored["lang"]) == ["en", "en", "ro"]  # the first is Turkish: the user wins
    confidence = scored["lang_confidence"].tolist()
    assert confidence[0] == confidence[2] == 1.0 and confidence[1] < 1.0

    with pytest.raises(ConfigError, match=r"\[E083\] lang 'de' is not one of tr, fa, ro, en"):
        fp.analyze(pd.DataFrame({"text": ["Lieferung zu spät"], "lang": ["de"]}), stages=[])

    source = tmp_path / "in.csv"
    source.write_text("id,text,lang\n1,Kargo geç,tr\n2,Zu spät,de\n3,Late,\n", encoding="utf-8")
    frame, bad = read_feedback_file(source)
    assert list(frame["id"]) == ["1", "3"]
    assert [(row.line, row.reason.split(";")[0]) for row in bad] == [
        (2, "lang 'de' is not one of tr, fa, ro, en, other")
    ]


def test_unsupported_languages_are_counted_in_the_run_summary() -> None:
    summary = RunSummary(run_id="r", languages={"tr": 5, "other": 3})
    assert "(3 in an unsupported language)" in summary.outcome()
    assert "3 record(s) in an unsupported language (lang=other" in summary_markdown(
        "nightly", summary
    )
    assert "unsupported" not in RunSummary(run_id="r", languages={"tr": 5}).outcome()
