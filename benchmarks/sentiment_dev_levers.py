"""Measure more sentiment levers on the dev splits: n-gram variants, head seeds, fine-tuning.

Usage::

    python benchmarks/sentiment_dev_levers.py ngram --langs fa [--zwnj keep|space|drop]
    python benchmarks/sentiment_dev_levers.py seeds --seeds 13 1 2
    python benchmarks/sentiment_dev_levers.py finetune --lang fa --epochs 3

``ngram``: for each language, n-gram models of other settings than the committed one (inverse
regularisation C, naive-Bayes log-count-ratio scaling of the features as in NBSVM, word
1-3-grams, the zero-width non-joiner kept, made a space or dropped) are fitted on the train
splits and blended with the committed e5 head as ``python -m models.sentiment.stack`` blends
(weight, temperature and class shift chosen on dev). The NB scaling folds into the weights
(``w * r``), so a winner would cost nothing at inference.

``seeds``: e5 heads of the committed recipe trained with other seeds, alone and averaged (mean
of log-probabilities), each blended with the committed n-gram models. Needs the cached e5
features of every set (``FeatureCache``; a first run encodes them).

``finetune``: the whole encoder fine-tuned with a linear head on one language's train splits
(see ``finetune_encoder``), alone and blended with the committed n-gram model, after every
epoch; ~11 min per epoch of the Persian sets on 2 CPU cores.

All print the pooled dev macro-F1 per language (the figure of the model card). Every
parameter is chosen on the same dev rows, so only differences between rows mean something.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.encoder import EMBEDDING_DIM, PREFIXES, Encoder, ensure_encoder
from models.evaluate import score_predictions, scored_proba
from models.sentiment._datasets import (
    DatasetSplit,
    capped_split,
    discover_datasets,
    shared_datasets_dir,
)
from models.sentiment._features import FeatureCache
from models.sentiment._head import SentimentHead
from models.sentiment._ngram import (
    NgramMetadata,
    NgramModel,
    class_balanced_weights,
    hashed_features,
)
from models.sentiment._stacking import (
    FLAG_NEGATIVE_THRESHOLD,
    NEGATIVE_RECALL_TARGET,
    fit_language_blend,
)
from models.sentiment.stack import stack_splits
from models.sentiment.train import (
    TrainingConfig,
    _loss,
    load_training_config,
    select_datasets,
    train_head,
)

LANGS = ("en", "fa", "ro", "tr")
ZWNJ = "\u200c"
# name -> (feature settings, C, NB scaling)
NGRAM_VARIANTS: dict[str, tuple[dict[str, list[int]], float, bool]] = {
    "committed (C=4)": ({}, 4.0, False),
    "C=2": ({}, 2.0, False),
    "C=8": ({}, 8.0, False),
    "C=16": ({}, 16.0, False),
    "NB scaling, C=1": ({}, 1.0, True),
    "NB scaling, C=4": ({}, 4.0, True),
    "NB scaling, C=16": ({}, 16.0, True),
    "word 1-3, C=4": ({"word_ngrams": [1, 3]}, 4.0, False),
    "word 1-3, NB scaling, C=4": ({"word_ngrams": [1, 3]}, 4.0, True),
}


def _lang(split: DatasetSplit) -> str:
    return str(split.frame["lang"].mode().iloc[0])


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(values, -40.0, 40.0)))


def _nb_ratio(features: sparse.csr_matrix, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """NBSVM's log-count ratio of every feature (binarised counts, add-one smoothing)."""
    present = features.copy()
    present.data[:] = 1.0
    positive = 1.0 + np.asarray(present[target].T @ weights[target]).ravel()
    negative = 1.0 + np.asarray(present[~target].T @ weights[~target]).ravel()
    return np.log((positive / positive.sum()) / (negative / negative.sum()))


def _fit_part(
    features: sparse.csr_matrix,
    target: np.ndarray,
    weights: np.ndarray,
    regularisation: float,
    nb_scaling: bool,
) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    ratio = _nb_ratio(features, target, weights) if nb_scaling else np.ones(features.shape[1])
    model = LogisticRegression(C=regularisation, max_iter=2000, solver="liblinear")
    model.fit(features @ sparse.diags(ratio), target, sample_weight=weights)
    return model.coef_[0] * ratio, float(model.intercept_[0])


