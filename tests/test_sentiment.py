"""Sentiment: head artifact, training pieces, both backends, the stage and its stored rows."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.numpy
import torch
from sqlalchemy import select

from models.sentiment import FeatureCache, HeadMetadata, SentimentHead, binary_proba
from models.sentiment._datasets import (
    DatasetInfo,
    DatasetSplit,
    capped_split,
    discover_datasets,
    read_split,
)
from models.sentiment.train import (
    HeadSettings,
    TrainingConfig,
    _export,
    _Features,
    _loss,
    _module,
    _warm_module,
    fit_head,
    fit_temperature,
    row_weights,
    select_datasets,
    stack_features,
    train_head,
)
from pipelines._errors import ConfigError, ModelError
from pipelines.analysis._embedding_lookup import embedding_columns
from pipelines.analysis.sentiment import (
    E5HeadBackend,
    HFSequenceClassificationBackend,
    HFSettings,
    SentimentStage,
    load_sentiment_config,
)
from pipelines.ingest.dedupe import text_hash
from pipelines.stages import StageContext
from pipelines.storage import Store, schema
from tests._tiny_models import build_tiny_classifier

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED_HEAD = REPO_ROOT / "models" / "heads" / "sentiment-e5.json"


def _random_head(hidden_dim: int, seed: int = 0) -> SentimentHead:
    generator = np.random.default_rng(seed)
    weights = {
        "out.weight": generator.normal(size=(3, hidden_dim or 384)),
        "out.bias": generator.normal(size=3),
    }
    if hidden_dim:
        weights["hidden.weight"] = generator.normal(size=(hidden_dim, 384))
        weights["hidden.bias"] = generator.normal(size=hidden_dim)
    metadata = HeadMetadata(
        version="test-head", encoder_version="enc-x", hidden_dim=hidden_dim, temperature=1.7
    )
    return SentimentHead(weights, metadata)


@pytest.mark.parametrize("hidden_dim", [0, 8])
def test_head_round_trip_and_probabilities(tmp_path: Path, hidden_dim: int) -> None:
    head = _random_head(hidden_dim)
    embeddings = np.random.default_rng(1).normal(size=(5, 384)).astype(np.float32)
    proba = head.predict_proba(embeddings)
    assert proba.shape == (5, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    metadata_path = head.save(tmp_path / "heads" / "h")
    assert metadata_path.name == "h.json" and (tmp_path / "heads" / "h.safetensors").is_file()
    loaded = SentimentHead.load(metadata_path)
    assert loaded.version == "test-head" and loaded.metadata.temperature == 1.7
    np.testing.assert_allclose(loaded.predict_proba(embeddings), proba, rtol=1e-6)


def test_head_is_stored_at_float16_precision(tmp_path: Path) -> None:
    head = _random_head(8)
    head.save(tmp_path / "h")
    stored = safetensors.numpy.load_file(str(tmp_path / "h.safetensors"))
    assert {value.dtype for value in stored.values()} == {np.dtype(np.float16)}
    for name, value in stored.items():
        np.testing.assert_array_equal(value.astype(np.float32), head.weights[name])
    huge = {"out.weight": np.full((3, 384), 1e6), "out.bias": np.zeros(3)}
    with pytest.raises(ModelError, match="float16 range"):
        SentimentHead(huge, HeadMetadata(version="h", encoder_version="e"))


def test_committed_model_files_stay_small() -> None:
    for path in (REPO_ROOT / "models" / "heads").iterdir():
        assert path.stat().st_size < 2 * 1024 * 1024, f"{path} is over 2 MiB"


def test_temperature_flattens_but_keeps_the_argmax() -> None:
    head = _random_head(0)
    embeddings = np.random.default_rng(2).normal(size=(20, 384))
    sharp = head.predict_proba(embeddings)
    head.metadata.temperature = 10.0
    flat = head.predict_proba(embeddings)
    assert (flat.argmax(axis=1) == sharp.argmax(axis=1)).all()
    assert flat.max(axis=1).mean() < sharp.max(axis=1).mean()


def test_head_errors_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="feedback train sentiment"):
        SentimentHead.load(tmp_path / "missing.json")
    with pytest.raises(ModelError, match=r"expects \(N, 384\)"):
        _random_head(0).predict_proba(np.zeros((2, 10)))


def test_head_features_must_match_its_layers() -> None:
    weights = {"out.weight": np.zeros((3, 768)), "out.bias": np.zeros(3)}
    two_layers = HeadMetadata(
        version="h", encoder_version="e", input_dim=768, encoder_layers=[8, 12]
    )
    assert SentimentHead(weights, two_layers).predict_proba(np.zeros((1, 768))).shape == (1, 3)
    with pytest.raises(ModelError, match="does not match encoder_layers"):
        SentimentHead(weights, HeadMetadata(version="h", encoder_version="e", input_dim=768))
    with pytest.raises(ModelError, match="must end with 12"):
        SentimentHead(
            weights,
            HeadMetadata(version="h", encoder_version="e", input_dim=768, encoder_layers=[8, 10]),
        )


@pytest.mark.parametrize("layers", [[], [12, 4], [4, 4, 12], [4, 8], [-1, 12]])
def test_training_layers_must_increase_and_end_with_the_embedding(layers: list[int]) -> None:
    with pytest.raises(ValueError, match="encoder_layers must be increasing"):
        TrainingConfig(encoder_layers=layers)


@pytest.mark.parametrize("hidden_dim", [0, 3])
def test_exported_weights_do_not_follow_later_training(hidden_dim: int) -> None:
    module = _module(4, HeadSettings(hidden_dim=hidden_dim, dropout=0.0))
    exported = _export(module, np.zeros(4), np.ones(4))
    snapshot = {name: value.copy() for name, value in exported.items()}
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(1.0)
    for name, value in exported.items():
        np.testing.assert_array_equal(value, snapshot[name])


def test_binary_proba_drops_neutral() -> None:
    result = binary_proba(np.array([[0.2, 0.6, 0.2], [0.1, 0.8, 0.1 + 0.0]]))
    np.testing.assert_allclose(result[:, 1], 0.0)
    np.testing.assert_allclose(result[:, [0, 2]].sum(axis=1), 1.0)


def test_binary_rows_never_train_the_neutral_side() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0]], requires_grad=True)
    _loss(logits, torch.tensor([2]), torch.tensor([True]), torch.tensor([1.0])).backward()
    assert logits.grad is not None and logits.grad[0, 1] == 0.0
    # The same row from a 3-class set pushes the neutral logit down.
    three_class = torch.tensor([[1.0, 3.0, 2.0]], requires_grad=True)
    _loss(three_class, torch.tensor([2]), torch.tensor([False]), torch.tensor([1.0])).backward()
    assert three_class.grad is not None and three_class.grad[0, 1] > 0.0


def test_row_weights_balance_classes_and_languages() -> None:
    features = _Features(
        splits=[],
        vectors=np.zeros((6, 2), dtype=np.float32),
        labels=np.array([0, 0, 0, 2, 0, 2]),
        binary=np.array([True, True, True, True, False, False]),
        langs=np.array(["ro", "ro", "ro", "ro", "tr", "tr"]),
        dataset_index=np.array([0, 0, 0, 0, 1, 1]),
    )
    weights = row_weights(features, balance_classes=True, balance_languages=True)
    assert weights.mean() == pytest.approx(1.0)
    # Within the Romanian set the one positive row weighs as much as the three negatives.
    assert weights[3] == pytest.approx(3 * weights[0])
    # Each language has the same total weight.
    assert weights[:4].sum() == pytest.approx(weights[4:].sum())


def _separable(rows: int, seed: int, relabel: bool = False) -> _Features:
    """Features made of two hidden coordinates: the first decides negative (< 0) vs positive;
    with ``relabel``, rows whose second is above 0.5 are negative too."""
    generator = np.random.default_rng(seed)
    hidden = generator.normal(size=(rows, 2))
    mixing = np.random.default_rng(0).normal(size=(2, 384))
    vectors = (hidden @ mixing + generator.normal(scale=0.01, size=(rows, 384))).astype(np.float32)
    negative = (hidden[:, 0] < 0) | (relabel & (hidden[:, 1] > 0.5))
    frame = pd.DataFrame(
        {"id": range(rows), "text": "", "label": np.where(negative, 0, 2), "lang": "tr"}
    )
    if relabel:
        frame["weight"] = 4.0  # people's labels weigh more
    split = DatasetSplit(DatasetInfo(f"set{seed}_tr", Path("."), "test"), "dev", frame)
    return stack_features([split], [vectors])


def _joined(*parts: _Features) -> _Features:
    return stack_features(
        [split for part in parts for split in part.splits], [part.vectors for part in parts]
    )


def test_warm_start_continues_from_the_model_in_use_and_learns_new_labels() -> None:
    config = TrainingConfig.model_validate(
        {
            "epochs": 30,
            "batch_size": 32,
            "learning_rate": 3e-3,
            "head": {"hidden_dim": 32, "dropout": 0.0},
            "encoder_layers": [12],
            "custom": {"epochs": 3, "learning_rate": 1e-3},
        }
    )
    shared = _separable(600, seed=1)
    scores: list[float] = []
    start, kept = fit_head(
        config,
        shared,
        _separable(300, seed=4),
        "enc-1",
        lambda line: scores.append(float(line.split()[-1])),
    )
    # From scratch the best dev epoch is kept, not the last.
    assert scores[kept - 1] == max(scores) > scores[-1]
    # The warm module computes the start's logits from features standardised its own way.
    mean, scale = shared.vectors.mean(axis=0) + 0.01, shared.vectors.std(axis=0) + 0.5
    standardised = torch.from_numpy((shared.vectors - mean) / scale)
    with torch.no_grad():
        warm = _warm_module(start, config, mean, scale)(standardised).numpy()
    np.testing.assert_allclose(warm, start.logits(shared.vectors), atol=1e-4)

    # The company's own labels (weight 4): rows with a large second coordinate are negative too.
    mixed = _joined(shared, _separable(600, seed=2, relabel=True))
    tuned, kept = fit_head(config, mixed, _separable(300, seed=4), "enc-1", start=start)
    assert kept == 3  # the last epoch: no dev set holds the company's labels
    probe, relabelled = _separable(2000, seed=3), _separable(2000, seed=3, relabel=True)
    changed = probe.labels != relabelled.labels
    was, now = (binary_proba(head.predict_proba(probe.vectors)) for head in (start, tuned))
    assert was[changed, 0].mean() < 0.05 and now[changed, 0].mean() > 0.5
    same = was[~changed].argmax(axis=1) == now[~changed].argmax(axis=1)
    assert same.mean() > 0.9  # the rest stays as it was

    linear = config.model_copy(update={"head": HeadSettings(hidden_dim=0)})
    with pytest.raises(ConfigError, match="warm_start: false"):
        fit_head(linear, mixed, shared, "enc-1", start=start)


def test_fit_temperature_recovers_overconfidence() -> None:
    generator = np.random.default_rng(3)
    true_logits = generator.normal(scale=1.5, size=(4000, 3))
    proba = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    labels = np.array([generator.choice(3, p=row) for row in proba])
    fitted = fit_temperature(true_logits * 2.5, labels, np.zeros(len(labels), dtype=bool))
    assert fitted == pytest.approx(2.5, rel=0.15)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny BERT classifier that always favours its label 'POS'."""
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny-bert"), favoured_label=2)


