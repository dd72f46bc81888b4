"""Leave-one-dataset-out (LODO) macro-F1 of the sentiment recipes on the shared sets.

For every set X: train on the train splits of the pool without X (their dev splits choose the
epoch, temperature and blend), then score X's dev split. Sets outside the pool are scored by
the model trained on the whole pool (they are held out already). This measures how the model
does on data unlike what it was trained on.

Usage::

    python -m models.sentiment.lodo [--pool all|old] [--head HEAD.json] [--epochs N] [--out F]

Every run scores three recipes at once: ``e5`` (the head), ``ngram`` (per-language hashed
n-gram models alone) and ``stack`` (both blended per language with the class shifts of
:mod:`models.sentiment._stacking`). ``--pool old`` trains on the nine sets of the first head
(``sentiment-e5-00e5dfea1f``). ``--head`` uses a committed head instead of training one per
fold (fast, but the sets that head was trained on are then not held out for e5/stack and are
reported as "seen"). Fold heads, n-gram fold predictions and their dev probabilities are cached
under ``<cache root>/lodo/`` (numbers only, no text).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.evaluate import score_predictions, scored_proba
from models.sentiment._datasets import DatasetSplit, capped_split, discover_datasets, read_split
from models.sentiment._features import CHUNK_ROWS, FeatureCache
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

__all__ = [
    "OLD_POOL",
    "RECIPES",
    "Corpus",
    "LodoResult",
    "load_corpus",
    "main",
    "ngram_for",
    "run_lodo",
    "tuning_rows",
]

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
    datasets_dir: Path,
    cache: FeatureCache,
    say: Callable[[str], None],
    train_features: bool = True,
    max_train_rows: dict[str, int] | None = None,
) -> Corpus:
    """Read every set's splits with their e5 features.

    Args:
        datasets_dir: Folder of labelled sets.
        cache: Feature cache (computes what is missing).
        say: Progress callback.
        train_features: Also the train splits' features (not needed with a frozen head).
        max_train_rows: Set -> train-row cap (``training.yaml`` ``datasets.max_train_rows``).

    Returns:
        The corpus.
    """
    corpus = Corpus([], {}, {}, {}, {}, cache.encoder.version)
    for info in discover_datasets(datasets_dir):
        train, dev = read_split(info, "train"), read_split(info, "dev")
        cap = (max_train_rows or {}).get(info.name)
        if cap is not None:
            train = capped_split(train, cap, CHUNK_ROWS)
        if train.frame.empty or dev.frame.empty:
            continue
        corpus.names.append(info.name)
        corpus.train[info.name], corpus.dev[info.name] = train, dev
        say(f"features of {info.name}")
        if train_features:
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


RECIPES = ("e5", "ngram", "stack")


@dataclass
class LodoResult:
    """Leave-one-dataset-out macro-F1 per recipe and set.

    Attributes:
        scores: Recipe -> set name -> dev macro-F1.
        leaked: Recipe -> sets whose score is not held out (a frozen head trained on them).
        blends: Set name -> the stack's parameters chosen without it.
    """

    scores: dict[str, dict[str, float]]
    leaked: dict[str, list[str]]
    blends: dict[str, dict[str, object]]

    def mean(self, recipe: str) -> float:
        """Mean over the sets held out for ``recipe``."""
        values = [
            value for name, value in self.scores[recipe].items() if name not in self.leaked[recipe]
        ]
        return float(np.mean(values)) if values else float("nan")


def _ngram_dev(
    corpus: Corpus, names: list[str], lang: str, targets: list[str]
) -> dict[str, np.ndarray]:
    """N-gram probabilities on the dev splits of ``targets`` (a model of ``lang`` on ``names``)."""
    from models.encoder import default_cache_root

    metadata = NgramMetadata(version="lodo")
    key = hashlib.sha256(
        json.dumps([sorted(names), lang, sorted(targets), asdict(metadata)]).encode()
    ).hexdigest()[:16]
    path = default_cache_root() / "lodo" / f"ngram-{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}
    model = ngram_for(corpus, names, lang, metadata)
    result = {
        name: model.predict_proba(
            corpus.dev[name].frame["text"].tolist(), [lang] * len(corpus.dev[name].frame)
        )
        for name in targets
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **result)
    return result


def tuning_rows(
    corpus: Corpus,
    tuning: list[str],
    head: dict[str, np.ndarray],
    ngram: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The dev rows of ``tuning`` as ``fit_language_blend`` takes them.

    Args:
        corpus: The corpus.
        tuning: Sets whose dev splits choose the blend.
        head: Set -> tempered e5-head probabilities on its dev split.
        ngram: Set -> n-gram probabilities on its dev split.

    Returns:
        (e5 log-probabilities, n-gram probabilities, gold labels, binary-set flags, set index).
    """
    return (
        np.log(np.clip(np.concatenate([head[name] for name in tuning]), 1e-12, 1.0)),
        np.concatenate([ngram[name] for name in tuning]),
        np.concatenate([corpus.dev[name].labels for name in tuning]),
        np.concatenate(
            [np.full(len(corpus.dev[n].frame), not corpus.dev[n].has_neutral) for n in tuning]
        ),
        np.concatenate([np.full(len(corpus.dev[n].frame), i) for i, n in enumerate(tuning)]),
    )


