"""A model from the store's labels: trained and registered by the CLI, used by analysis once
promoted, dropped again by a rollback (the real encoder, tiny heads and data sets)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from flows.cli import app
from models.encoder import default_cache_root, encoder_version
from models.sentiment import (
    DatasetInfo,
    DatasetSplit,
    HeadMetadata,
    SentimentHead,
    StackedSentiment,
    discover_datasets,
    read_split,
)
from models.sentiment.store_models import SentimentModel, model_artifact_data
from models.sentiment.store_training import (
    STORE_SET,
    StoreLabelSets,
    custom_stack,
    write_training_folder,
)
from pipelines.analysis.sentiment import SentimentStage
from pipelines.stages import StageContext
from pipelines.storage import (
    Label,
    Store,
    list_models,
    model_artifact,
    promote_model,
    record_labels,
    register_model,
    rollback_model,
    schema,
)

_COMMITTED = json.loads(Path("models/heads/sentiment-e5.json").read_text(encoding="utf-8"))
# What the configured stage records without a promoted head: the committed stack over that head.
_COMMITTED_STACK = json.loads(Path("models/heads/sentiment-stack.json").read_text(encoding="utf-8"))


def _always_negative_head() -> SentimentHead:
    """A linear head over the E5 embedding that says negative whatever the text."""
    metadata = HeadMetadata(version="custom-always-negative", encoder_version=encoder_version())
    weights = {"out.weight": np.zeros((3, 384)), "out.bias": np.array([6.0, 0.0, 0.0])}
    return SentimentHead(weights, metadata)


def _promote(store: Store, head: SentimentModel) -> None:
    weights, metadata = model_artifact_data(head)
    register_model(
        store,
        version=head.version,
        kind="sentiment",
        head_metadata=metadata,
        weights=weights,
        metrics={"gate": {"passed": True, "reasons": []}},
        parent_version=_COMMITTED["version"],
    )
    promote_model(store, head.version)


def _analyze(db_url: str, tmp_path: Path) -> list[dict[str, object]]:
    source = tmp_path / "in.jsonl"
    rows = [
        {"id": "1", "text": "Harika bir ürün, çok memnun kaldım, herkese tavsiye ederim."},
        {"id": "2", "text": "Great flight, friendly crew and we landed early. Thank you!"},
    ]
    source.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["analyze", str(source), "-o", str(output), "--db", db_url])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


def test_analyze_db_uses_the_promoted_model_until_rolled_back(db_url: str, tmp_path: Path) -> None:
    head = _always_negative_head()
    with Store(db_url) as store:
        _promote(store, head)
    records = _analyze(db_url, tmp_path)
    assert {record["model_version"] for record in records} == {head.version}
    assert {record["sentiment"] for record in records} == {"negative"}

    with Store(db_url) as store:
        assert rollback_model(store, "sentiment") == (head.version, None)
    records = _analyze(db_url, tmp_path)
    assert {record["model_version"] for record in records} == {_COMMITTED_STACK["version"]}
    assert {record["sentiment"] for record in records} == {"positive"}
    assert not any(record["flagged"] for record in records)

    # The flag rules take the document threshold of the model in use: a stack that keeps its
    # negative recall only at threshold 0 flags these happy reviews.
    committed = StackedSentiment.load("models/heads/sentiment-stack.json")
    eager = custom_stack(committed, committed.head, [])
    eager.metadata.metrics = {
        "negative_operating_point": {
            lang: {"flag_threshold": 0.0, "negative_recall": 1.0} for lang in ("en", "tr")
        }
    }
    with Store(db_url) as store:
        _promote(store, eager)
    records = _analyze(db_url, tmp_path)
    assert {record["model_version"] for record in records} == {eager.version}
    assert all(record["flagged"] for record in records)
    assert all(record["reasons"][0].startswith("negative 0.0") for record in records)


def test_stored_predictions_record_the_promoted_version(store: Store) -> None:
    stage = SentimentStage.from_config()
    batch = pd.DataFrame(
        {"id": ["r1"], "text": ["Kargo çok hızlı geldi, teşekkürler."], "lang": ["tr"]}
    )
    context = StageContext(store, "run-1")
    stage.prepare(context)
    assert stage.version == _COMMITTED_STACK["version"]
    committed_scores = stage.run(batch, context)["sentiment_scores"][0]
    _promote(store, _always_negative_head())
    stage.prepare(context)
    assert stage.version == "custom-always-negative"
    stage.save(stage.run(batch, context), context)
    with store.engine.connect() as connection:
        saved = connection.execute(select(schema.sentiment)).mappings().one()
    assert saved["model_version"] == "custom-always-negative" and saved["label"] == "negative"

    # A promoted stack runs with its n-gram models: the committed stack's parts under a custom
    # version score exactly as the committed stack does (the head alone scores otherwise).
    committed = StackedSentiment.load("models/heads/sentiment-stack.json")
    custom = custom_stack(committed, committed.head, [])
    assert custom.version.startswith("sentiment-custom-") and custom.version != committed.version
    _promote(store, custom)
    stage.prepare(context)
    assert stage.version == custom.version
    assert stage.run(batch, context)["sentiment_scores"][0] == committed_scores


_TINY = {
    "neg": ["Berbat, iki günde bozuldu.", "Çok kötü hizmet, bir daha asla.", "Rezalet kargo."],
    "pos": ["Harika, bayıldım.", "Çok hızlı kargo, teşekkürler.", "Mükemmel ürün, tavsiye ederim."],
    "neu": ["Siparişi salı verdim.", "İki tane aldım.", "Paket bugün geldi."],
}


def _tiny_datasets(folder: Path) -> Path:
    target = folder / "tiny_tr"
    target.mkdir(parents=True)
    lines = [
        {"text": text, "label": label, "split": split, "lang": "tr"}
        for label, texts in _TINY.items()
        for split in ("train", "dev")
        for text in texts
    ]
    (target / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    return folder


def test_custom_stack_refits_the_n_grams_of_the_languages_the_store_labels(
    tmp_path: Path,
) -> None:
    committed = StackedSentiment.load("models/heads/sentiment-stack.json")
    [shared] = [read_split(info, "train") for info in discover_datasets(_tiny_datasets(tmp_path))]
    # Made-up words the shared data never saw, labelled by the company.
    labels = [("zorbix geldi", 0), ("florp geldi", 2)] * 10
    store = DatasetSplit(
        DatasetInfo(STORE_SET, tmp_path / "store", "own"),
        "train",
        pd.DataFrame(
            {
                "id": [f"s{n}" for n in range(len(labels))],
                "text": [f"{text} {n}" for n, (text, _) in enumerate(labels)],
                "label": [label for _, label in labels],
                "lang": "tr",
                "weight": 12.0,
            }
        ),
    )
    custom = custom_stack(committed, committed.head, [shared, store])
    assert custom.ngram.metadata.training["store_labels"] == {"tr": 20}
    assert custom.ngram.version != committed.ngram.version
    assert custom.metadata.languages == committed.metadata.languages
    for name, value in committed.ngram.weights.items():
        changed = not np.array_equal(custom.ngram.weights[name], value)
        assert changed == name.startswith("tr."), name
    # Negative vs positive (the committed model: 0.27 and 0.37 positive): each word takes its
    # label's side.
    proba = custom.ngram.predict_proba(["zorbix geldi", "florp geldi"], ["tr", "tr"])
    polarity = proba[:, 2] / (proba[:, 0] + proba[:, 2])
    assert polarity[0] < 0.2 and polarity[1] > 0.8


def test_store_labels_train_all_three_classes_even_without_a_neutral_one(tmp_path: Path) -> None:
    # People choose among negative, neutral and positive: a record labelled negative is not
    # neutral either, so the store's set is never treated as a binary set like tiny_tr's train
    # split without its neutral rows.
    shared = tmp_path / "shared"
    _tiny_datasets(shared)
    binary = shared / "tiny_tr" / "data.jsonl"
    binary.write_text(
        "\n".join(line for line in binary.read_text().splitlines() if '"neu"' not in line)
    )
    rows = pd.DataFrame(
        {
            "id": ["r1", "r2"],
            "text": ["Kargo gelmedi.", "Harika."],
            "label": [0, 2],
            "lang": "tr",
            "weight": 12.0,
            "kind": "human",
        }
    )
    empty = rows.iloc[0:0, :4]
    folder = write_training_folder(tmp_path / "train", shared, StoreLabelSets(rows, empty))
    splits = {info.name: read_split(info, "train") for info in discover_datasets(folder)}
    assert splits[STORE_SET].info.neutral_choice and splits[STORE_SET].has_neutral
    assert not splits["tiny_tr"].info.neutral_choice and not splits["tiny_tr"].has_neutral


def test_train_sentiment_db_registers_a_candidate_from_the_labels(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Training features go to a cache of the test's own; the converted encoder is shared.
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "encoders").symlink_to(default_cache_root() / "encoders")
    monkeypatch.setenv("FEEDBACK_CACHE_DIR", str(tmp_path / "cache"))
    now = datetime.now(UTC)
    texts = {
        "negative": "Uygulama ödeme adımında sürekli çöküyor, param iki kez çekildi.",
        "positive": "Kurye çok nazikti, siparişim sıcak ve zamanında geldi.",
    }
    with Store(db_url) as store:
        store.insert_ignore(
            schema.feedback,
            [
                {
                    "id": f"r{n}",
                    "source": "reviews",
                    "channel": "review",
                    "created_at": now,
                    "text": f"{texts[sentiment]} ({n})",
                    "rating": 1 if sentiment == "negative" else 5,
                    "lang": "tr",
                    "text_hash": f"r{n}",
                    "run_id": "run-1",
                    "ingested_at": now,
                }
                for n, sentiment in enumerate(["negative", "positive"] * 10)
            ],
        )
        record_labels(
            store,
            [Label(f"r{n}", sentiment="negative" if n % 2 == 0 else "positive") for n in range(12)],
        )
    config = tmp_path / "training.yaml"
    # The default: a warm start from the model in use (the committed stack's head), two epochs.
    config.write_text("custom: {epochs: 2}\n", encoding="utf-8")
    datasets = _tiny_datasets(tmp_path / "datasets")
    args = ["train", "sentiment", "--config", str(config), "--datasets", str(datasets)]
    result = CliRunner().invoke(app, [*args, "--db", db_url])
    assert result.exit_code == 0, result.output
    with Store(db_url) as store:
        [model] = list_models(store, "sentiment")
    # r12..r19 have stars only (weak labels); r1, r2, r5 and r9 are held back for the gate.
    assert model.metrics["store_rows"] == {"human": 8, "rating": 8}
    assert model.metrics["candidate"]["holdout_rows"] == 4
    assert set(model.metrics["candidate"]["languages"]) == {"tr"}
    assert model.status == "candidate"
    assert f"registered {model.version}" in result.output
    with Store(db_url) as store:
        stored = model_artifact(store, model.version).head_metadata
    training = stored["training"]
    assert training["warm_start_from"] == _COMMITTED["version"] and training["best_epoch"] == 2
    # The model in use is the committed stack, so the candidate is a stack too: its Turkish
    # n-gram model refitted with the 16 Turkish store labels, the Turkish blend chosen again on
    # the (Turkish-only) dev rows, the other languages' kept.
    assert model.version.startswith("sentiment-custom-")
    assert model.parent_version == _COMMITTED_STACK["version"]
    assert stored["stack"]["ngram"]["training"]["store_labels"] == {"tr": 16}
    blends = stored["stack"]["blend"]["languages"]
    assert {lang: blends[lang] for lang in ("en", "fa", "ro")} == {
        lang: _COMMITTED_STACK["languages"][lang] for lang in ("en", "fa", "ro")
    }
    assert set(stored["stack"]["blend"]["metrics"]["negative_operating_point"]) == {"tr"}

    # Training is deterministic: --promote registers the same version and obeys its gate.
    result = CliRunner().invoke(app, [*args, "--db", db_url, "--promote"])
    with Store(db_url) as store:
        [again] = list_models(store, "sentiment")
    assert again.version == model.version
    if model.metrics["gate"]["passed"]:
        assert result.exit_code == 0 and again.status == "promoted", result.output
    else:
        assert result.exit_code == 1 and again.status == "candidate"
        assert "Error [E093]" in result.output and "stays in use" in result.output
