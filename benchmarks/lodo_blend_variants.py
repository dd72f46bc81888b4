"""Leave-one-dataset-out macro-F1 of ways to fit a language's stack blend on the other sets.

Usage (after ``python -m models.sentiment.lodo --epochs N``, whose fold heads and n-gram
predictions this reads from the cache)::

    python benchmarks/lodo_blend_variants.py --epochs N

For each held-out set X the blend of X's language is fitted on the dev splits of the other sets
of that language (as ``python -m models.sentiment.lodo`` does), in one of these ways, and X's dev
split is scored:

- ``committed``: n-gram weight (mean per-set macro-F1), temperature (likelihood), class shift
  (pooled macro-F1): ``fit_language_blend``;
- ``no shift``: the same without the class shift;
- ``negative shift only``: the neutral shift kept at 0;
- ``weight 0.3, no shift``: a fixed n-gram weight, the temperature fitted, no shift;
- ``per-class weights``: separate n-gram weights for the polarity classes and for neutral,
  then temperature and shift.

``e5 alone`` is the fold's tempered head. Fewer parameters fitted on the other sets transfer
better or worse: this measures which.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.encoder import Encoder
from models.sentiment._datasets import shared_datasets_dir
from models.sentiment._features import FeatureCache
from models.sentiment._head import binary_proba, softmax
from models.sentiment._stacking import (
    _BIAS_GRID,
    _NEUTRAL_BIAS_GRID,
    _NGRAM_GRID,
    _TEMPERATURE_GRID,
    FLAG_NEGATIVE_THRESHOLD,
    NEGATIVE_RECALL_TARGET,
    _pooled_macro_f1,
    _sets_macro_f1,
    fit_language_blend,
)
from models.sentiment.lodo import (
    _fold_head_proba,
    _macro_f1,
    _ngram_dev,
    load_corpus,
    tuning_rows,
)
from models.sentiment.train import load_training_config

# (class weights of the n-gram part, temperature, class shift) -> probabilities
Mixer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _mixer(weights: np.ndarray, temperature: float, shift: np.ndarray) -> Mixer:
    def mix(e5_log: np.ndarray, ngram_proba: np.ndarray) -> np.ndarray:
        ngram_log = np.log(np.clip(ngram_proba, 1e-9, 1.0))
        return softmax(((1 - weights) * e5_log + weights * ngram_log) / temperature + shift)

    return mix


def _temperature(
    e5_log: np.ndarray, ngram: np.ndarray, gold: np.ndarray, binary: np.ndarray, weights: np.ndarray
) -> float:
    rows = np.arange(len(gold))
    losses = []
    for temperature in _TEMPERATURE_GRID:
        proba = _mixer(weights, float(temperature), np.zeros(3))(e5_log, ngram)
        scored = np.where(binary[:, None], binary_proba(proba), proba)
        losses.append(-np.log(np.maximum(scored[rows, gold], 1e-12)).mean())
    return float(_TEMPERATURE_GRID[int(np.argmin(losses))])


def _shift(
    e5_log: np.ndarray,
    ngram: np.ndarray,
    gold: np.ndarray,
    binary: np.ndarray,
    weights: np.ndarray,
    temperature: float,
    neutral_grid: np.ndarray,
) -> np.ndarray:
    best = (
        _pooled_macro_f1(_mixer(weights, temperature, np.zeros(3))(e5_log, ngram), gold, binary),
        np.zeros(3),
    )
    for neutral in neutral_grid:
        for negative in _BIAS_GRID:
            shift = np.array([negative, neutral, 0.0])
            score = _pooled_macro_f1(
                _mixer(weights, temperature, shift)(e5_log, ngram), gold, binary
            )
            if score > best[0] + 1e-9:
                best = (score, shift)
    return best[1]


def fitted_mixers(
    e5_log: np.ndarray, ngram: np.ndarray, gold: np.ndarray, binary: np.ndarray, owners: np.ndarray
) -> dict[str, Mixer]:
    """Every variant's blend, fitted on one language's tuning rows."""
    committed, _ = fit_language_blend(
        e5_log, ngram, gold, binary, owners, FLAG_NEGATIVE_THRESHOLD, NEGATIVE_RECALL_TARGET
    )
    mixers: dict[str, Mixer] = {
        "committed": _mixer(
            np.full(3, committed.ngram_weight), committed.temperature, np.array(committed.bias)
        )
    }
    plain, _ = fit_language_blend(
        e5_log,
        ngram,
        gold,
        binary,
        owners,
        FLAG_NEGATIVE_THRESHOLD,
        NEGATIVE_RECALL_TARGET,
        fit_bias=False,
    )
    weights = np.full(3, plain.ngram_weight)
    mixers["no shift"] = _mixer(weights, plain.temperature, np.zeros(3))
    mixers["negative shift only"] = _mixer(
        weights,
        plain.temperature,
        _shift(e5_log, ngram, gold, binary, weights, plain.temperature, np.zeros(1)),
    )
    fixed = np.full(3, 0.3)
    mixers["weight 0.3, no shift"] = _mixer(
        fixed, _temperature(e5_log, ngram, gold, binary, fixed), np.zeros(3)
    )
    best = (-1.0, fixed)
    for polarity in _NGRAM_GRID:
        for neutral in _NGRAM_GRID:
            candidate = np.array([polarity, neutral, polarity])
            proba = _mixer(candidate, 1.0, np.zeros(3))(e5_log, ngram)
            score = _sets_macro_f1(proba, gold, binary, owners)
            if score > best[0] + 1e-9:
                best = (score, candidate)
    per_class = best[1]
    temperature = _temperature(e5_log, ngram, gold, binary, per_class)
    mixers["per-class weights"] = _mixer(
        per_class,
        temperature,
        _shift(e5_log, ngram, gold, binary, per_class, temperature, _NEUTRAL_BIAS_GRID),
    )
    return mixers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="as given to the lodo run")
    arguments = parser.parse_args()
    settings = load_training_config()
    cache = FeatureCache(Encoder.load(dtype=settings.encoder_dtype), layers=settings.encoder_layers)
    corpus = load_corpus(shared_datasets_dir(), cache, lambda _: None)
    scores: dict[str, dict[str, float]] = {}
    for held in corpus.names:
        others = [name for name in corpus.names if name != held]
        head = _fold_head_proba(corpus, others, arguments.epochs, print)
        lang = corpus.lang(held)
        tuning = [name for name in others if corpus.lang(name) == lang]
        ngram = _ngram_dev(corpus, others, lang, [*tuning, held])
        mixers = fitted_mixers(*tuning_rows(corpus, tuning, head, ngram))
        scores.setdefault("e5 alone", {})[held] = _macro_f1(corpus.dev[held], head[held])
        e5_log = np.log(np.clip(head[held], 1e-12, 1.0))
        for name, mix in mixers.items():
            scores.setdefault(name, {})[held] = _macro_f1(
                corpus.dev[held], mix(e5_log, ngram[held])
            )
    print("| held-out set | " + " | ".join(scores) + " |\n|---|" + "---:|" * len(scores))
    for held in corpus.names:
        print(f"| {held} | " + " | ".join(f"{scores[v][held]:.3f}" for v in scores) + " |")
    means = " | ".join(f"**{np.mean(list(per.values())):.3f}**" for per in scores.values())
    print(f"| **mean** | {means} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
