"""Issue 14 acceptance: this checkout vs a base checkout of main, interleaved A/B/A/B in one run.

Per round (the order of base and branch alternates from round to round, because this shared
host's speed drifts from minute to minute):

1. CLI: ``feedback analyze IN.jsonl -o OUT.jsonl`` (``flows.cli:app``) in a fresh process on
   ``--n`` short texts (cold start included: imports, models, every analyze stage), default
   configuration.
2. In process: one warm worker process per checkout (``feedback_pipeline.Analyzer``, default
   configuration, 512-row chunks like the CLI) analyses the round's ``--inproc-n`` texts; a third
   worker (this checkout, ``engine: torch``, ``encoder_dtype: fp32``) gives the fp32 labels that
   both are compared with.
3. Bare encoder: the sentiment stage's encoder alone on the same texts (document pass, the
   head's layers), per checkout.

Also: the host's matmul peak measured with torch (2048x2048 matmuls on every core this process
may use; bf16 on CPUs with native bf16, else fp32, the type the encoder then runs in) and the
share of it the branch reaches, counting ~43 MFLOP per token
(multilingual-e5-small: 2 x 21.7M non-embedding weights) over the tokens of documents and of
the sentences the stage scores.

Texts come from ``benchmarks/encoder_speed.py``'s ``build_texts`` (../shared, read at run time);
its 5,000 texts hold 2,551 distinct ones. ``--distinct`` ends each text with an order number, so
no text repeats (identical strings are encoded once per step).

Usage: ``python benchmarks/engine_speed.py --base /tmp/base [--n 5000] [--inproc-n 600]
[--rounds 3]``; the base checkout: ``git worktree add /tmp/base 1c3dab8`` or
``mkdir /tmp/base_1c3dab8 && git archive 1c3dab8 | tar -x -C /tmp/base_1c3dab8`` (the folder
name is then reported as its commit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOP_PER_TOKEN = 43e6
LAYERS = (4, 6, 8, 10, 12)


def _write_input(texts: Sequence[str], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for index, text in enumerate(texts):
            handle.write(json.dumps({"id": f"b{index}", "text": text}, ensure_ascii=False) + "\n")
    return path


def _env(checkout: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(checkout),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PREFECT_HOME=str(checkout / ".prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def _run_cli(checkout: Path, input_path: Path, output: Path) -> dict[str, float]:
    command = [sys.executable, "-c", "from flows.cli import app; app()"]
    command += ["analyze", str(input_path), "-o", str(output)]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=checkout, env=_env(checkout), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0 or not output.is_file():
        raise SystemExit(f"{checkout}: analyze failed: {process.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "load": os.getloadavg()[0]}


def _labels(path: Path) -> list[str]:
    return [
        json.loads(line).get("sentiment") for line in path.read_text(encoding="utf-8").splitlines()
    ]


class _Worker:
    """A warm analyze process of one checkout, driven through stdin/stdout JSON lines."""

    def __init__(self, checkout: Path, config_dir: Path | None = None) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        if config_dir is not None:
            command += ["--config", str(config_dir)]
        self.process = subprocess.Popen(
            command,
            cwd=checkout,
            env=_env(checkout),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._read()

    def _read(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("a benchmark worker died; see its stderr above")
        return json.loads(line)

    def ask(self, command: str, path: Path) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"command": command, "path": str(path)}) + "\n")
        self.process.stdin.flush()
        answer = self._read()
        answer["load"] = os.getloadavg()[0]
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _worker(config: str | None) -> None:
    """Worker side: load the analyzer once, then analyse / encode the files it is sent."""
    started = time.perf_counter()
    from feedback_pipeline import Analyzer
    from pipelines.analysis.analyze import read_feedback_file

    analyzer = Analyzer(config, None)
    analyzer.__enter__()
    sentiment = next(stage for stage in analyzer.stages if stage.name == "sentiment")
    backend = sentiment.backend
    encoder = backend.encoder
    print(
        json.dumps(
            {
                "load_s": time.perf_counter() - started,
                "engine": getattr(encoder, "engine", "torch"),
                "dtype": encoder.dtype,
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        request = json.loads(line)
        frame, _ = read_feedback_file(Path(request["path"]))
        started = time.perf_counter()
        if request["command"] == "analyze":
            labels: list[str] = []
            for start in range(0, len(frame), 512):
                labels += list(analyzer.run(frame.iloc[start : start + 512])["sentiment"])
            answer = {"seconds": time.perf_counter() - started, "labels": labels}
        else:
            texts = [str(text) for text in frame["text"]]
            encoder.encode(texts, batch_size=backend.batch_size, layers=LAYERS)
            answer = {"seconds": time.perf_counter() - started}
        print(json.dumps(answer), flush=True)
    analyzer.__exit__(None, None, None)


def _matmul_peak_gflops() -> tuple[float, str]:
    """The host's matmul peak in the type the encoder computes in: bf16 where the CPU has it.

    Without native bf16 (AMX or AVX512-BF16) torch emulates it at a few GFLOP/s and the
    pipeline runs the encoder in fp32, so fp32 is the peak that bounds it there.
    """
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from models.encoder import cpu_supports_bf16

    dtype = "bf16" if cpu_supports_bf16() else "fp32"
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    size = 2048
    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    left = torch.randn(size, size, dtype=kind)
    right = torch.randn(size, size, dtype=kind)
    for _ in range(3):
        left @ right
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9, dtype


def _tokens_per_text(texts: Sequence[str]) -> tuple[float, float]:
    """Mean tokens per text encoded by the stage: document pass, and documents + sentences."""
    sys.path.insert(0, str(REPO_ROOT))
    from tokenizers import Tokenizer

    from models.encoder import ensure_encoder
    from pipelines.text import split_sentences

    tokenizer = Tokenizer.from_file(str(ensure_encoder() / "tokenizer.json"))

    def count(pieces: list[str]) -> int:
        encoded = tokenizer.encode_batch(
            ["passage: " + p for p in pieces], add_special_tokens=False
        )
        return sum(len(encoding.ids) + 2 for encoding in encoded)

    documents = count(list(texts))
    sentences = [
        s for text in texts if (parts := split_sentences(text, None)) != [text] for s in parts
    ]
    return documents / len(texts), (documents + count(sentences)) / len(texts)


def _cpu() -> tuple[str, str]:
    name, flags = platform.processor() or "unknown", ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            wanted = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512f", "avx2")
            flags = " ".join(flag for flag in wanted if flag in line.split())
    return name, flags


def _agreement(left: Sequence[str], right: Sequence[str]) -> float:
    return sum(a == b for a, b in zip(left, right, strict=True)) / len(left)


def _numbered(texts: Sequence[str], distinct: bool) -> list[str]:
    return (
        [f"{text} #{100000 + index}" for index, text in enumerate(texts)]
        if distinct
        else list(texts)
    )


def run(base: Path, count: int, inproc_count: int, rounds: int, distinct: bool = False) -> str:
    """Run every measurement; return the markdown report."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from encoder_speed import build_texts

    checkouts = {"base": base.resolve(), "branch": REPO_ROOT}
    commits = {
        name: subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True
        ).stdout.strip()
        or path.name
        for name, path in checkouts.items()
    }
    started_at = datetime.now(UTC)
    load_start = os.getloadavg()
    peak, peak_dtype = _matmul_peak_gflops()
    cli: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    inproc: dict[str, list[float]] = {name: [] for name in checkouts}
    bare: dict[str, list[float]] = {name: [] for name in checkouts}
    labels: dict[str, list[str]] = {"base": [], "branch": [], "fp32": []}
    cli_labels: dict[str, list[str]] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as scratch_name:
        scratch = Path(scratch_name)
        cli_input = _write_input(_numbered(build_texts(count), distinct), scratch / "cli.jsonl")
        fp32_config = scratch / "fp32-config"
        fp32_config.mkdir()
        for path in (REPO_ROOT / "configs").iterdir():
            text = path.read_text(encoding="utf-8") if path.is_file() else None
            if text is not None and path.name == "sentiment.yaml":
                text = text.replace("engine: auto", "engine: torch").replace(
                    "encoder_dtype: auto", "encoder_dtype: fp32"
                )
            if text is not None:
                (fp32_config / path.name).write_text(text, encoding="utf-8")
        workers = {name: _Worker(path) for name, path in checkouts.items()}
        reference = _Worker(REPO_ROOT, fp32_config)
        inproc_texts: list[str] = []
        for round_index in range(rounds):
            order = list(checkouts) if round_index % 2 == 0 else list(reversed(checkouts))
            texts = _numbered(build_texts(inproc_count, seed=100 + round_index), distinct)
            inproc_texts += texts
            chunk = _write_input(texts, scratch / f"round{round_index}.jsonl")
            for name in order:
                output = scratch / f"cli-{name}-{round_index}.jsonl"
                cli[name].append(_run_cli(checkouts[name], cli_input, output))
                cli_labels[name] = _labels(output)
                answer = workers[name].ask("analyze", chunk)
                inproc[name].append(answer["seconds"])
                labels[name] += answer["labels"]
                bare[name].append(workers[name].ask("encode", chunk)["seconds"])
                loads += [cli[name][-1]["load"], answer["load"]]
            labels["fp32"] += reference.ask("analyze", chunk)["labels"]
            print(f"round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
        engines = {name: worker.ready for name, worker in workers.items()}
        for worker in (*workers.values(), reference):
            worker.close()

    doc_tokens, all_tokens = _tokens_per_text(inproc_texts)
    cpu_name, flags = _cpu()
    total = {name: sum(run["seconds"] for run in cli[name]) for name in checkouts}
    cli_rate = {name: count * rounds / total[name] for name in checkouts}
    inproc_rate = {name: inproc_count * rounds / sum(inproc[name]) for name in checkouts}
    bare_rate = {name: inproc_count * rounds / sum(bare[name]) for name in checkouts}
    lines = [
        f"`benchmarks/engine_speed.py --n {count} --inproc-n {inproc_count} --rounds {rounds}"
        f"{' --distinct' if distinct else ''}`, "
        f"{started_at:%Y-%m-%d %H:%M} UTC. Machine: **{cpu_name} ({flags})**, "
        f"{len(os.sched_getaffinity(0))} cores available (shared with other jobs), Python "
        f"{platform.python_version()}. Load average (1 min) at start {load_start[0]:.1f}, during "
        f"the runs {min(loads):.1f}-{max(loads):.1f}. base = main at {commits['base']} "
        f"(encoder {engines['base']['engine']} {engines['base']['dtype']}), branch = "
        f"{commits['branch']} (encoder {engines['branch']['engine']} "
        f"{engines['branch']['dtype']}). Measured {peak_dtype} matmul peak: "
        f"**{peak:.0f} GFLOP/s**.",
        "",
        f"| {cpu_name} ({flags}) | base docs/s | branch docs/s | ratio | per-round ratios |",
        "|---|---:|---:|---:|---|",
        _row(f"`feedback analyze` CLI, {count} texts, cold start incl.", cli_rate, cli, "cli"),
        _row(f"in process (Analyzer), {inproc_count} texts/round", inproc_rate, inproc, "in"),
        _row("bare encoder (document pass, layers 4-12)", bare_rate, bare, "in"),
        "",
        f"- CLI wall per run: base {_list(run['seconds'] for run in cli['base'])} s, branch "
        f"{_list(run['seconds'] for run in cli['branch'])} s; peak RSS base "
        f"{max(run['peak_rss_mb'] for run in cli['base']):.0f} MB, branch "
        f"{max(run['peak_rss_mb'] for run in cli['branch']):.0f} MB.",
        f"- Document labels identical to torch fp32 ({len(labels['fp32'])} in-process texts): "
        f"branch {_agreement(labels['branch'], labels['fp32']):.2%}, base "
        f"{_agreement(labels['base'], labels['fp32']):.2%}; CLI outputs branch vs base "
        f"{_agreement(cli_labels['branch'], cli_labels['base']):.2%} of {count}.",
        f"- Tokens per text: {doc_tokens:.1f} (document) / {all_tokens:.1f} (documents + scored "
        f"sentences) -> {all_tokens * FLOP_PER_TOKEN / 1e9:.2f} GFLOP per text in analyze. "
        f"Share of the {peak_dtype} peak: in process branch "
        f"{inproc_rate['branch'] * all_tokens * FLOP_PER_TOKEN / 1e9 / peak:.0%}, base "
        f"{inproc_rate['base'] * all_tokens * FLOP_PER_TOKEN / 1e9 / peak:.0%}; bare encoder "
        f"branch {bare_rate['branch'] * doc_tokens * FLOP_PER_TOKEN / 1e9 / peak:.0%}, base "
        f"{bare_rate['base'] * doc_tokens * FLOP_PER_TOKEN / 1e9 / peak:.0%}.",
        f"- Warm worker load (imports + models): base {engines['base']['load_s']:.1f} s, branch "
        f"{engines['branch']['load_s']:.1f} s.",
    ]
    return "\n".join(lines)


def _list(values: object) -> str:
    return "/".join(f"{value:.1f}" for value in values)  # type: ignore[attr-defined]


def _row(title: str, rate: dict[str, float], runs: dict, kind: str) -> str:
    seconds = {
        name: [run["seconds"] if kind == "cli" else run for run in runs[name]] for name in runs
    }
    ratios = "/".join(
        f"{base / branch:.2f}"
        for base, branch in zip(seconds["base"], seconds["branch"], strict=True)
    )
    return (
        f"| {title} | {rate['base']:.1f} | {rate['branch']:.1f} | "
        f"**{rate['branch'] / rate['base']:.2f}x** | {ratios} |"
    )


def main() -> None:
    """Parse arguments; print the report (or serve as a worker)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="checkout of main to compare with")
    parser.add_argument("--n", type=int, default=5000, help="texts per CLI run")
    parser.add_argument("--inproc-n", type=int, default=600, help="texts per in-process round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--distinct", action="store_true", help="no text repeated")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        _worker(arguments.config)
        return
    if arguments.base is None:
        parser.error("--base is required")
    print(
        run(arguments.base, arguments.n, arguments.inproc_n, arguments.rounds, arguments.distinct)
    )


if __name__ == "__main__":
    main()
