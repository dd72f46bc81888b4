"""Evaluation metrics and ``evaluate_folder`` on tiny synthetic labelled sets with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.evaluate import (
    evaluate_folder,
    expected_calibration_error,
    score_predictions,
    write_report,
)
from pipelines._errors import ConfigError


def test_ece_of_overconfident_predictions() -> None:
    # Ten rows at confidence 0.9, eight correct: one bin, gap |0.8 - 0.9| = 0.1.
    proba = np.tile([0.9, 0.05, 0.05], (10, 1))
    gold = np.array([0] * 8 + [2] * 2)
    assert expected_calibration_error(proba, gold) == pytest.approx(0.1)


def test_ece_weights_bins_by_size() -> None:
    # Bin of 0.95 (2 rows, both right): gap 0.05; bin of 0.6 (2 rows, one right): gap 0.1.
    proba = np.array([[0.95, 0.05, 0], [0.95, 0.05, 0], [0.6, 0.4, 0], [0.6, 0.4, 0]])
    gold = np.array([0, 0, 0, 1])
    assert expected_calibration_error(proba, gold) == pytest.approx(0.5 * 0.05 + 0.5 * 0.1)
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 0.0


def test_perfectly_calibrated_is_zero() -> None:
    proba = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert expected_calibration_error(proba, np.array([0, 2])) == 0.0


def test_score_predictions_known_confusion() -> None:
    gold = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    proba = np.eye(3)[predicted]
    scores = score_predictions(gold, proba)
    assert scores.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert scores.accuracy == pytest.approx(4 / 6)
    # F1: negative 2*1/(2+2)=0.5, neutral 2*2/(2+3)=0.8, positive 2*1/(2+1)=2/3.
    assert scores.per_class_f1 == pytest.approx(
        {"negative": 0.5, "neutral": 0.8, "positive": 2 / 3}
    )
    assert scores.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert scores.classes == ["negative", "neutral", "positive"]


def _write_set(folder: Path, rows: list[dict[str, object]], extra_lines: list[str]) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows] + extra_lines
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _rows(prefix: str, lang: str, items: list[tuple[str, str]], split: str = "dev") -> list[dict]:
    return [
        {"id": f"{prefix}-{index}", "text": text, "label": label, "split": split, "lang": lang}
        for index, (text, label) in enumerate(items)
    ]


@pytest.fixture
def labelled_folder(tmp_path: Path) -> Path:
    root = tmp_path / "sets"
    three_class = [
        ("good service", "pos"),
        ("bad service", "neg"),
        ("it is a plane", "neu"),
        ("bad but good", "pos"),  # predicted negative: one error
    ]
    binary = [("iyi ürün", "pos"), ("kötü ürün", "neg"), ("idare eder iyi", "pos")]
    _write_set(
        root / "en" / "toy_en",
        [*_rows("en", "en", three_class), *_rows("en-train", "en", [("x", "pos")], "train")],
        [],
    )
    _write_set(
        root / "tr" / "toy_tr",
        _rows("tr", "tr", binary),
        ["not json at all", json.dumps({"id": "x", "split": "dev", "label": "zzz", "text": "t"})],
    )
    (root / "tr" / "toy_tr" / "SOURCE.md").write_text(
        "- **Licence (as stated):** CC0 1.0\n", encoding="utf-8"
    )
    return root


def _keyword_model(texts: list[str], langs: list[str]) -> np.ndarray:
    """Negative if a negative word occurs, positive if a positive one does, else neutral; binary
    rows without keywords still lean positive over negative so neg/pos argmax is defined."""
    rows = []
    for text in texts:
        if "bad" in text or "kötü" in text:
            rows.append([0.7, 0.2, 0.1])
        elif "good" in text or "iyi" in text:
            rows.append([0.1, 0.2, 0.7])
        else:
            rows.append([0.2, 0.5, 0.3])
    return np.array(rows)


def test_evaluate_folder_per_dataset_and_language(labelled_folder: Path) -> None:
    report = evaluate_folder(labelled_folder, _keyword_model, "toy-1")
    english = report.datasets["toy_en"]
    assert english["binary"] is False and english["lang"] == "en"
    assert english["scores"].rows == 4  # the train row is not scored
    assert english["scores"].accuracy == pytest.approx(0.75)
    turkish = report.datasets["toy_tr"]
    assert turkish["binary"] is True
    assert turkish["licence"] == "CC0 1.0"
    assert turkish["scores"].accuracy == 1.0
    assert turkish["scores"].classes == ["negative", "positive"]
    assert turkish["scores"].confusion[1] == [0, 0, 0]  # never predicts neutral on binary sets
    assert report.bad_lines == {"toy_tr": 2}
    assert set(report.languages) == {"en", "tr"}
    assert report.languages["tr"].accuracy == 1.0


def test_binary_sets_score_argmax_over_negative_positive(tmp_path: Path) -> None:
    root = tmp_path / "b"
    _write_set(root / "set", _rows("b", "ro", [("neutral looking", "pos")]), [])

    def neutral_heavy(texts: list[str], langs: list[str]) -> np.ndarray:
        return np.array([[0.1, 0.8, 0.1 + 0.05]] * len(texts))

    report = evaluate_folder(root, neutral_heavy, "m")
    assert report.datasets["set"]["scores"].accuracy == 1.0


def test_report_files(labelled_folder: Path, tmp_path: Path) -> None:
    report = evaluate_folder(labelled_folder, _keyword_model, "toy-1")
    data = json.loads(write_report(report, tmp_path / "r.json").read_text(encoding="utf-8"))
    assert data["model_version"] == "toy-1"
    assert data["datasets"]["toy_en"]["scores"]["confusion"][0] == [1, 0, 0]
    markdown = write_report(report, tmp_path / "r.md").read_text(encoding="utf-8")
    assert "| toy_tr | tr | neg/pos | 3 | 1.000 |" in markdown


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        evaluate_folder(tmp_path / "nope", _keyword_model, "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no data\.jsonl"):
        evaluate_folder(tmp_path / "empty", _keyword_model, "m")
