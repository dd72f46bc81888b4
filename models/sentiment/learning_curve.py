"""Learning curve of a custom model: a set the model never saw, before and after its labels.

Builds the model without the held-out set (leave-one-dataset-out): the head, and the stack over
it (n-gram models and blends fitted on the other sets, as ``python -m models.sentiment.stack``
does), then imports 200 and 1,000 of the set's own train rows as human labels into a scratch
store and trains candidates exactly as ``feedback train sentiment --db`` does (one label in five
held back for the gate), scoring every model on the set's dev rows, which are never imported.
``--head-only`` starts from the head alone (candidates are then heads, the recipe before stacked
candidates). Prints a markdown table; with ``--out`` writes it too. Nothing from the data sets
is written outside the temporary folder and the feature cache. Run::

    nice -n 10 python -m models.sentiment.learning_curve --heldout turkish_tweets_binary_tr \\
        --out benchmarks/learning_curve.md

``--max-train-rows N`` caps every other set's train rows (N of a seeded shuffle) and the
``datasets`` selection of ``--config`` limits the other sets, to bound the embedding time on a
small CPU; the card states what was used.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models.encoder import Encoder
from models.evaluate import score_predictions, scored_proba
from models.sentiment._datasets import (
    DatasetInfo,
    DatasetSplit,
    discover_datasets,
    read_split,
    shared_datasets_dir,
)
from models.sentiment._features import FeatureCache
from models.sentiment._head import SentimentHead
from models.sentiment._stacking import FLAG_NEGATIVE_THRESHOLD, NEGATIVE_RECALL_TARGET
from models.sentiment.stack import build_stack, stack_splits
from models.sentiment.store_models import SentimentModel, model_proba
from models.sentiment.store_training import train_candidate
from models.sentiment.train import (
    DatasetSelection,
    TrainingConfig,
    load_training_config,
    select_datasets,
    train_head,
)
from pipelines.storage import Label, Store, record_labels, schema

__all__ = ["main"]


def _capped_copy(
    sets: list[DatasetInfo], chosen: list[DatasetInfo], folder: Path, cap: int | None, seed: int
) -> Path:
    """The chosen sets in ``folder``: dev rows whole, train rows capped at ``cap``.

    The capped rows of a set do not depend on which sets are chosen: every set of ``sets`` draws
    from the seeded generator in turn (so cached features are reused across runs).
    """
    generator = np.random.default_rng(seed)
    names = {info.name for info in chosen}
    for info in sets:
        lines = info.path.read_text(encoding="utf-8").splitlines()
        train = [line for line in lines if json.loads(line).get("split") == "train"]
        others = [line for line in lines if json.loads(line).get("split") != "train"]
        if cap is not None and len(train) > cap:
            train = [train[index] for index in sorted(generator.permutation(len(train))[:cap])]
        if info.name in names:
            target = folder / info.name
            target.mkdir(parents=True)
            text = "\n".join(train + others) + "\n"
            (target / "data.jsonl").write_text(text, encoding="utf-8")
    return folder


def _macro_f1(model: SentimentModel, cache: FeatureCache, split: DatasetSplit) -> float:
    texts = split.frame["text"].tolist()
    proba = model_proba(model, cache.embeddings(texts), texts, split.frame["lang"].tolist())
    return score_predictions(split.labels, scored_proba(proba, split.has_neutral)).macro_f1


def _stack_without(
    head_only: SentimentHead, cache: FeatureCache, datasets: Path, config: TrainingConfig
) -> SentimentModel:
    """The stack over ``head_only`` fitted on the sets in ``datasets`` (the held-out one absent)."""
    train, dev = stack_splits(select_datasets(discover_datasets(datasets), config.datasets))
    features = [cache.embeddings(split.frame["text"].tolist()) for split in dev]
    stack, _ = build_stack(
        head_only, train, dev, features, FLAG_NEGATIVE_THRESHOLD, NEGATIVE_RECALL_TARGET
    )
    return stack


def _store_with(pool: DatasetSplit, path: Path) -> Store:
    """A scratch store holding the pool's rows as feedback records."""
    store = Store(path)
    now = datetime.now(UTC)
    store.insert_ignore(
        schema.feedback,
        [
            {
                "id": f"lc-{index}",
                "source": pool.info.name,
                "channel": "review",
                "external_id": str(row.id),
                "created_at": now,
                "text": row.text,
                "lang": row.lang,
                "text_hash": f"lc-{index}",
                "run_id": "learning-curve",
                "ingested_at": now,
            }
            for index, row in enumerate(pool.frame.itertuples(index=False))
        ],
    )
    return store