def _pooled_blend_f1(
    dev: Sequence[DatasetSplit], e5_proba: Sequence[np.ndarray], ngram_proba: Sequence[np.ndarray]
) -> tuple[float, float]:
    """(pooled dev macro-F1, n-gram weight) of the blend chosen on ``dev``."""
    blend, point = fit_language_blend(
        np.log(np.clip(np.concatenate(e5_proba), 1e-12, 1.0)),
        np.concatenate(ngram_proba),
        np.concatenate([split.labels for split in dev]),
        np.concatenate([np.full(len(split.frame), not split.has_neutral) for split in dev]),
        np.concatenate([np.full(len(split.frame), index) for index, split in enumerate(dev)]),
        FLAG_NEGATIVE_THRESHOLD,
        NEGATIVE_RECALL_TARGET,
    )
    return point["macro_f1"], blend.ngram_weight


def ngram_variants(
    langs: Sequence[str],
    zwnj: str,
    train: list[DatasetSplit],
    dev: list[DatasetSplit],
    e5_proba: list[np.ndarray],
) -> None:
    """Print the pooled dev macro-F1 of every n-gram variant blended with the head."""
    replacement = {"keep": ZWNJ, "space": " ", "drop": ""}[zwnj]
    for lang in langs:
        members = [index for index, split in enumerate(dev) if _lang(split) == lang]
        splits = [split for split in train if _lang(split) == lang]
        texts = [text.replace(ZWNJ, replacement) for s in splits for text in s.frame["text"]]
        labels = np.concatenate([split.labels for split in splits])
        has_neutral = np.concatenate([np.full(len(s.frame), s.has_neutral) for s in splits])
        weights = class_balanced_weights(splits)
        for name, (settings, regularisation, nb_scaling) in NGRAM_VARIANTS.items():
            started = time.perf_counter()
            metadata = NgramMetadata(version="variant", **settings)
            features = hashed_features(texts, metadata)
            sided = labels != 1
            polarity = _fit_part(
                features[sided], labels[sided] == 2, weights[sided], regularisation, nb_scaling
            )
            neutral = _fit_part(
                features[has_neutral],
                labels[has_neutral] == 1,
                weights[has_neutral],
                regularisation,
                nb_scaling,
            )
            ngram_proba = []
            for index in members:
                rows = hashed_features(
                    [text.replace(ZWNJ, replacement) for text in dev[index].frame["text"]],
                    metadata,
                )
                positive = _sigmoid(rows @ polarity[0] + polarity[1])
                neutral_p = _sigmoid(rows @ neutral[0] + neutral[1])
                ngram_proba.append(
                    np.stack(
                        [(1 - neutral_p) * (1 - positive), neutral_p, (1 - neutral_p) * positive],
                        axis=1,
                    )
                )
            score, weight = _pooled_blend_f1(
                [dev[index] for index in members],
                [e5_proba[index] for index in members],
                ngram_proba,
            )
            print(
                f"{lang} zwnj={zwnj} {name:28s} pooled dev macro-F1 {score:.3f} "
                f"(n-gram weight {weight:.2f}; {time.perf_counter() - started:.0f} s)",
                flush=True,
            )


def seed_heads(
    config: TrainingConfig,
    seeds: Sequence[int],
    cache: FeatureCache,
    dev: list[DatasetSplit],
    features: list[np.ndarray],
) -> None:
    """Print the pooled dev macro-F1 per language of heads of other seeds and of their mean."""
    ngram = NgramModel.load(config.resolved(Path("models/heads/sentiment-ngram")))
    ngram_proba = [
        ngram.predict_proba(split.frame["text"].tolist(), split.frame["lang"].tolist())
        for split in dev
    ]
    log_proba: dict[str, list[np.ndarray]] = {}
    committed = SentimentHead.load(config.resolved(config.output))
    for seed in seeds:
        started = time.perf_counter()
        result = train_head(config.model_copy(update={"seed": seed}), cache)
        print(f"seed {seed}: best epoch {result.best_epoch}, {time.perf_counter() - started:.0f} s")
        log_proba[f"seed {seed}"] = [
            np.log(np.clip(result.head.predict_proba(block), 1e-12, 1.0)) for block in features
        ]
    mean = [np.mean([rows[i] for rows in log_proba.values()], axis=0) for i in range(len(dev))]
    log_proba[f"mean of seeds {list(seeds)}"] = [
        rows - np.log(np.exp(rows).sum(axis=1, keepdims=True)) for rows in mean
    ]
    log_proba = {
        "committed head": [
            np.log(np.clip(committed.predict_proba(block), 1e-12, 1.0)) for block in features
        ]
    } | log_proba
    for name, rows in log_proba.items():
        cells = []
        for lang in LANGS:
            members = [index for index, split in enumerate(dev) if _lang(split) == lang]
            score, weight = _pooled_blend_f1(
                [dev[i] for i in members],
                [np.exp(rows[i]) for i in members],
                [ngram_proba[i] for i in members],
            )
            cells.append(f"{lang} {score:.3f} (a={weight:.2f})")
        print(f"{name:28s} " + " | ".join(cells), flush=True)