def _fold(
    corpus: Corpus,
    names: list[str],
    targets: list[str],
    head: dict[str, np.ndarray],
    say: Callable[[str], None],
    e5_only: bool = False,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, object]]]:
    """Every recipe's dev probabilities of ``targets``, trained on ``names``."""
    result: dict[str, dict[str, np.ndarray]] = {recipe: {} for recipe in RECIPES}
    blends: dict[str, dict[str, object]] = {}
    if e5_only:
        return {"e5": {name: head[name] for name in targets}}, blends
    for lang in sorted({corpus.lang(name) for name in targets}):
        wanted = [name for name in targets if corpus.lang(name) == lang]
        tuning = [name for name in names if corpus.lang(name) == lang]
        ngram = _ngram_dev(corpus, names, lang, tuning + wanted)
        blend, _ = fit_language_blend(
            *tuning_rows(corpus, tuning, head, ngram),
            FLAG_NEGATIVE_THRESHOLD,
            NEGATIVE_RECALL_TARGET,
        )
        say(f"  {lang}: {blend}")
        for name in wanted:
            blends[name] = asdict(blend)
            result["e5"][name] = head[name]
            result["ngram"][name] = ngram[name]
            result["stack"][name] = blend_log_proba(
                np.log(np.clip(head[name], 1e-12, 1.0)), ngram[name], blend
            )
    return result, blends


def run_lodo(
    corpus: Corpus,
    pool: list[str],
    frozen_head: SentimentHead | None = None,
    epochs: int | None = None,
    say: Callable[[str], None] = print,
    only: list[str] | None = None,
    e5_only: bool = False,
) -> LodoResult:
    """Leave-one-dataset-out dev macro-F1 of every set, for the three recipes.

    Args:
        corpus: The corpus.
        pool: Sets the recipes may train on.
        frozen_head: Use this head's probabilities instead of training one per fold (its own
            training sets are then marked leaked for the e5 and stack recipes).
        epochs: Override of the head's epochs (None: training.yaml's).
        say: Progress callback.
        only: Score only these sets (None: every set).
        e5_only: Score the e5 head alone (no n-gram models to fit per fold).

    Returns:
        The scores.
    """
    recipes = ("e5",) if e5_only else RECIPES
    result = LodoResult({recipe: {} for recipe in recipes}, {r: [] for r in recipes}, {})
    if frozen_head is not None:
        seen = {entry["name"] for entry in frozen_head.metadata.datasets}
        result.leaked["e5"] = result.leaked["stack"] = sorted(seen & set(corpus.names))
        fixed = {name: frozen_head.predict_proba(corpus.dev_vectors[name]) for name in corpus.names}

    def heads(names: list[str]) -> dict[str, np.ndarray]:
        return fixed if frozen_head is not None else _fold_head_proba(corpus, names, epochs, say)

    wanted = set(only or corpus.names)
    folds = [
        ([other for other in pool if other != name], [name]) for name in pool if name in wanted
    ]
    outside = [name for name in corpus.names if name not in pool and name in wanted]
    if outside:
        folds.append((list(pool), outside))
    for names, targets in folds:
        say(f"scoring {targets} (trained on {len(names)} sets)")
        predicted, blends = _fold(corpus, names, targets, heads(names), say, e5_only)
        result.blends.update(blends)
        for recipe in recipes:
            for name in targets:
                result.scores[recipe][name] = _macro_f1(corpus.dev[name], predicted[recipe][name])
        say("  " + ", ".join(f"{r} {result.scores[r][targets[0]]:.4f}" for r in recipes))
    for recipe in recipes:
        result.scores[recipe] = {
            name: result.scores[recipe][name] for name in corpus.names if name in wanted
        }
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring).

    Args:
        argv: Arguments (None: ``sys.argv``).

    Returns:
        Exit status.
    """
    from models.sentiment._datasets import shared_datasets_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", choices=("all", "old"), default="all")
    parser.add_argument(
        "--head", type=Path, default=None, help="frozen head instead of one trained per fold"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="score only these sets")
    parser.add_argument("--datasets", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--e5-only", action="store_true", help="score the e5 head alone")
    arguments = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    from models.encoder import Encoder
    from models.sentiment.train import load_training_config

    settings = load_training_config()
    cache = FeatureCache(Encoder.load(dtype=settings.encoder_dtype), layers=settings.encoder_layers)
    frozen = SentimentHead.load(arguments.head) if arguments.head else None
    corpus = load_corpus(
        arguments.datasets or shared_datasets_dir(),
        cache,
        say,
        train_features=frozen is None,
        max_train_rows=settings.datasets.max_train_rows,
    )
    pool = list(OLD_POOL) if arguments.pool == "old" else list(corpus.names)
    result = run_lodo(
        corpus, pool, frozen, arguments.epochs, say, arguments.only, arguments.e5_only
    )
    recipes = list(result.scores)
    print("| set | lang | " + " | ".join(recipes) + " |\n|---|---|" + "---:|" * len(recipes))
    for name in result.scores["e5"]:
        cells = [
            f"{result.scores[r][name]:.3f}" + (" (seen)" if name in result.leaked[r] else "")
            for r in recipes
        ]
        print(f"| {name} | {corpus.lang(name)} | " + " | ".join(cells) + " |")
    print(
        "| **mean (held out)** | | " + " | ".join(f"{result.mean(r):.3f}" for r in recipes) + " |"
    )
    if arguments.out is not None:
        arguments.out.write_text(
            json.dumps(
                {
                    "pool": arguments.pool,
                    "head": str(arguments.head) if arguments.head else None,
                    "epochs": arguments.epochs,
                    "scores": result.scores,
                    "leaked": result.leaked,
                    "means": {r: result.mean(r) for r in recipes},
                    "blends": result.blends,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
