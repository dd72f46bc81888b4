"""Quarantine: list, show, replay after a mapping fix (idempotent, counted), and re-reads of a
changed file that count an already quarantined row once."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from pipelines.ingest import ingest_source
from pipelines.ingest._batch import ALREADY_QUARANTINED
from pipelines.ingest.sources import load_sources
from pipelines.storage import Store, list_quarantined, recent_runs, schema

SOURCES = """\
data_dir: .
sources:
  - name: shop
    kind: jsonl
    channel: review
    path: shop.jsonl
    columns: {{external_id: id, created_at: ts, text: body}}
    {date_format}
  - name: survey
    kind: csv
    channel: survey
    path: survey.csv
    columns: {{external_id: id, created_at: ts, text: answer{rating}}}
"""
SHOP = [
    {"id": "s1", "ts": "2026-11-02T10:00:00", "body": "Kargo geç geldi"},
    {"id": "s2", "ts": "02/11/2026 11:00", "body": "Ürün kırık, yazın: ali@example.com"},
    {"id": "s3", "ts": "03/11/2026 09:30", "body": "Çok memnun kaldım"},
]
SURVEY = (
    "id,ts,answer,stars\n"
    "v1,2026-11-02T08:00:00,Livrare rapidă,5\n"
    "v2,2026-11-02T09:00:00,Prea scump,five\n"
)


def _config(folder: Path, fixed: bool) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "shop.jsonl").write_text(
        "\n".join(json.dumps(row, ensure_ascii=False) for row in SHOP) + "\n{not json\n",
        encoding="utf-8",
    )
    (folder / "survey.csv").write_text(SURVEY, encoding="utf-8")
    (folder / "sources.yaml").write_text(
        SOURCES.format(
            date_format='date_format: "%d/%m/%Y %H:%M"' if fixed else "",
            rating="" if fixed else ", rating: stars",
        ),
        encoding="utf-8",
    )
    (folder / "routing.yaml").write_text(
        "routes:\n  - name: all\n    to: [lead@example.com]\n", "utf-8"
    )
    (folder / "pipeline.yaml").write_text("stages: []\n", encoding="utf-8")
    return folder


def _ingest(store: Store, config: Path, run_id: str) -> dict[str, object]:
    return {
        source.name: ingest_source(source, store, run_id)
        for source in load_sources(config / "sources.yaml")
    }


def _cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.stdout


def test_list_show_and_replay_after_a_mapping_fix(store: Store, tmp_path: Path) -> None:
    broken = _config(tmp_path / "cfg", fixed=False)
    counts = _ingest(store, broken, "run-1")
    assert (counts["shop"].stored, counts["shop"].quarantined) == (1, 3)
    assert (counts["survey"].stored, counts["survey"].quarantined) == (1, 1)

    listed = json.loads(_cli("quarantine", "list", "--db", store.url, "--format", "json"))
    assert sorted(row["reason"] for row in listed) == [
        "bad_date",
        "bad_date",
        "invalid_field",
        "not_json",
    ]
    one = next(row for row in listed if row["reason"] == "invalid_field")
    shown = _cli("quarantine", "show", one["id"][:10], "--db", store.url)
    assert "invalid_field" in shown and "five" in shown and "raw (redacted)" in shown
    shown_json = json.loads(
        _cli("quarantine", "show", one["id"], "--db", store.url, "--format", "json")
    )
    assert shown_json[0]["source"] == "survey"
    missing = CliRunner().invoke(app, ["quarantine", "show", "ffffffffff", "--db", store.url])
    assert missing.exit_code == 1 and "feedback quarantine list" in missing.output
    assert "ali@example.com" not in json.dumps(listed) + shown  # redacted at quarantine time

    fixed = _config(tmp_path / "cfg", fixed=True)
    replay = _cli("quarantine", "replay", "--config", str(fixed), "--db", store.url)
    lines = {line.split()[0]: line.split()[1:] for line in replay.splitlines()[2:]}
    # source: read stored duplicates quarantined still_quarantined
    assert lines["shop"] == ["3", "2", "0", "0", "1"] and lines["survey"] == [
        "1",
        "1",
        "0",
        "0",
        "0",
    ]
    with store.engine.connect() as connection:
        texts = dict(
            connection.execute(
                schema.feedback.select().with_only_columns(
                    schema.feedback.c.external_id, schema.feedback.c.text
                )
            ).all()
        )
    assert set(texts) == {"s1", "s2", "s3", "v1", "v2"}
    assert "ali@example.com" not in texts["s2"] and "[EMAIL]" in texts["s2"]

    (open_row,) = list_quarantined(store)
    assert open_row["reason"] == "not_json" and open_row["replay"] == "still_quarantined"
    assert len(list_quarantined(store, include_replayed=True)) == 4

    again = _cli("quarantine", "replay", "--config", str(fixed), "--db", store.url)
    lines = {line.split()[0]: line.split()[1:] for line in again.splitlines()[2:]}
    assert lines["shop"] == ["1", "0", "0", "0", "1"] and lines["survey"] == [
        "0",
        "0",
        "0",
        "0",
        "0",
    ]
    assert store.count(schema.feedback) == 5
    replays = [run for run in recent_runs(store) if run["flow"] == "replay"]
    assert len(replays) == 2 and all(run["status"] == "completed" for run in replays)

    rows = list(
        csv.DictReader(
            io.StringIO(_cli("quarantine", "list", "--all", "--db", store.url, "--format", "csv"))
        )
    )
    assert sorted(row["replay"] for row in rows) == [
        "replayed",
        "replayed",
        "replayed",
        "still_quarantined",
    ]


def test_a_reread_file_counts_its_quarantined_rows_once(store: Store, tmp_path: Path) -> None:
    config = _config(tmp_path / "cfg", fixed=False)
    (source,) = load_sources(config / "sources.yaml", names=["shop"])
    first = ingest_source(source, store, "run-1")
    assert (first.read, first.stored, first.quarantined) == (4, 1, 3)

    with (config / "shop.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "s4", "ts": "2026-11-04T10:00:00", "body": "Yeni"}) + "\n")
    second = ingest_source(source, store, "run-2")
    assert (second.read, second.stored, second.duplicates, second.quarantined) == (5, 1, 1, 0)
    assert second.skip_reasons == {ALREADY_QUARANTINED: 3} and not second.idle

    with (config / "shop.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("\n")  # the file changed, nothing new in it: what a watch poll would see
    third = ingest_source(source, store, "run-3", record_idle=False)
    assert (third.stored, third.quarantined, third.skip_reasons) == (0, 0, {ALREADY_QUARANTINED: 3})
    assert third.idle
    assert store.count(schema.quarantine) == 3
    assert store.count(schema.run_source_counts, run_id="run-3") == 0
