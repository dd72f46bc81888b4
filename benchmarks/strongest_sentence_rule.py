"""Measure a "strongest negative sentence" rule for document labels on every shared dev split.

Usage::

    python benchmarks/strongest_sentence_rule.py [--shared ../shared/datasets] [--cache FILE]

The sentiment stage (committed model, ``configs/sentiment.yaml``) scores every dev document and
its sentences once (cached in ``--cache``). The rule: a multi-sentence document not labelled
negative becomes negative when its most negative sentence reaches ``tau``. For each set, ``tau``
is chosen on the other sets of its language (macro-F1, the grid below; "never" is a choice) and
the set is scored with it: a held-out figure. Also printed: per language, the best ``tau`` chosen
on all its sets (optimistic). Binary sets are scored over negative/positive, as in the card.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.evaluate import score_predictions, scored_proba
from models.sentiment._datasets import discover_datasets, read_split, shared_datasets_dir

NEVER = 1.01
GRID = (*np.round(np.arange(0.5, 0.96, 0.05), 2).tolist(), NEVER)
_CLASSES = ("negative", "neutral", "positive")


def stage_outputs(datasets: Path) -> dict[str, dict]:
    """Document and sentence probabilities of every dev split, from the sentiment stage."""
    from pipelines.analysis.sentiment import SentimentStage
    from pipelines.stages import StageContext
    from pipelines.storage import Store

    stage = SentimentStage.from_config()
    outputs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "s.duckdb") as store:
        context = StageContext(store, "rule", options={"cache_embeddings": False})
        for info in discover_datasets(datasets):
            split = read_split(info, "dev")
            documents: list[list[float]] = []
            sentences: list[np.ndarray] = []
            for start in range(0, len(split.frame), 512):
                chunk = split.frame.iloc[start : start + 512][["id", "text", "lang"]]
                result = stage.run(chunk.reset_index(drop=True), context)
                documents += [[s[c] for c in _CLASSES] for s in result["sentiment_scores"]]
                sentences += [
                    np.array([[e["sentiment_scores"][c] for c in _CLASSES] for e in entries])
                    for entries in result["sentences"]
                ]
            outputs[info.name] = {
                "lang": info.path.parent.parent.name,
                "gold": split.labels,
                "has_neutral": split.has_neutral,
                "documents": np.array(documents),
                "sentences": sentences,
            }
            print(f"scored {info.name} ({len(split.frame)} documents)", file=sys.stderr)
    return outputs


def with_rule(output: dict, tau: float) -> np.ndarray:
    """Document probabilities with the rule applied (a rule-made negative is one-hot)."""
    proba = output["documents"].copy()
    for index, sentences in enumerate(output["sentences"]):
        if len(sentences) > 1 and proba[index].argmax() != 0 and sentences[:, 0].max() >= tau:
            proba[index] = [1.0, 0.0, 0.0]
    return proba


def macro_f1(output: dict, tau: float) -> float:
    """The set's macro-F1 with the rule at ``tau``."""
    proba = scored_proba(with_rule(output, tau), output["has_neutral"])
    return score_predictions(output["gold"], proba).macro_f1


def negative_recall(output: dict, tau: float) -> float:
    """Share of gold-negative documents labelled negative with the rule at ``tau``."""
    predicted = scored_proba(with_rule(output, tau), output["has_neutral"]).argmax(axis=1)
    return float((predicted[output["gold"] == 0] == 0).mean())


def main() -> None:
    """Score the rule and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=shared_datasets_dir())
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rule.pkl")
    arguments = parser.parse_args()
    if arguments.cache.is_file():
        outputs = pickle.loads(arguments.cache.read_bytes())
    else:
        outputs = stage_outputs(arguments.shared)
        arguments.cache.write_bytes(pickle.dumps(outputs))

    def best_tau(names: list[str]) -> float:
        return max(GRID, key=lambda tau: np.mean([macro_f1(outputs[n], tau) for n in names]))

    for lang in sorted({output["lang"] for output in outputs.values()}):
        names = [name for name, output in outputs.items() if output["lang"] == lang]
        tau = best_tau(names)
        before = np.mean([macro_f1(outputs[name], NEVER) for name in names])
        after = np.mean([macro_f1(outputs[name], tau) for name in names])
        print(
            f"{lang}: tau chosen on all its sets {tau}: mean macro-F1 {before:.4f} -> {after:.4f}"
        )
    print("\n| lang | set | macro-F1 now | tau (other sets) | with the rule | neg. recall |")
    print("|---|---|---:|---:|---:|---:|")
    changes = []
    for name, output in outputs.items():
        others = [n for n, o in outputs.items() if o["lang"] == output["lang"] and n != name]
        tau = best_tau(others or [n for n in outputs if n != name])
        now, ruled = macro_f1(output, NEVER), macro_f1(output, tau)
        changes.append(ruled - now)
        print(
            f"| {output['lang']} | {name} | {now:.3f} | {'never' if tau == NEVER else tau} | "
            f"{ruled:.3f} ({(ruled - now) * 100:+.1f}) | {negative_recall(output, NEVER):.3f} -> "
            f"{negative_recall(output, tau):.3f} |"
        )
    print(f"\nmean held-out change: {np.mean(changes) * 100:+.2f} points")


if __name__ == "__main__":
    main()
