"""Cold start of ``feedback analyze`` on 10 short texts: wall time and peak RSS, interleaved.

Each run is a fresh ``feedback analyze`` process (imports, model loads and the 10 texts
included) on the same generated input: 10 complaints in tr, fa, ro and en from
tests/_synthetic_feedback.py. With ``--base FOLDER`` (another checkout, e.g. ``git archive
1c3dab8 | tar -x -C /tmp/base``) the two trees run in turn, round by round, so both see the same
machine load. Peak RSS is the process's own ``ru_maxrss`` from ``os.wait4``. One unmeasured run
per tree first warms the page cache (and this tree's phrase-embedding cache).

Usage: ``python benchmarks/cold_start.py [--base /tmp/base] [--rounds 5] [--texts 10]``; for the
memory of a large input: ``--texts 50000 --unique --rounds 1 --warmup 0``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests._synthetic_feedback import THEMES, synthetic_texts  # noqa: E402

_LANGS = ("tr", "fa", "ro", "en")


def write_input(path: Path, count: int, unique: bool = False) -> None:
    """``count`` short complaints, languages and themes interleaved; with ``unique``, each
    ends with an order number (the templates alone repeat: 2,076 distinct texts in 50,000)."""
    themes = list(THEMES)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            text = synthetic_texts(themes[index % len(themes)], _LANGS[index % 4], 1, index)[0]
            if unique:
                text = f"{text} #{100000 + index}"
            handle.write(json.dumps({"id": f"t{index}", "text": text}, ensure_ascii=False) + "\n")


def run_once(tree: Path, source: Path, output: Path) -> tuple[float, float]:
    """One ``feedback analyze`` in a fresh process: (wall seconds, peak RSS MB)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    command = [
        sys.executable,
        "-c",
        "from flows.cli import app; app()",
        "analyze",
        str(source),
        "-o",
        str(output),
    ]
    started = time.monotonic()
    process = subprocess.Popen(
        command, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{tree}: feedback analyze failed:\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per tree first")
    parser.add_argument("--unique", action="store_true", help="no text repeated")
    arguments = parser.parse_args()
    trees = {"this tree": REPO_ROOT}
    if arguments.base is not None:
        trees["base"] = arguments.base.resolve()
    print(
        f"Date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average at start "
        f"{os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs; {arguments.texts} texts, "
        f"{arguments.rounds} rounds"
    )
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="cold-start-") as name:
        folder = Path(name)
        source = folder / "in.jsonl"
        write_input(source, arguments.texts, arguments.unique)
        for _ in range(arguments.warmup):
            for tree in trees.values():
                run_once(tree, source, folder / "warm.jsonl")
        for round_index in range(arguments.rounds):
            order = list(trees.items())
            if round_index % 2:
                order.reverse()
            for label, tree in order:
                results[label].append(run_once(tree, source, folder / "out.jsonl"))
                wall, peak = results[label][-1]
                print(f"round {round_index + 1} {label}: {wall:.1f} s, {peak:.0f} MB", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print("| tree | wall s median (min-max) | peak RSS MB median (min-max) |")
    print("|---|---:|---:|")
    for label, runs in results.items():
        walls = [wall for wall, _ in runs]
        peaks = [peak for _, peak in runs]
        print(
            f"| {label} | {statistics.median(walls):.1f} ({min(walls):.1f}-{max(walls):.1f}) | "
            f"{statistics.median(peaks):.0f} ({min(peaks):.0f}-{max(peaks):.0f}) |"
        )


if __name__ == "__main__":
    main()
