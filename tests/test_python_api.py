"""The Python API: ``fp.analyze`` on a DataFrame and on texts, ``fp.connect(db).records``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import feedback_pipeline as fp
from flows.cli import app
from pipelines._errors import ConfigError
from pipelines.storage import Store
from tests._synthetic_feedback import THEMES, feedback_rows
from tests.test_analyze import hf_config_dir  # noqa: F401  (fixture: tiny local classifier)
from tests.test_export import fill

ROWS = pd.DataFrame(
    {
        "id": ["a", "b", "c"],
        "text": [
            "Kargo çok geç geldi. Ürün kırık çıktı! Yazın: ayse@example.com",
            "<br/>",
            "غذا سرد بود و دیر رسید.",
        ],
        "rating": [1, 5, 2],
        "campaign": ["x", "y", "z"],
    }
)


def test_analyze_a_frame_and_texts_like_the_cli(hf_config_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    scored = fp.analyze(ROWS, config=hf_config_dir)
    assert list(scored["id"]) == ["a", "b", "c"] and list(scored["campaign"]) == ["x", "y", "z"]
    assert {"lang", "sentiment", "sentences", "aspects", "topic", "flagged", "priority"} <= set(
        scored.columns
    )
    assert not {"embedding", "analysed", "text_hash", "line"} & set(scored.columns)
    assert list(scored["lang"].iloc[[0, 2]]) == ["tr", "fa"]
    assert pd.isna(scored["lang"].iloc[1])  # nothing left after normalisation: no results
    assert "ayse@example.com" not in scored["text"].iloc[0]
    assert bool(scored["flagged"].iloc[0]) is True  # the tiny model always says negative

    texts = fp.analyze(["The food was bad", "Livrarea a fost rapidă"], config=hf_config_dir)
    assert list(texts["id"]) == ["0", "1"] and list(texts["lang"]) == ["en", "ro"]

    source = tmp_path / "in.jsonl"
    source.write_text(ROWS.to_json(orient="records", lines=True, force_ascii=False), "utf-8")
    output = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        app, ["analyze", str(source), "-o", str(output), "--config", str(hf_config_dir)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == ["a", "c"]
    assert set(lines[0]) == set(scored.columns)
    assert lines[0]["sentiment"] == scored["sentiment"].iloc[0]


def test_analyze_refuses_input_without_text() -> None:
    with pytest.raises(ConfigError, match=r"\[E082\].*'text' column"):
        fp.analyze(pd.DataFrame({"id": [1], "body": ["hello"]}))
    with pytest.raises(ConfigError, match=r"\[E082\].*fp.analyze\(\[text\]\)"):
        fp.analyze("one string")


def test_connect_records_is_the_export(store: Store, tmp_path: Path) -> None:
    fill(store)
    with fp.connect(store.url) as db:
        november = db.records(since="2026-11-01", until="2026-11-08")
        everything = db.records(since=pd.Timestamp("2026-01-01").date())
        with pytest.raises(ConfigError, match=r"\[E081\].*YYYY-MM-DD"):
            db.records(since="yesterday")
    assert list(november["id"]) == ["r1", "r2"] and len(everything) == 3
    assert {name: str(dtype) for name, dtype in november.dtypes.items()} == fp.EXPORT_DTYPES

    target = tmp_path / "n.parquet"
    exported = CliRunner().invoke(
        app,
        [
            "export",
            "--db",
            store.url,
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-08",
            "-o",
            str(target),
        ],
    )
    assert exported.exit_code == 0, exported.output
    pd.testing.assert_frame_equal(fp.read_export(target), november)


def test_analyze_fits_topics_on_its_input_once_for_every_chunk() -> None:
    rows = feedback_rows(dict.fromkeys(THEMES, 3), datetime(2026, 11, 1, tzinfo=UTC), 3)
    rows = rows[["id", "text", "lang"]].reset_index(drop=True)
    assert len(rows) > 40
    # 32 rows are enough to fit (min_records_to_fit 30) the first chunk; the second chunk is
    # smaller but must be assigned with the same model, not left unassigned or refitted.
    scored = fp.analyze(rows, stages=["topics"], chunk_size=32)
    topics = [topic["id"] for topic in scored["topic"]]
    assert set(topics[32:]) - {-1}  # without the first chunk's model: all unassigned
    by_id: dict[int, set[tuple[str, ...]]] = {}
    for topic in scored["topic"]:
        by_id.setdefault(topic["id"], set()).add(tuple(topic["keywords"]))
    assert all(len(variants) == 1 for variants in by_id.values())  # one model for all rows