def _token_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length (sorted, then cut), so padding stays small."""
    order = np.argsort(lengths, kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _padded(ids: list[list[int]], rows: np.ndarray, pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(ids[row]) for row in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for slot, row in enumerate(rows):
        tokens[slot, : len(ids[row])] = torch.tensor(ids[row])
        mask[slot, : len(ids[row])] = 1
    return tokens, mask


def finetune_encoder(
    lang: str,
    settings: argparse.Namespace,
    train: list[DatasetSplit],
    dev: list[DatasetSplit],
    committed_proba: list[np.ndarray],
    ngram_proba: list[np.ndarray],
) -> None:
    """Fine-tune the whole encoder with a linear head on one language's train splits, printing
    the pooled dev macro-F1 of the model alone and blended with the n-gram model after every
    epoch, next to the committed head's.

    Schedule: AdamW, layer-wise learning-rate decay from the top layer down (the word embedding
    matrix, 96 M of the 118 M weights, stays frozen), linear warm-up over the first tenth of the
    steps, then linear decay to zero; texts tokenised once, batches of similar length.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    folder = ensure_encoder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(folder)
    classifier = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(EMBEDDING_DIM, 3))

    def tokenised(splits: Sequence[DatasetSplit]) -> list[list[int]]:
        texts = [PREFIXES["passage"] + text for split in splits for text in split.frame["text"]]
        return tokenizer(texts, truncation=True, max_length=settings.max_tokens)["input_ids"]

    def forward(tokens: Any, mask: Any) -> Any:
        hidden = encoder(input_ids=tokens, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return classifier((hidden * weights).sum(1) / weights.sum(1))

    splits = [split for split in train if _lang(split) == lang]
    members = [index for index, split in enumerate(dev) if _lang(split) == lang]
    if settings.train_rows:
        splits = [capped_split(split, settings.train_rows, 50) for split in splits]
    train_ids = tokenised(splits)
    labels = torch.tensor(np.concatenate([split.labels for split in splits]))
    binary = torch.tensor(
        np.concatenate([np.full(len(s.frame), not s.has_neutral) for s in splits])
    )
    row_weight = torch.tensor(class_balanced_weights(splits), dtype=torch.float32)
    lengths = np.array([len(ids) for ids in train_ids])
    print(f"{lang}: {len(train_ids)} train rows, {lengths.sum()} tokens", flush=True)

    embeddings = encoder.embeddings
    embeddings.word_embeddings.weight.requires_grad_(False)
    layers = encoder.encoder.layer
    groups = [
        {
            "params": [p for p in embeddings.parameters() if p.requires_grad],
            "lr": settings.lr * settings.layer_decay ** len(layers),
        }
    ]
    groups += [
        {
            "params": list(layer.parameters()),
            "lr": settings.lr * settings.layer_decay ** (len(layers) - 1 - depth),
        }
        for depth, layer in enumerate(layers)
    ]
    groups.append({"params": list(classifier.parameters()), "lr": settings.head_lr})
    optimiser = torch.optim.AdamW(groups, weight_decay=0.01)
    batches = _token_batches(lengths, settings.batch_size)
    steps = settings.epochs * len(batches)
    warm_up = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: min((step + 1) / warm_up, max(0.0, (steps - step) / (steps - warm_up))),
    )
    dev_ids = tokenised([dev[index] for index in members])
    dev_batches = _token_batches(np.array([len(ids) for ids in dev_ids]), 64)
    dev_splits = [dev[index] for index in members]
    bounds = np.cumsum([0] + [len(split.frame) for split in dev_splits])
    gold = np.concatenate([split.labels for split in dev_splits])

    def report(name: str, proba: list[np.ndarray]) -> None:
        pooled = score_predictions(
            gold,
            np.concatenate(
                [scored_proba(p, s.has_neutral) for p, s in zip(proba, dev_splits, strict=True)]
            ),
        ).macro_f1
        blended, weight = _pooled_blend_f1(dev_splits, proba, [ngram_proba[i] for i in members])
        per_set = " ".join(
            f"{split.info.name.split('_')[0]} "
            f"{score_predictions(split.labels, scored_proba(rows, split.has_neutral)).macro_f1:.3f}"
            for rows, split in zip(proba, dev_splits, strict=True)
        )
        print(
            f"{name:24s} alone {pooled:.3f} | with n-grams {blended:.3f} (a={weight:.2f}) "
            f"| {per_set}",
            flush=True,
        )

    report("committed head", [committed_proba[index] for index in members])
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        encoder.train()
        classifier.train()
        for step, batch in enumerate(rng.permutation(len(batches)), start=1):
            rows = batches[batch]
            tokens, mask = _padded(train_ids, rows, tokenizer.pad_token_id)
            loss = _loss(forward(tokens, mask), labels[rows], binary[rows], row_weight[rows])
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            optimiser.step()
            schedule.step()
            if step % 50 == 0:
                print(
                    f"  epoch {epoch} step {step}/{len(batches)} loss {loss.item():.3f} "
                    f"{time.perf_counter() - started:.0f} s",
                    flush=True,
                )
        encoder.eval()
        classifier.eval()
        proba = np.zeros((len(dev_ids), 3))
        with torch.no_grad():
            for rows in dev_batches:
                tokens, mask = _padded(dev_ids, rows, tokenizer.pad_token_id)
                proba[rows] = torch.softmax(forward(tokens, mask), dim=1).numpy()
        report(
            f"fine-tuned, epoch {epoch}",
            [proba[bounds[i] : bounds[i + 1]] for i in range(len(dev_splits))],
        )
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ngram = commands.add_parser("ngram")
    ngram.add_argument("--langs", nargs="+", default=list(LANGS))
    ngram.add_argument("--zwnj", choices=["keep", "space", "drop"], default="keep")
    seeds = commands.add_parser("seeds")
    seeds.add_argument("--seeds", type=int, nargs="+", default=[13, 1, 2])
    finetune = commands.add_parser("finetune")
    finetune.add_argument("--lang", default="fa")
    finetune.add_argument("--epochs", type=int, default=2)
    finetune.add_argument("--batch-size", type=int, default=32)
    finetune.add_argument("--max-tokens", type=int, default=128)
    finetune.add_argument("--lr", type=float, default=5e-5)
    finetune.add_argument("--layer-decay", type=float, default=0.85)
    finetune.add_argument("--head-lr", type=float, default=1e-3)
    finetune.add_argument("--seed", type=int, default=13)
    finetune.add_argument("--train-rows", type=int, default=0, help="cap per set (quick checks)")
    arguments = parser.parse_args()

    config = load_training_config()
    cache = FeatureCache(Encoder.load(dtype=config.encoder_dtype), layers=config.encoder_layers)
    chosen = select_datasets(discover_datasets(shared_datasets_dir()), config.datasets)
    train, dev = stack_splits(chosen)
    features = [cache.embeddings(split.frame["text"].tolist()) for split in dev]
    print(f"encoder features: {cache.encoder.dtype}")
    if arguments.command == "ngram":
        head = SentimentHead.load(config.resolved(config.output))
        e5_proba = [head.predict_proba(block) for block in features]
        ngram_variants(arguments.langs, arguments.zwnj, train, dev, e5_proba)
    elif arguments.command == "seeds":
        seed_heads(config, arguments.seeds, cache, dev, features)
    else:
        head = SentimentHead.load(config.resolved(config.output))
        ngram = NgramModel.load(config.resolved(Path("models/heads/sentiment-ngram")))
        finetune_encoder(
            arguments.lang,
            arguments,
            train,
            dev,
            [head.predict_proba(block) for block in features],
            [
                ngram.predict_proba(split.frame["text"].tolist(), split.frame["lang"].tolist())
                for split in dev
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