def main(argv: list[str] | None = None) -> str:
    """Run the learning curve (see the module docstring).

    Args:
        argv: Command-line arguments (None: ``sys.argv``).

    Returns:
        The markdown table.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heldout", default="turkish_tweets_binary_tr")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--config", type=Path, default=None, help="training.yaml")
    parser.add_argument("--datasets", type=Path, default=None, help="../shared/datasets")
    parser.add_argument("--max-train-rows", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--head-only", action="store_true", help="head candidates, no stack")
    args = parser.parse_args(argv)

    config = load_training_config(args.config)
    found = discover_datasets(args.datasets or shared_datasets_dir())
    [heldout] = [info for info in found if info.name == args.heldout]
    candidates = [info for info in found if info.name != args.heldout]
    others = select_datasets(candidates, config.datasets)
    config = config.model_copy(update={"datasets": DatasetSelection()})
    pool = read_split(heldout, "train")
    scored = read_split(heldout, "dev")
    order = np.random.default_rng(config.seed).permutation(len(pool.frame))
    pool.frame = pool.frame.iloc[order].reset_index(drop=True)
    encoder = Encoder.load(dtype=config.encoder_dtype)
    cache = FeatureCache(encoder, layers=config.encoder_layers)
    say = print
    rows = []
    with tempfile.TemporaryDirectory(prefix="feedback-curve-") as scratch:
        datasets = _capped_copy(
            candidates, others, Path(scratch) / "sets", args.max_train_rows, config.seed
        )
        head = train_head(config, cache, datasets, say).head
        base = head if args.head_only else _stack_without(head, cache, datasets, config)
        base_f1 = _macro_f1(base, cache, scored)
        rows.append((0, 0, base_f1, None))
        say(f"without {heldout.name}: macro-F1 {base_f1:.4f} on its {len(scored.frame)} dev rows")
        store = _store_with(pool, Path(scratch) / "curve.duckdb")
        with store:
            labelled = 0
            for size in sorted(args.sizes):
                record_labels(
                    store,
                    [
                        Label(f"lc-{index}", sentiment=("negative", "neutral", "positive")[label])
                        for index, label in enumerate(pool.labels[labelled:size], start=labelled)
                    ],
                )
                labelled = size
                candidate = train_candidate(store, config, encoder, base, datasets, say)
                f1 = _macro_f1(candidate.model, cache, scored)
                rows.append((size, candidate.trained_rows.get("human", 0), f1, candidate.gate))
                say(f"{size} labels: macro-F1 {f1:.4f}; gate passed: {candidate.gate.passed}")
    cap = f"{args.max_train_rows}" if args.max_train_rows else "none"
    lines = [
        f"Held-out set `{heldout.name}` ({len(pool.frame)} train rows to label from, scored on "
        f"its {len(scored.frame)} dev rows); "
        f"{'head' if args.head_only else 'stack (head + n-gram models)'} trained with "
        f"{', '.join(i.name for i in others)}, train rows capped at {cap}; "
        f"{platform.node()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "| labels imported | trained on (1 in 5 held back) | dev macro-F1 | change | gate |",
        "|---:|---:|---:|---:|---|",
    ]
    for size, trained, f1, gate in rows:
        change = "" if size == 0 else f"{(f1 - base_f1) * 100:+.1f} points"
        verdict = "" if gate is None else ("passed" if gate.passed else "; ".join(gate.reasons))
        lines.append(f"| {size} | {trained} | {f1:.3f} | {change} | {verdict} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
    return table


if __name__ == "__main__":
    main()
