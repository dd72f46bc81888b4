"""Lean cold start: one encoder per process, aspect example phrases cached on disk, commands
import only what they use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipelines._errors import SourceError
from pipelines.analysis._embedding_lookup import (
    TextEmbedder,
    cached_phrase_vectors,
    process_encoder,
    shared_encoder,
)
from pipelines.analysis.analyze import iter_feedback_file
from pipelines.analysis.aspects import AspectDetector, AspectHeads, AspectStage
from pipelines.analysis.sentiment import SentimentStage
from pipelines.config import DEFAULT_CONFIG_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]


class CountingEmbedder(TextEmbedder):
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self) -> None:
        super().__init__(layers=AspectHeads.load().encoder_layers)
        self.embedded: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded.extend(texts)
        return super().embed(texts)


def test_sentiment_and_aspects_share_one_encoder() -> None:
    from models.encoder import ensure_encoder

    sentiment = SentimentStage.from_config()
    encoder = sentiment.backend.encoder  # type: ignore[attr-defined]
    assert TextEmbedder().encoder is encoder  # what the aspects and topics stages embed with
    assert process_encoder() is encoder
    assert shared_encoder() is encoder is shared_encoder(None, "auto")
    folder = ensure_encoder()
    assert shared_encoder(folder) is shared_encoder(f"{folder}/./")


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AspectDetector]:
    """A phrase cache filled by one detector (every example phrase encoded once)."""
    folder = tmp_path_factory.mktemp("phrases")
    embedder = CountingEmbedder()
    stage = AspectStage(embedder=embedder, phrase_cache=folder)
    detector = stage.detector(embedder)
    phrases = [p for aspect in stage.config.detectable for p in aspect.example_phrases]
    assert sorted(embedder.embedded) == sorted(phrases)
    return folder, detector


def test_cached_example_phrases_are_not_encoded_again(
    filled_cache: tuple[Path, AspectDetector],
) -> None:
    folder, detector = filled_cache
    again = CountingEmbedder()
    cached = AspectStage(embedder=again, phrase_cache=folder).detector(again)
    assert again.embedded == []
    texts = ["The parcel arrived two weeks late", "Personel çok kabaydı"]
    probe = TextEmbedder(layers=AspectHeads.load().encoder_layers).embed(texts)
    langs = ["en", "tr"]
    assert np.array_equal(
        detector.probabilities(probe, texts, langs), cached.probabilities(probe, texts, langs)
    )


def test_changed_examples_encode_only_their_aspect(
    filled_cache: tuple[Path, AspectDetector], tmp_path: Path
) -> None:
    config = yaml.safe_load((DEFAULT_CONFIG_DIR / "aspects.yaml").read_text(encoding="utf-8"))
    cache = tmp_path / "phrases"
    shutil.copytree(filled_cache[0], cache)
    changed = next(aspect for aspect in config["aspects"] if aspect.get("examples"))
    changed["examples"]["en"] = [*changed["examples"].get("en", []), "a brand new example"]
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "aspects.yaml").write_text(
        yaml.safe_dump(config, allow_unicode=True, sort_keys=False), "utf-8"
    )
    # A file cut short by a crash elsewhere is read as missing, never as vectors.
    broken = sorted(cache.iterdir())[-1]
    broken.write_bytes(broken.read_bytes()[:100])

    embedder = CountingEmbedder()
    stage = AspectStage(config_dir=folder, embedder=embedder, phrase_cache=cache)
    stage.detector(embedder)
    expected = {p for phrases in changed["examples"].values() for p in phrases if p}
    assert "a brand new example" in embedder.embedded
    assert expected <= set(embedder.embedded)
    assert set(embedder.embedded) < {
        p for aspect in stage.config.detectable for p in aspect.example_phrases
    }
    assert not list(cache.glob("*.tmp"))


def test_cache_files_are_keyed_by_encoder_version(tmp_path: Path) -> None:
    embedder = TextEmbedder()
    vectors = cached_phrase_vectors(
        [["kargo geç geldi"], ["prices are too high"]], embedder, tmp_path
    )
    assert [v.shape for v in vectors] == [(1, 384), (1, 384)]
    names = sorted(path.name for path in tmp_path.iterdir())
    assert len(names) == 2 and all(name.startswith(embedder.version) for name in names)


_ANALYZE_AND_LIST_MODULES = """
import json, sys
from flows.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = ("prefect", "spacy", "torch", "scipy.optimize", "sqlalchemy", "openpyxl", "httpx")
heavy += ("requests",)
print(json.dumps({"code": code, "loaded": [name for name in heavy if name in sys.modules]}))
"""


def _cli_modules(tmp_path: Path, *command: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_HOME": str(tmp_path / "prefect")}
    result = subprocess.run(
        [sys.executable, "-c", _ANALYZE_AND_LIST_MODULES, *command],
        env=env,
        capture_output=True,
        encoding="utf-8",  # the progress bar is not ASCII, whatever the worker's locale
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_analyze_imports_neither_prefect_nor_a_spreadsheet_reader(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": "1", "text": "Kargo çok geç geldi. Paket de kırıktı."}\n'
        '{"id": "2", "text": "The app crashes at checkout"}\n',
        encoding="utf-8",
    )
    output = tmp_path / "out.jsonl"
    seen = _cli_modules(tmp_path, "analyze", str(source), "-o", str(output))
    assert seen["code"] in (0, None)
    assert len(output.read_text(encoding="utf-8").splitlines()) == 2
    # A JSONL file in, one out: no flow, no spreadsheet reader (spaCy brings HTTP clients).
    assert not {"prefect", "openpyxl"} & set(seen["loaded"])


def test_cli_start_imports_no_spacy_torch_scipy_or_source_readers(tmp_path: Path) -> None:
    seen = _cli_modules(tmp_path, "--help")
    unneeded = {"prefect", "spacy", "torch", "scipy.optimize", "openpyxl", "httpx", "requests"}
    assert not unneeded & set(seen["loaded"])


def test_input_is_read_one_chunk_at_a_time(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": str(i), "text": f"text {i}"}) for i in range(2000)]
    lines[2] = "not json"
    source.write_bytes("\n".join(lines).encode() + b'\n{"id": "x", "text": "\xff"}\n')
    chunks = iter_feedback_file(source, 500)
    frame, bad = next(chunks)  # the invalid byte near the end is not read yet
    assert len(frame) == 499 and frame["id"].iloc[-1] == "499"
    assert [(row.line, row.reason) for row in bad] == [(3, "not a JSON object")]
    with pytest.raises(SourceError, match="not UTF-8"):
        list(chunks)


def test_analyze_refuses_a_bad_file_before_loading_models(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"id": "1", "text": "fine"}\n' * 600 + b'{"id": "2", "text": "\xff"}\n')
    output = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["analyze", str(source), "-o", str(output)])
    assert result.exit_code == 1
    assert "[E010]" in result.output and "not UTF-8" in result.output
    assert list(tmp_path.iterdir()) == [source]


_SPLIT_THEN_TORCH = """
import sys
from pipelines.text import split_sentences, tokens
pieces = split_sentences("Kargo geç geldi. Paket kırıktı!", "tr")
assert pieces == ["Kargo geç geldi.", "Paket kırıktı!"], pieces
without_torch = "torch" not in sys.modules
import torch
print(without_torch, torch.ones(2).sum().item(), tokens("The parcel was late", "en"))
"""


def test_sentences_are_split_without_importing_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _SPLIT_THEN_TORCH], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["True", "2.0"]
