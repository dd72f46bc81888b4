"""Leave-one-dataset-out (LODO) macro-F1 of a sentiment recipe on the shared sets.

For every set X: train the recipe on the train splits of the pool without X (its dev splits
choose the epoch, temperature and blend), then score X's dev split. Sets outside the pool are
scored by the model trained on the whole pool (they are held out already). This measures how
the model does on data unlike what it was trained on.

Usage::

    python -m models.sentiment.lodo --recipe stack [--pool all|old] [--epochs 15] [--out F.json]

Recipes: ``e5`` (the head of ``configs/training.yaml``), ``ngram`` (per-language hashed n-gram
models alone), ``stack`` (both, blended per language, with the class shifts of
:mod:`models.sentiment._stacking`). ``--pool old`` trains on the nine sets of the first head
(``sentiment-e5-00e5dfea1f``), the baseline of issue 12. Fold heads and their dev
probabilities are cached under ``<cache root>/lodo/`` (no text), so the recipes share them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.evaluate import score_predictions, scored_proba
from models.sentiment._datasets import DatasetSplit, discover_datasets, read_split
from models.sentiment._features import FeatureCache
from models.sentiment._head import softmax
from models.sentiment._ngram import (
    NgramMetadata,
    NgramModel,
    class_balanced_weights,
    fit_ngram_language,
)
from models.sentiment._stacking import blend_log_proba, fit_language_blend

__all__ = ["OLD_POOL", "Corpus", "load_corpus", "main", "ngram_for", "run_lodo"]

# The sets the first head (sentiment-e5-00e5dfea1f) was trained on.
OLD_POOL = (
    "semeval16_laptops_en",
    "semeval16_restaurants_en",
    "twitter_us_airline_sentiment_en",
    "sentipers_fa",
    "snappfood_comments_fa",
    "laroseda_ro",
    "sart_tweets_ro",
    "magaza_yorumlari_tr",
    "semeval16_restaurants_tr",
)
FLAG_NEGATIVE_THRESHOLD = 0.70
NEGATIVE_RECALL_TARGET = 0.90


@dataclass
class Corpus:
    """Every set's train and dev split with their cached e5 features."""

    names: list[str]
    train: dict[str, DatasetSplit]
    dev: dict[str, DatasetSplit]
    train_vectors: dict[str, np.ndarray]
    dev_vectors: dict[str, np.ndarray]
    encoder_version: str

    def lang(self, name: str) -> str:
        """Main language of a set."""
        return str(self.dev[name].frame["lang"].mode().iloc[0])


def load_corpus(
    datasets_dir: Path, cache: FeatureCache | None, say: Callable[[str], None]
) -> Corpus:
    """Read every set's splits (and features when ``cache`` is given).

    Args:
        datasets_dir: Folder of labelled sets.
        cache: Feature cache; None skips the e5 features (n-gram recipe only).
        say: Progress callback.

    Returns:
        The corpus.
    """
    corpus = Corpus([], {}, {}, {}, {}, cache.encoder.version if cache else "")
    for info in discover_datasets(datasets_dir):
        train, dev = read_split(info, "train"), read_split(info, "dev")
        if train.frame.empty or dev.frame.empty:
            continue
        corpus.names.append(info.name)
        corpus.train[info.name], corpus.dev[info.name] = train, dev
        if cache is not None:
            say(f"features of {info.name}")
            corpus.train_vectors[info.name] = cache.embeddings(train.frame["text"].tolist())
            corpus.dev_vectors[info.name] = cache.embeddings(dev.frame["text"].tolist())
    return corpus


def ngram_for(corpus: Corpus, names: list[str], lang: str, metadata: NgramMetadata) -> NgramModel:
    """Fit one language's n-gram model on the train splits of ``names`` in that language.

    Args:
        corpus: The corpus.
        names: Training sets (others' languages are ignored).
        lang: Language code.
        metadata: Feature settings (its ``languages`` is replaced by ``[lang]``).

    Returns:
        A model for ``lang`` alone.
    """
    splits = [corpus.train[name] for name in names if corpus.lang(name) == lang]
    texts = [text for split in splits for text in split.frame["text"]]
    labels = np.concatenate([split.labels for split in splits])
    has_neutral = np.concatenate([np.full(len(s.frame), s.has_neutral) for s in splits])
    fitted = fit_ngram_language(
        texts, labels, has_neutral, class_balanced_weights(splits), metadata
    )
    language_metadata = NgramMetadata(**{**metadata.__dict__, "languages": [lang]})
    return NgramModel({f"{lang}.{key}": value for key, value in fitted.items()}, language_metadata)


def _fold_head_proba(
    corpus: Corpus, names: list[str], epochs: int | None, say: Callable[[str], None]
) -> dict[str, np.ndarray]:
    """Tempered e5-head probabilities on every dev split, for a head trained on ``names``."""
    from models.encoder import default_cache_root
    from models.sentiment.train import (
        fit_head,
        fit_temperature,
        load_training_config,
        stack_features,
    )

    config = load_training_config()
    if epochs is not None:
        config.epochs = epochs
    key = hashlib.sha256(
        json.dumps([sorted(names), config.model_dump(mode="json"), corpus.encoder_version]).encode()
    ).hexdigest()[:16]
    path = default_cache_root() / "lodo" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}
    train = stack_features(
        [corpus.train[name] for name in names], [corpus.train_vectors[name] for name in names]
    )
    dev = stack_features(
        [corpus.dev[name] for name in names], [corpus.dev_vectors[name] for name in names]
    )
    head, epoch = fit_head(config, train, dev, corpus.encoder_version)
    logits = head.logits(dev.vectors).astype(np.float64)
    temperature = fit_temperature(logits, dev.labels, dev.binary)
    say(f"  head on {len(names)} sets: best epoch {epoch}, T {temperature:.2f}")
    result = {
        name: softmax(head.logits(corpus.dev_vectors[name]).astype(np.float64) / temperature)
        for name in corpus.names
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **result)
    return result


