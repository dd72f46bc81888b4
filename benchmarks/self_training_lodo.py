"""Measure self-training on a held-out set's own unlabelled texts (leave-one-dataset-out).

Usage::

    python benchmarks/self_training_lodo.py SET [SET ...] [--confidence 0.8] [--weights 0.5 1]

What a company has in plenty is its own unlabelled feedback. For each held-out set X: the e5 head
is trained on the other 13 sets (``configs/training.yaml``), the per-language n-gram model on the
other sets of X's language, and the stack blend chosen on their dev splits (the recipe of
``python -m models.sentiment.lodo``). That stack then labels X's train texts, labels unseen; the
ones it is sure of (top probability >= ``--confidence``) join the n-gram training as weighted
rows, the blend is chosen again, and X's dev split is scored. Needs the cached e5 features of every
set (``FeatureCache``; a first run encodes them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.sentiment._head import SentimentHead, softmax
from models.sentiment._ngram import (
    NgramMetadata,
    NgramModel,
    class_balanced_weights,
    fit_ngram_language,
)
from models.sentiment._stacking import (
    FLAG_NEGATIVE_THRESHOLD,
    NEGATIVE_RECALL_TARGET,
    blend_log_proba,
    fit_language_blend,
)
from models.sentiment.lodo import Corpus, _macro_f1, load_corpus

_METADATA = NgramMetadata(version="self-training")


def fit_ngram(
    corpus: Corpus,
    names: list[str],
    lang: str,
    extra_texts: list[str],
    extra_labels: np.ndarray,
    extra_weight: float,
) -> NgramModel:
    """The language's n-gram model on the train splits of ``names`` plus pseudo-labelled rows
    (three classes, weight ``extra_weight`` each)."""
    splits = [corpus.train[name] for name in names if corpus.lang(name) == lang]
    texts = [text for split in splits for text in split.frame["text"]] + extra_texts
    labels = np.concatenate([*(split.labels for split in splits), extra_labels]).astype(np.int64)
    has_neutral = np.concatenate(
        [
            *(np.full(len(split.frame), split.has_neutral) for split in splits),
            np.ones(len(extra_labels), dtype=bool),
        ]
    )
    weights = np.concatenate(
        [class_balanced_weights(splits), np.full(len(extra_labels), extra_weight)]
    )
    fitted = fit_ngram_language(texts, labels, has_neutral, weights, _METADATA)
    language = NgramMetadata(**{**_METADATA.__dict__, "languages": [lang]})
    return NgramModel({f"{lang}.{key}": value for key, value in fitted.items()}, language)


class HeldOut:
    """The fold of one held-out set: its head (trained without it) and the stack's scoring."""

    def __init__(self, corpus: Corpus, name: str) -> None:
        from models.sentiment.train import (
            fit_head,
            fit_temperature,
            load_training_config,
            stack_features,
        )

        self.corpus, self.name, self.lang = corpus, name, corpus.lang(name)
        self.others = [other for other in corpus.names if other != name]
        train = stack_features(
            [corpus.train[n] for n in self.others], [corpus.train_vectors[n] for n in self.others]
        )
        dev = stack_features(
            [corpus.dev[n] for n in self.others], [corpus.dev_vectors[n] for n in self.others]
        )
        self.head: SentimentHead
        self.head, self.epoch = fit_head(load_training_config(), train, dev, corpus.encoder_version)
        logits = self.head.logits(dev.vectors).astype(np.float64)
        self.temperature = fit_temperature(logits, dev.labels, dev.binary)
        self.tuning = [n for n in self.others if corpus.lang(n) == self.lang]

    def head_log_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Log of the tempered head probabilities."""
        proba = softmax(self.head.logits(vectors).astype(np.float64) / self.temperature)
        return np.log(np.clip(proba, 1e-12, 1.0))

    def stack(self, model: NgramModel) -> tuple[float, np.ndarray]:
        """Blend chosen on the language's other dev splits: held-out dev macro-F1, and the
        stack's probabilities on the held-out set's train texts."""
        corpus = self.corpus

        def ngram(split_name: str, split: str) -> np.ndarray:
            frame = getattr(corpus, split)[split_name].frame
            return model.predict_proba(frame["text"].tolist(), [self.lang] * len(frame))

        blend, _ = fit_language_blend(
            np.concatenate([self.head_log_proba(corpus.dev_vectors[n]) for n in self.tuning]),
            np.concatenate([ngram(n, "dev") for n in self.tuning]),
            np.concatenate([corpus.dev[n].labels for n in self.tuning]),
            np.concatenate(
                [
                    np.full(len(corpus.dev[n].frame), not corpus.dev[n].has_neutral)
                    for n in self.tuning
                ]
            ),
            np.concatenate(
                [np.full(len(corpus.dev[n].frame), i) for i, n in enumerate(self.tuning)]
            ),
            FLAG_NEGATIVE_THRESHOLD,
            NEGATIVE_RECALL_TARGET,
        )
        dev = blend_log_proba(
            self.head_log_proba(corpus.dev_vectors[self.name]), ngram(self.name, "dev"), blend
        )
        train = blend_log_proba(
            self.head_log_proba(corpus.train_vectors[self.name]), ngram(self.name, "train"), blend
        )
        return _macro_f1(corpus.dev[self.name], dev), train


def main() -> None:
    """Run the measurement and print one block per held-out set."""
    from models.encoder import Encoder
    from models.sentiment._datasets import shared_datasets_dir
    from models.sentiment._features import FeatureCache
    from models.sentiment.train import load_training_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+")
    parser.add_argument("--confidence", type=float, default=0.8)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 1.0])
    arguments = parser.parse_args()
    settings = load_training_config()
    cache = FeatureCache(Encoder.load(dtype=settings.encoder_dtype), layers=settings.encoder_layers)
    corpus = load_corpus(
        shared_datasets_dir(),
        cache,
        lambda _: None,
        max_train_rows=settings.datasets.max_train_rows,
    )
    for name in arguments.sets:
        started = time.perf_counter()
        fold = HeldOut(corpus, name)
        plain = fit_ngram(corpus, fold.others, fold.lang, [], np.zeros(0, dtype=np.int64), 0.0)
        before, pseudo = fold.stack(plain)
        sure = pseudo.max(axis=1) >= arguments.confidence
        labels = pseudo.argmax(axis=1)[sure]
        texts = [
            text for text, kept in zip(corpus.train[name].frame["text"], sure, strict=True) if kept
        ]
        agreement = float((labels == corpus.train[name].labels[sure]).mean())
        print(
            f"{name} ({fold.lang}; head epoch {fold.epoch}): stack {before:.3f}; "
            f"{int(sure.sum())} of {len(sure)} unlabelled texts pseudo-labelled at >= "
            f"{arguments.confidence} (agree with the hidden labels: {agreement:.2f})"
        )
        for weight in arguments.weights:
            model = fit_ngram(corpus, fold.others, fold.lang, texts, labels, weight)
            after, _ = fold.stack(model)
            print(f"  weight {weight}: stack {after:.3f} ({(after - before) * 100:+.1f} points)")
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
