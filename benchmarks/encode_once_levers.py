"""Can the sentiment stage encode each token once? Two levers, measured on the dev sets.

Sentence scoring encodes every sentence of a multi-sentence text on top of the document, so a
text costs about 1.5 encoder passes. Two ways to pay only one, both scored with the committed
head on ../shared/datasets dev splits (read, never copied):

1. **Document vector from sentence vectors**: encode only the sentences and take the
   token-weighted mean of their vectors as the document vector (what the encoder already does
   across the windows of a long text). Reported: cosine to the true document vector on
   multi-sentence texts, and document accuracy / macro-F1 with each vector.
2. **Sentence vectors from the document pass**: encode only the document and mean-pool each
   sentence's token span of the last hidden state. Measured on synthetic two-sentence texts: a
   positive and a negative one-sentence dev text joined in random order; reported: how often the
   head gives each half its own label, standalone vs span-pooled.

Usage: ``python benchmarks/encode_once_levers.py [--pairs 150]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from models.encoder import PREFIXES, Encoder  # noqa: E402
from models.evaluate import score_predictions  # noqa: E402
from models.sentiment import (  # noqa: E402
    DatasetSplit,
    SentimentHead,
    binary_proba,
    discover_datasets,
    read_split,
    shared_datasets_dir,
)
from pipelines.analysis.sentiment import load_sentiment_config  # noqa: E402
from pipelines.text import split_sentences  # noqa: E402

_NEGATIVE, _POSITIVE = 0, 2


def _doc_scores(head: SentimentHead, features: np.ndarray, split: DatasetSplit) -> str:
    proba = head.predict_proba(features)
    scores = score_predictions(split.labels, proba if split.has_neutral else binary_proba(proba))
    return f"{scores.accuracy:.3f} / {scores.macro_f1:.3f}"


def _sentence_averaged(
    encoder: Encoder, head: SentimentHead, texts: list[str], langs: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Head features of each text built from its sentences' features; and which texts have >1."""
    pieces = [
        split_sentences(text, lang) or [text] for text, lang in zip(texts, langs, strict=True)
    ]
    flat = [piece for document in pieces for piece in document]
    layers = head.metadata.encoder_layers
    features = encoder.encode(flat, layers=layers).reshape(len(flat), len(layers), -1)
    tokens = np.array(
        [
            max(len(encoding.ids), 1)
            for encoding in encoder.tokenizer.backend_tokenizer.encode_batch(
                [PREFIXES["passage"] + piece for piece in flat], add_special_tokens=False
            )
        ]
    )
    averaged = np.zeros((len(texts), len(layers), features.shape[2]))
    start = 0
    for index, document in enumerate(pieces):
        block = (
            features[start : start + len(document)]
            * tokens[start : start + len(document)][:, None, None]
        )
        summed = block.sum(axis=0)
        averaged[index] = summed / np.linalg.norm(summed, axis=1, keepdims=True)
        start += len(document)
    multi = np.array([len(document) > 1 for document in pieces])
    return averaged.reshape(len(texts), -1), multi


def _span_pooled(
    encoder: Encoder, head: SentimentHead, text: str, spans: Sequence[tuple[int, int]]
) -> list[np.ndarray]:
    """Head features of character spans of ``text``, pooled from one forward pass of ``text``."""
    prefix = PREFIXES["passage"]
    encoding = encoder.tokenizer.backend_tokenizer.encode(prefix + text, add_special_tokens=False)
    ids = [0, *encoding.ids[:510], 2]
    with torch.inference_mode():
        output = encoder.model(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            output_hidden_states=True,
        )
    rows: list[np.ndarray] = []
    for start, end in spans:
        positions = [
            position + 1
            for position, (left, right) in enumerate(encoding.offsets[:510])
            if left >= start + len(prefix) and right <= end + len(prefix) and right > left
        ]
        blocks = []
        for layer in head.metadata.encoder_layers:
            pooled = output.hidden_states[layer][0, positions].float().mean(dim=0).numpy()
            blocks.append(pooled / np.linalg.norm(pooled))
        rows.append(np.concatenate(blocks))
    return rows


def run(pairs: int) -> str:
    """Run both measurements and return the markdown report."""
    settings = load_sentiment_config().e5_head
    head = SentimentHead.load(REPO_ROOT / settings.head)
    encoder = Encoder.load(settings.encoder_path, dtype=settings.encoder_dtype)
    generator = np.random.default_rng(0)
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, head `{head.version}` (layers "
        f"{head.metadata.encoder_layers}), encoder dtype {encoder.dtype}.",
        "",
        "| dev set | multi-sentence texts | cosine doc vs sentence-averaged (multi) | "
        "doc acc / macro-F1 | sentence-averaged acc / macro-F1 | sentence pairs | "
        "halves right: standalone | halves right: span-pooled |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for info in discover_datasets(shared_datasets_dir()):
        split = read_split(info, "dev")
        texts, langs = split.frame["text"].tolist(), split.frame["lang"].tolist()
        documents = encoder.encode(texts, layers=head.metadata.encoder_layers)
        averaged, multi = _sentence_averaged(encoder, head, texts, langs)
        last = slice(-encoder.dim, None)
        cosine = (
            f"{np.mean(np.sum(documents[multi, last] * averaged[multi, last], axis=1)):.3f}"
            if multi.any()
            else "-"
        )
        single = [
            index
            for index, (text, lang) in enumerate(zip(texts, langs, strict=True))
            if len(split_sentences(text, lang)) == 1 and len(text) < 200
        ]
        negatives = [index for index in single if split.labels[index] == _NEGATIVE]
        positives = [index for index in single if split.labels[index] == _POSITIVE]
        count = min(pairs, len(negatives), len(positives))
        standalone_right = span_right = 0
        if count:
            halves: list[str] = []
            gold: list[int] = []
            span_features: list[np.ndarray] = []
            for positive, negative in zip(
                generator.choice(positives, count, replace=False),
                generator.choice(negatives, count, replace=False),
                strict=True,
            ):
                order = [positive, negative] if generator.random() < 0.5 else [negative, positive]
                first, second = texts[order[0]], texts[order[1]]
                joined = f"{first} {second}"
                spans = [(0, len(first)), (len(first) + 1, len(joined))]
                span_features += _span_pooled(encoder, head, joined, spans)
                halves += [first, second]
                gold += [int(split.labels[order[0]]), int(split.labels[order[1]])]
            standalone = head.predict_proba(
                encoder.encode(halves, layers=head.metadata.encoder_layers)
            )
            pooled = head.predict_proba(np.stack(span_features))

            def right(proba: np.ndarray, gold: list[int] = gold) -> float:
                sides = np.where(proba[:, _NEGATIVE] > proba[:, _POSITIVE], _NEGATIVE, _POSITIVE)
                return float(np.mean(sides == np.array(gold)))

            standalone_right, span_right = right(standalone), right(pooled)
        lines.append(
            f"| {info.name} | {multi.mean():.0%} | {cosine} | "
            f"{_doc_scores(head, documents, split)} | {_doc_scores(head, averaged, split)} | "
            f"{count} | {standalone_right:.3f} | {span_right:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments and print the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=150, help="sentence pairs per dev set")
    print(run(parser.parse_args().pairs))


if __name__ == "__main__":
    main()