def _macro_f1(split: DatasetSplit, proba: np.ndarray) -> float:
    return score_predictions(split.labels, scored_proba(proba, split.has_neutral)).macro_f1


def _predict(
    recipe: str,
    corpus: Corpus,
    names: list[str],
    targets: list[str],
    epochs: int | None,
    say: Callable[[str], None],
) -> dict[str, np.ndarray]:
    """Dev probabilities of ``targets`` from the recipe trained on ``names``."""
    head = _fold_head_proba(corpus, names, epochs, say) if recipe != "ngram" else None
    result: dict[str, np.ndarray] = {}
    for lang in sorted({corpus.lang(name) for name in targets}):
        wanted = [name for name in targets if corpus.lang(name) == lang]
        if recipe == "e5":
            assert head is not None
            result.update({name: head[name] for name in wanted})
            continue
        ngram = ngram_for(corpus, names, lang, NgramMetadata(version="lodo"))

        def ngram_proba(name: str, model: NgramModel = ngram, code: str = lang) -> np.ndarray:
            frame = corpus.dev[name].frame
            return model.predict_proba(frame["text"].tolist(), [code] * len(frame))

        if recipe == "ngram":
            result.update({name: ngram_proba(name) for name in wanted})
            continue
        assert head is not None
        tuning = [name for name in names if corpus.lang(name) == lang]
        blend, _ = fit_language_blend(
            np.log(np.concatenate([head[name] for name in tuning])),
            np.concatenate([ngram_proba(name) for name in tuning]),
            np.concatenate([corpus.dev[name].labels for name in tuning]),
            np.concatenate(
                [np.full(len(corpus.dev[n].frame), not corpus.dev[n].has_neutral) for n in tuning]
            ),
            np.concatenate([np.full(len(corpus.dev[n].frame), i) for i, n in enumerate(tuning)]),
            FLAG_NEGATIVE_THRESHOLD,
            NEGATIVE_RECALL_TARGET,
        )
        say(
            f"  {lang}: n-gram weight {blend.ngram_weight}, T {blend.temperature:.2f}, "
            f"bias {blend.bias}"
        )
        for name in wanted:
            result[name] = blend_log_proba(np.log(head[name]), ngram_proba(name), blend)
    return result


def run_lodo(
    recipe: str,
    corpus: Corpus,
    pool: list[str],
    epochs: int | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, float]:
    """Leave-one-dataset-out dev macro-F1 of every set of the corpus.

    Args:
        recipe: ``e5``, ``ngram`` or ``stack``.
        corpus: The corpus.
        pool: Sets the recipe may train on.
        epochs: Override of the head's epochs (None: training.yaml's).
        say: Progress callback.

    Returns:
        Set name -> macro-F1 on its dev split.
    """
    scores: dict[str, float] = {}
    for name in pool:
        say(f"without {name}")
        others = [other for other in pool if other != name]
        proba = _predict(recipe, corpus, others, [name], epochs, say)[name]
        scores[name] = _macro_f1(corpus.dev[name], proba)
        say(f"  {name}: {scores[name]:.4f}")
    outside = [name for name in corpus.names if name not in pool]
    if outside:
        say(f"pool model for {outside}")
        predicted = _predict(recipe, corpus, list(pool), outside, epochs, say)
        for name in outside:
            scores[name] = _macro_f1(corpus.dev[name], predicted[name])
            say(f"  {name}: {scores[name]:.4f}")
    return {name: scores[name] for name in corpus.names}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring).

    Args:
        argv: Arguments (None: ``sys.argv``).

    Returns:
        Exit status.
    """
    from models.sentiment._datasets import shared_datasets_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=("e5", "ngram", "stack"), default="stack")
    parser.add_argument("--pool", choices=("all", "old"), default="all")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--datasets", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    arguments = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    cache = None
    if arguments.recipe != "ngram":
        from models.encoder import Encoder
        from models.sentiment.train import load_training_config

        settings = load_training_config()
        cache = FeatureCache(
            Encoder.load(dtype=settings.encoder_dtype), layers=settings.encoder_layers
        )
    corpus = load_corpus(arguments.datasets or shared_datasets_dir(), cache, say)
    pool = list(OLD_POOL) if arguments.pool == "old" else list(corpus.names)
    scores = run_lodo(arguments.recipe, corpus, pool, arguments.epochs, say)
    print("| set | lang | LODO macro-F1 |\n|---|---|---:|")
    for name, value in scores.items():
        print(f"| {name} | {corpus.lang(name)} | {value:.3f} |")
    print(f"| **mean** | | **{np.mean(list(scores.values())):.3f}** |")
    if arguments.out is not None:
        arguments.out.write_text(
            json.dumps(
                {
                    "recipe": arguments.recipe,
                    "pool": arguments.pool,
                    "epochs": arguments.epochs,
                    "scores": scores,
                    "mean": float(np.mean(list(scores.values()))),
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