def _write_hf_config(folder: Path, model_dir: Path, labels: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sentiment.yaml").write_text(
        json.dumps(
            {
                "backend": "hf_sequence_classification",
                "hf_sequence_classification": {"path": str(model_dir), "labels": labels},
            }
        ),
        encoding="utf-8",
    )
    return folder


def test_hf_backend_maps_labels_from_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    straight = HFSequenceClassificationBackend(
        HFSettings(
            path=tiny_model_dir, labels={"NEG": "negative", "NEU": "neutral", "POS": "positive"}
        )
    )
    proba = straight.predict_proba(["the food was good", "bad", "unknown words here"], [None] * 3)
    assert proba.shape == (3, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (proba.argmax(axis=1) == 2).all()
    assert straight.version.startswith("hf-")
    # Mapping the model's POS label to our "negative" moves the mass there.
    config_dir = _write_hf_config(
        tmp_path / "cfg", tiny_model_dir, {"NEG": "positive", "NEU": "neutral", "POS": "negative"}
    )
    swapped = SentimentStage.from_config(config_dir).backend
    assert (swapped.predict_proba(["good"], ["en"]).argmax(axis=1) == 0).all()


def test_hf_backend_two_model_labels_onto_one_class(tiny_model_dir: Path) -> None:
    merged = HFSequenceClassificationBackend(
        HFSettings(
            path=tiny_model_dir, labels={"NEG": "negative", "NEU": "positive", "POS": "positive"}
        )
    )
    proba = merged.predict_proba(["ok"], [None])
    assert proba[0, 1] == 0.0 and proba[0, 2] > 0.98


def test_hf_backend_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model labels \['NEU'\]"):
        HFSequenceClassificationBackend(
            HFSettings(path=tiny_model_dir, labels={"NEG": "negative", "POS": "positive"})
        )
    with pytest.raises(ModelError, match=r"no config\.json"):
        HFSequenceClassificationBackend(
            HFSettings(path=tmp_path, labels={"NEG": "negative", "POS": "positive"})
        )


def test_sentiment_config_validation(tmp_path: Path) -> None:
    (tmp_path / "sentiment.yaml").write_text("backend: hf_sequence_classification\n")
    with pytest.raises(ConfigError, match="needs a hf_sequence_classification section"):
        load_sentiment_config(tmp_path)
    (tmp_path / "sentiment.yaml").write_text(
        "backend: hf_sequence_classification\n"
        "hf_sequence_classification: {path: /x, labels: {A: negative}}\n"
    )
    with pytest.raises(ConfigError, match="positive"):
        load_sentiment_config(tmp_path)
    (tmp_path / "sentiment.yaml").write_text("backend: magic\n")
    with pytest.raises(ConfigError, match="key 'backend'"):
        load_sentiment_config(tmp_path)
    assert load_sentiment_config().backend == "e5_head"


def test_stage_with_hf_backend_adds_columns_and_saves(
    tiny_model_dir: Path, tmp_path: Path, store: Store
) -> None:
    config_dir = _write_hf_config(
        tmp_path / "cfg", tiny_model_dir, {"NEG": "negative", "NEU": "neutral", "POS": "positive"}
    )
    stage = SentimentStage.from_config(config_dir)
    batch = pd.DataFrame(
        {
            "id": ["a", "b"],
            "text": ["The food was good. The food was bad.", "ok"],
            "lang": ["en", "en"],
        }
    )
    context = StageContext(store, str(uuid.uuid4()))
    result = stage.run(batch, context)
    assert list(result["sentiment"]) == ["positive", "positive"]
    assert [len(sentences) for sentences in result["sentences"]] == [2, 1]
    assert result["sentences"][0][1]["text"] == "The food was bad."
    assert sum(result["sentiment_scores"][1].values()) == pytest.approx(1.0)
    assert "embedding" not in result.columns  # the HF backend has no document vectors
    assert stage.save(result, context) == 2
    with store.engine.connect() as connection:
        rows = connection.execute(select(schema.sentiment)).mappings().all()
    assert {row["model_version"] for row in rows} == {stage.version}
    assert rows[0]["negative"] + rows[0]["neutral"] + rows[0]["positive"] == pytest.approx(1.0)


# --- The real encoder and the committed head -------------------------------------------------


@pytest.fixture(scope="module")
def e5_stage() -> SentimentStage:
    """The default stage: converted encoder + committed head (built by `make`)."""
    if not COMMITTED_HEAD.is_file():
        pytest.fail(f"{COMMITTED_HEAD} missing; run `feedback train sentiment`")
    return SentimentStage.from_config()


OBVIOUS = [
    ("tr", "Harika bir ürün, çok memnun kaldım, herkese tavsiye ederim.", "positive"),
    ("tr", "Berbat bir ürün, iki gün sonra bozuldu, paramı geri istiyorum.", "negative"),
    ("fa", "کیفیت غذا عالی بود و خیلی سریع رسید، ممنونم.", "positive"),
    ("fa", "غذا سرد و بی‌کیفیت بود، خیلی بد بود و دیگر سفارش نمی‌دهم.", "negative"),
    ("ro", "Produs excelent, funcționează perfect, recomand cu încredere!", "positive"),
    ("ro", "Foarte prost, s-a stricat după o zi, nu recomand nimănui.", "negative"),
    ("en", "Great flight, friendly crew and we landed early. Thank you!", "positive"),
    ("en", "Worst airline ever, lost my bag and nobody helped. Never again.", "negative"),
]


def test_committed_head_on_obvious_sentences(e5_stage: SentimentStage, store: Store) -> None:
    batch = pd.DataFrame(
        {
            "id": [f"r{index}" for index in range(len(OBVIOUS))],
            "text": [text for _, text, _ in OBVIOUS],
            "lang": [lang for lang, _, _ in OBVIOUS],
        }
    )
    result = e5_stage.run(batch, StageContext(store, "run-1"))
    assert list(result["sentiment"]) == [label for _, _, label in OBVIOUS]
    assert result["embedding"][0].shape == (384,)
    assert result["model_version"][0] == e5_stage.version


def test_angry_sentence_in_a_positive_review_surfaces(
    e5_stage: SentimentStage, store: Store
) -> None:
    review = (
        "I have ordered from this shop for years and the quality is always great. "
        "The packaging is lovely and the prices are fair. "
        "But the courier threw my parcel over the fence and broke it, absolutely furious! "
        "Otherwise the customer support team is friendly and helpful."
    )
    batch = pd.DataFrame({"id": ["m1"], "text": [review], "lang": ["en"]})
    result = e5_stage.run(batch, StageContext(store, "run-1"))
    sentences = result["sentences"][0]
    assert len(sentences) == 4
    negatives = [sentence["sentiment_scores"]["negative"] for sentence in sentences]
    angriest = int(np.argmax(negatives))
    assert "furious" in sentences[angriest]["text"]
    # 0.91 with the stack sentiment-stack-da4dba2581 (0.78 with sentiment-stack-184f31b975).
    assert negatives[angriest] > 0.75
    assert max(negatives[:angriest] + negatives[angriest + 1 :]) < 0.5
    # The document as a whole does not read as negative: only the sentence view shows it.
    assert result["sentiment_scores"][0]["negative"] < negatives[angriest] - 0.3
    assert result["sentence_embeddings"][0].shape == (4, 384)


def test_document_embeddings_are_cached_in_the_store(
    e5_stage: SentimentStage, store: Store
) -> None:
    batch = pd.DataFrame({"id": ["c1", "c2"], "text": ["Süper hızlı kargo.", "Çok kötü."]})
    context = StageContext(store, "run-1")
    first = e5_stage.run(batch, context)
    with store.engine.connect() as connection:
        rows = connection.execute(select(schema.embeddings)).mappings().all()
    by_version: dict[str, list[bytes]] = {}
    for row in rows:
        by_version.setdefault(row["model_version"], []).append(row["vector"])
    # The E5 embedding for later stages, and the head's multi-layer features.
    encoder_version = e5_stage.backend.encoder.version  # type: ignore[attr-defined]
    layers = e5_stage.backend.head.metadata.encoder_layers  # type: ignore[attr-defined]
    features_version = f"{encoder_version}@layers-{'-'.join(map(str, layers))}"
    assert sorted(by_version) == sorted([encoder_version, features_version])
    assert {len(vector) for vector in by_version[encoder_version]} == {384 * 4}
    assert {len(vector) for vector in by_version[features_version]} == {384 * len(layers) * 4}

    cached = e5_stage.run(batch, context)
    assert store.count(schema.embeddings) == 4
    np.testing.assert_allclose(cached["embedding"][0], first["embedding"][0])
    assert cached["sentiment_scores"][0] == pytest.approx(first["sentiment_scores"][0])

    # A rerun reads the cached features: give "Çok kötü." the features of the praise.
    table = schema.embeddings
    with store.engine.begin() as connection:
        praise = connection.execute(
            select(table.c.vector).where(
                table.c.model_version == features_version,
                table.c.text_hash == text_hash("Süper hızlı kargo."),
            )
        ).scalar_one()
        connection.execute(
            table.update()
            .where(
                table.c.model_version == features_version,
                table.c.text_hash == text_hash("Çok kötü."),
            )
            .values(vector=praise)
        )
    rerun = e5_stage.run(batch, context)
    assert rerun["sentiment_scores"][1] == pytest.approx(first["sentiment_scores"][0])


def test_committed_head_pools_several_layers_and_hands_on_the_e5_embedding(
    e5_stage: SentimentStage,
) -> None:
    backend = e5_stage.backend
    assert isinstance(backend, E5HeadBackend)
    assert len(backend.head.metadata.encoder_layers) > 1
    texts = ["Kargo çok geç geldi.", "Mâncarea a fost excelentă."]
    _, embeddings = backend.predict_with_embeddings(texts, ["tr", "ro"])
    assert embeddings is not None
    np.testing.assert_allclose(embeddings, backend.encoder.encode(texts), atol=1e-5)


def test_stage_hands_on_the_layer_features_beside_the_e5_embedding(
    e5_stage: SentimentStage, store: Store
) -> None:
    layers = e5_stage.backend.feature_layers
    assert layers is not None
    doc_column, sentence_column = embedding_columns(layers)
    texts = ["Kargo çok geç geldi. Kurye de çok kabaydı.", "Mâncarea a fost excelentă."]
    batch = pd.DataFrame({"id": ["f1", "f2"], "text": texts, "lang": ["tr", "ro"]})
    result = e5_stage.run(batch, StageContext(store, "run-1"))
    features = np.stack(result[doc_column])
    assert features.shape == (2, 384 * len(layers))
    encoded = e5_stage.backend.encoder.encode(texts, layers=layers)
    np.testing.assert_allclose(features, encoded, atol=1e-5)
    np.testing.assert_array_equal(np.stack(result["embedding"]), features[:, -384:])
    sentences = result[sentence_column][0]
    assert sentences.shape == (2, 384 * len(layers))
    np.testing.assert_array_equal(result["sentence_embeddings"][0], sentences[:, -384:])


_TINY_SET = {
    "neg": ["Terrible, it broke after a day.", "Awful support, never again.", "Çok kötü."],
    "pos": ["Wonderful, works perfectly.", "Great support, thank you!", "Harika, bayıldım."],
    "neu": ["The parcel came on Tuesday.", "I ordered two of them.", "Sipariş verdim."],
}


def test_train_head_on_pooled_layers(e5_stage: SentimentStage, tmp_path: Path) -> None:
    folder = tmp_path / "datasets" / "en" / "tiny"
    folder.mkdir(parents=True)
    lines = [
        {"text": text, "label": label, "split": split, "lang": "en"}
        for label, texts in _TINY_SET.items()
        for split in ("train", "dev")
        for text in texts
    ]
    (folder / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    backend = e5_stage.backend
    assert isinstance(backend, E5HeadBackend)
    config = TrainingConfig(encoder_layers=[8, 12], epochs=3, head={"hidden_dim": 0})
    cache = FeatureCache(backend.encoder, cache_root=tmp_path / "cache", layers=[8, 12])
    result = train_head(config, cache, tmp_path / "datasets")
    assert result.head.metadata.encoder_layers == [8, 12]
    assert result.head.metadata.input_dim == 768
    assert result.head.weights["out.weight"].shape == (3, 768)
    assert list(cache.folder.glob("*.npy")) and cache.folder.name == "layers-8-12"
    with pytest.raises(ConfigError, match="feature cache pools layers"):
        train_head(config, FeatureCache(backend.encoder, cache_root=tmp_path), tmp_path)


def test_feature_cache_resumes_from_stored_blocks(
    e5_stage: SentimentStage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = e5_stage.backend
    assert isinstance(backend, E5HeadBackend)
    monkeypatch.setattr("models.sentiment._features.CHUNK_ROWS", 3)
    texts = [text for texts in _TINY_SET.values() for text in texts]
    cache = FeatureCache(backend.encoder, cache_root=tmp_path, layers=[12])
    # An interrupted run left the first block: a marker array, so reuse is visible.
    cache.folder.mkdir(parents=True)
    np.save(cache.path_for(texts[:3]), np.zeros((3, 384), dtype=np.float32))
    vectors = cache.embeddings(texts)
    assert vectors.shape == (9, 384)
    assert not vectors[:3].any()
    expected = backend.encoder.encode(texts[3:], kind="passage", layers=[12])
    np.testing.assert_allclose(vectors[3:], expected, atol=2e-2)
    # Stored block by block: a list of whole blocks of another reuses them, as does a rerun.
    stored = sorted(path.name for path in cache.folder.glob("*.npy"))
    assert stored == sorted(cache.path_for(texts[i : i + 3]).name for i in (0, 3, 6))
    np.testing.assert_array_equal(
        cache.embeddings(texts[:3] + texts[6:]), vectors[[0, 1, 2, 6, 7, 8]]
    )
    np.testing.assert_array_equal(cache.embeddings(texts), vectors)


def test_head_trained_on_another_encoder_is_refused(e5_stage: SentimentStage) -> None:
    backend = e5_stage.backend
    assert isinstance(backend, E5HeadBackend)
    with pytest.raises(ModelError, match="retrain"):
        E5HeadBackend(backend.encoder, _random_head(0))


def test_capped_split_keeps_evenly_spaced_whole_blocks(tmp_path: Path) -> None:
    folder = tmp_path / "sorted"
    folder.mkdir()
    # Sorted by label, like laroseda_ro: a prefix would hold one class only.
    lines = [
        {"text": f"review {i}", "label": "pos" if i < 50 else "neg", "split": "train"}
        for i in range(95)
    ]
    (folder / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    split = read_split(discover_datasets(tmp_path)[0], "train")
    capped = capped_split(split, 40, 10)
    kept = [int(text.split()[1]) for text in capped.frame["text"]]
    assert kept == [*range(0, 10), *range(30, 40), *range(60, 70), *range(90, 95)]
    assert set(capped.labels) == {0, 2}
    assert capped_split(split, 95, 10) is split


def test_cap_on_an_unknown_set_is_refused() -> None:
    found = [DatasetInfo("laroseda_ro", Path("x/data.jsonl"), "CC0")]
    selection = TrainingConfig(datasets={"max_train_rows": {"larosed_ro": 2000}}).datasets
    with pytest.raises(ConfigError, match="larosed_ro"):
        select_datasets(found, selection)


def test_lodo_e5_only_scores_the_head_alone(tmp_path: Path) -> None:
    from models.sentiment.lodo import Corpus, run_lodo

    for name in ("one_en", "two_en"):
        folder = tmp_path / name
        folder.mkdir()
        lines = [
            {"text": f"{name} {i}", "label": ("neg", "pos")[i % 2], "split": "dev", "lang": "en"}
            for i in range(6)
        ]
        (folder / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    infos = discover_datasets(tmp_path)
    dev = {info.name: read_split(info, "dev") for info in infos}
    vectors = {name: np.random.default_rng(1).normal(size=(6, 384)) for name in dev}
    corpus = Corpus(list(dev), {}, dev, {}, vectors, "enc-x")
    result = run_lodo(corpus, list(dev), _random_head(0), say=lambda _: None, e5_only=True)
    assert list(result.scores) == ["e5"] and sorted(result.scores["e5"]) == sorted(dev)
    assert 0.0 <= result.mean("e5") <= 1.0
