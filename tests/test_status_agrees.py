"""``feedback status`` agrees with the runs' own summaries and shows per-stage work."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from flows.nightly import nightly
from flows.rerun import rerun

ROWS = [
    {"id": "1", "ts": "2026-11-02T10:00:00", "body": "Kargo geç geldi, rezalet", "who": "ayse"},
    {"id": "2", "ts": "2026-11-02T10:05:00", "body": "Kargo geç geldi, rezalet", "who": "ayse"},
    {"id": "3", "ts": "2026-11-02T11:00:00", "body": "Livrarea a fost rapidă", "who": "ion"},
]


def _config(tmp_path: Path) -> Path:
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "rows.jsonl").write_text(
        "\n".join(json.dumps(row, ensure_ascii=False) for row in ROWS) + "\n", encoding="utf-8"
    )
    (folder / "sources.yaml").write_text(
        "data_dir: .\nsources:\n  - name: shop\n    kind: jsonl\n    channel: review\n"
        "    path: rows.jsonl\n"
        "    columns: {external_id: id, created_at: ts, text: body, author: who}\n",
        encoding="utf-8",
    )
    (folder / "routing.yaml").write_text("routes:\n  - name: all\n    to: [lead@example.com]\n")
    (folder / "pipeline.yaml").write_text("stages: [flagging]\n")
    return folder


def test_status_counts_match_the_run_and_show_new_vs_reanalysed(
    prefect_harness: None, tmp_path: Path
) -> None:
    config, db = _config(tmp_path), str(tmp_path / "feedback.duckdb")
    first = nightly(config_dir=str(config), db=db)
    (shop,) = first.sources
    assert (shop.read, shop.stored, shop.duplicates) == (3, 2, 1)  # one copy-paste duplicate
    again = rerun(
        since=datetime(2026, 11, 1),
        config_dir=str(config),
        db=db,
        reanalyze=True,
        read_sources=False,
    )
    assert again.stage_rows == {"flagging": 2}

    result = CliRunner().invoke(app, ["status", "--db", db, "--format", "json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    runs = {run["flow"]: run for run in status["runs"]}
    assert runs["nightly"]["stored"] == shop.stored == status["records_stored"] == 2
    assert status["copy_paste_duplicates_kept"] == 1
    stages = {(row["flow"], row["stage"]): row for row in status["stages"]}
    assert (stages["nightly", "flagging"]["new"], stages["nightly", "flagging"]["reanalysed"]) == (
        2,
        0,
    )
    assert (stages["rerun", "flagging"]["new"], stages["rerun", "flagging"]["reanalysed"]) == (
        0,
        2,
    )
    assert all(row["seconds"] >= 0 for row in status["stages"])

    plain = CliRunner().invoke(app, ["status", "--db", db]).stdout
    assert "Records stored: 2" in plain and "Copy paste duplicates kept: 1" in plain
