"""``analyze_frame``, the JSONL writer and ``feedback analyze`` on small JSONL and CSV inputs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines._errors import SourceError
from pipelines.analysis.analyze import (
    analyze_frame,
    output_record,
    read_feedback_file,
    write_jsonl,
)
from pipelines.analysis.sentiment import SentimentStage
from pipelines.stages import Stage, StageContext
from pipelines.storage import Store
from tests._tiny_models import build_tiny_classifier

REQUIRED_KEYS = {
    "id",
    "lang",
    "lang_confidence",
    "sentiment",
    "sentiment_scores",
    "sentences",
    "model_version",
}


@pytest.fixture(scope="module")
def hf_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Config folder whose sentiment.yaml uses a tiny local BERT classifier."""
    root = tmp_path_factory.mktemp("analyze")
    model_dir = build_tiny_classifier(root / "model", favoured_label=0)
    config_dir = root / "config"
    config_dir.mkdir()
    (config_dir / "sentiment.yaml").write_text(
        "backend: hf_sequence_classification\n"
        "hf_sequence_classification:\n"
        f"  path: {model_dir}\n"
        "  labels: {NEG: negative, NEU: neutral, POS: positive}\n",
        encoding="utf-8",
    )
    return config_dir


JSONL_LINES = [
    json.dumps({"id": 1, "text": "Kargo çok geç geldi. Ürün kırık çıktı!", "store": "Kadıköy"}),
    json.dumps(
        {"id": "2", "text": "Livrarea a fost rapidă, mulțumesc! Scrieți-mi la ana@example.ro"}
    ),
    "this line is not json",
    json.dumps({"text": "no id here"}),
    json.dumps({"id": "4"}),
    json.dumps({"id": "5", "text": "   "}),
    json.dumps({"id": "6", "text": 42}),
    json.dumps(["a", "list"]),
    json.dumps({"id": "7", "text": "<br/>"}),
    json.dumps({"id": "8", "text": "غذا سرد بود و دیر رسید."}),
]


def _write_jsonl(path: Path) -> Path:
    path.write_text("\n".join(JSONL_LINES) + "\n", encoding="utf-8")
    return path


def test_read_jsonl_reports_bad_rows(tmp_path: Path) -> None:
    frame, bad = read_feedback_file(_write_jsonl(tmp_path / "in.jsonl"))
    assert list(frame["id"]) == ["1", "2", "7", "8"]
    assert frame["store"][0] == "Kadıköy"
    assert [(row.line, row.reason) for row in bad] == [
        (3, "not a JSON object"),
        (4, "missing id"),
        (5, "missing text"),
        (6, "empty text"),
        (7, "text is not a string"),
        (8, "not a JSON object"),
    ]


def test_read_csv_keeps_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        'id,text,channel\nA1,"Great app, fast support.",email\nA2,,chat\n,orphan,chat\n',
        encoding="utf-8",
    )
    frame, bad = read_feedback_file(path)
    assert list(frame["id"]) == ["A1"] and frame["channel"][0] == "email"
    assert [(row.line, row.reason) for row in bad] == [(2, "empty text"), (3, "missing id")]
    header_only = tmp_path / "wrong.csv"
    header_only.write_text("key,body\n1,hello\n", encoding="utf-8")
    with pytest.raises(SourceError, match="'id' and 'text'"):
        read_feedback_file(header_only)
    with pytest.raises(SourceError, match="not found"):
        read_feedback_file(tmp_path / "absent.jsonl")


class _TopicStage(Stage):
    """A later stage adding numpy-typed columns, as aspects/topics/flagging will."""

    name: ClassVar[str] = "toy-topic"

    @property
    def version(self) -> str:
        return "toy-1"

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        result = batch.copy()
        result["topic"] = [np.int64(7)] * len(result)
        result["flagged"] = [np.bool_(label == "negative") for label in result["sentiment"]]
        result["aspects"] = [[{"aspect": "delivery", "score": np.float32(0.5)}]] * len(result)
        return result


def test_analyze_frame_and_writer(hf_config_dir: Path, tmp_path: Path) -> None:
    frame, _ = read_feedback_file(_write_jsonl(tmp_path / "in.jsonl"))
    stages = [SentimentStage.from_config(hf_config_dir), _TopicStage()]
    with Store(tmp_path / "db.duckdb") as store:
        analysed = analyze_frame(frame, stages, StageContext(store, str(uuid.uuid4())))
    assert list(analysed["id"]) == ["1", "2", "7", "8"]
    assert list(analysed["analysed"]) == [True, True, False, True]
    output = tmp_path / "out.jsonl"
    with output.open("w", encoding="utf-8") as handle:
        assert write_jsonl(analysed, handle) == 3
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    for record in records:
        assert set(record) >= REQUIRED_KEYS
        assert sum(record["sentiment_scores"].values()) == pytest.approx(1.0)
        assert record["topic"] == 7 and record["aspects"][0]["score"] == 0.5
        assert "embedding" not in record and "analysed" not in record
    assert [record["lang"] for record in records] == ["tr", "ro", "fa"]
    assert records[0]["store"] == "Kadıköy"
    assert len(records[0]["sentences"]) == 2
    assert "ana@example.ro" not in json.dumps(records[1], ensure_ascii=False)
    assert records[0]["flagged"] is True  # the tiny model always says negative


def test_no_vector_column_reaches_the_output() -> None:
    vector = np.ones(4, dtype=np.float32)
    row = pd.Series(
        {
            "id": "1",
            "embedding": vector,
            "sentence_embeddings": [vector],
            "embedding@layers-4-6-8-10-12": vector,
            "sentence_embeddings@layers-4-6-8-10-12": [vector],
            "analysed": True,
            "embedding_note": "a column of the input file",
        }
    )
    assert output_record(row) == {"id": "1", "embedding_note": "a column of the input file"}


def test_cli_analyze_jsonl_and_csv(hf_config_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    output = tmp_path / "out.jsonl"
    result = runner.invoke(
        app,
        [
            "analyze",
            str(_write_jsonl(tmp_path / "in.jsonl")),
            "-o",
            str(output),
            "--config",
            str(hf_config_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "7 bad row(s)" in result.output
    assert "row 3 skipped" in result.output and "row 9 skipped" in result.output
    lines = output.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["1", "2", "8"]

    csv_path = tmp_path / "in.csv"
    csv_path.write_text("id,text,rating\n1,The food was bad,2\n2,,5\n", encoding="utf-8")
    result = runner.invoke(
        app, ["analyze", str(csv_path), "-o", str(output), "--config", str(hf_config_dir)]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(output.read_text(encoding="utf-8"))
    assert set(record) >= REQUIRED_KEYS and record["rating"] == "2"
    assert {"aspects", "topic", "flagged", "priority", "reasons"} <= set(record)
    assert record["flagged"] is True and any("rating 2/5" in r for r in record["reasons"])
    assert set(record["topic"]) >= {"id", "label", "keywords"}
    assert "1 bad row(s)" in result.output


def test_cli_analyze_missing_input_fails_cleanly(hf_config_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["analyze", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 1
    assert "E010" in result.output
