"""Peak memory of ``feedback run`` (the nightly flow) against the number of records it analyses.

For each size, a fresh temporary configuration (the embedded defaults: every analysis stage, a
fresh DuckDB file, alerts to an outbox, its own ``$PREFECT_HOME``) reads one JSONL source of
generated complaints in tr, fa, ro and en (tests/_synthetic_feedback.py templates, each made
unique with an order number, spread over 28 days). ``feedback run`` runs as a subprocess while
this script polls the resident memory of its whole process tree (the CLI and the Prefect server
it starts) every 0.2 s. Afterwards it checks that every stored record went through every stage.

Peak memory should stay flat as the input grows: analysis runs ``analysis_chunk_size`` records
at a time (see pipelines/analysis/_runner.py).

Usage: ``python benchmarks/run_memory.py --records 10000 20000 [--chunk-size 2000]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import yaml
from sqlalchemy import func, select

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pipelines.config import DEFAULT_CONFIG_DIR  # noqa: E402
from pipelines.storage import Store, schema  # noqa: E402
from tests._synthetic_feedback import THEMES, synthetic_texts  # noqa: E402

GOAL_PEAK_MB = 2.5 * 1024
_LANGS = ("tr", "fa", "ro", "en")
_START = datetime(2026, 11, 1, tzinfo=UTC)


def write_source(path: Path, count: int, seed: int = 0) -> None:
    """``count`` unique JSONL complaints, the four languages and every theme interleaved."""
    generator = random.Random(seed)
    per_pair = count // (len(THEMES) * len(_LANGS)) + 1
    pools = {
        (theme, lang): synthetic_texts(theme, lang, per_pair, seed)
        for theme in THEMES
        for lang in _LANGS
    }
    keys = list(pools)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            theme, lang = keys[index % len(keys)]
            text = f"{pools[theme, lang][index // len(keys)]} #{100000 + index}"
            created = _START + timedelta(seconds=generator.randrange(28 * 86400))
            row = {"id": f"B{index}", "at": created.isoformat(), "text": text, "lang": lang}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_config(folder: Path, chunk_size: int) -> Path:
    """The embedded configuration, reading ``folder/data/feedback.jsonl`` into a fresh DuckDB."""
    config = folder / "configs"
    shutil.copytree(DEFAULT_CONFIG_DIR, config)
    settings = yaml.safe_load((config / "pipeline.yaml").read_text(encoding="utf-8"))
    settings.update(
        database=str(folder / "feedback.duckdb"),
        reports_dir=str(folder / "reports"),
        outbox_dir=str(folder / "outbox"),
        analysis_chunk_size=chunk_size,
    )
    (config / "pipeline.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    sources = {
        "data_dir": str(folder / "data"),
        "sources": [
            {
                "name": "bench",
                "kind": "jsonl",
                "channel": "review",
                "path": "feedback.jsonl",
                "columns": {"external_id": "id", "created_at": "at", "text": "text"},
            }
        ],
    }
    (config / "sources.yaml").write_text(yaml.safe_dump(sources), encoding="utf-8")
    return config


def _tree_rss(process: psutil.Process) -> tuple[int, int]:
    """(RSS of the whole tree, RSS of ``process`` alone) in bytes."""
    try:
        own = process.memory_info().rss
        children = process.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    total = own
    for child in children:
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total, own


def measure(records: int, chunk_size: int) -> dict[str, float | int]:
    """Run ``feedback run`` on ``records`` generated records; peak RSS, time and coverage."""
    with tempfile.TemporaryDirectory(prefix="run-memory-") as name:
        folder = Path(name)
        (folder / "data").mkdir()
        write_source(folder / "data" / "feedback.jsonl", records)
        config = write_config(folder, chunk_size)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "PREFECT_HOME": str(folder / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # A fresh PREFECT_HOME migrates its database first: slow on a busy 2-core machine.
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        for variable in ("FEEDBACK_DB_URL", "FEEDBACK_SMTP_HOST"):
            env.pop(variable, None)
        command = [
            sys.executable,
            "-c",
            "from flows.cli import app; app()",
            "run",
            "--config",
            str(config),
        ]
        started = time.monotonic()
        with (folder / "run.log").open("wb") as log:
            child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            process = psutil.Process(child.pid)
            peak_tree = peak_main = 0
            while child.poll() is None:
                tree, own = _tree_rss(process)
                peak_tree, peak_main = max(peak_tree, tree), max(peak_main, own)
                time.sleep(0.2)
        wall = time.monotonic() - started
        if child.returncode != 0:
            tail = (folder / "run.log").read_text(encoding="utf-8", errors="replace")[-3000:]
            raise SystemExit(f"feedback run failed ({child.returncode}):\n{tail}")
        with Store(folder / "feedback.duckdb") as store, store.engine.connect() as connection:
            stored = store.count(schema.feedback)
            ledger = schema.stage_results
            per_stage = dict(
                connection.execute(
                    select(ledger.c.stage, func.count()).group_by(ledger.c.stage)
                ).all()
            )
    return {
        "records": records,
        "stored": stored,
        "analysed_min": min(per_stage.values()) if per_stage else 0,
        "stages": len(per_stage),
        "wall_s": round(wall, 1),
        "peak_tree_mb": round(peak_tree / 2**20),
        "peak_main_mb": round(peak_main / 2**20),
    }


def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 20_000])
    parser.add_argument("--chunk-size", type=int, default=2000)
    args = parser.parse_args()
    print(
        f"Machine: {_cpu_model()}, {os.cpu_count()} cores; "
        f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()[0]:.1f}; "
        f"analysis_chunk_size {args.chunk_size}",
        flush=True,
    )
    print(
        "| records | stored | analysed by every stage | wall s | records/s | "
        "peak RSS tree MB | peak RSS CLI MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for records in args.records:
        row = measure(records, args.chunk_size)
        rate = row["records"] / row["wall_s"]
        print(
            f"| {row['records']} | {row['stored']} | {row['analysed_min']} ({row['stages']} "
            f"stages) | {row['wall_s']} | {rate:.0f} | {row['peak_tree_mb']} | "
            f"{row['peak_main_mb']} |",
            flush=True,
        )
        if row["peak_tree_mb"] > GOAL_PEAK_MB:
            print(f"  over the {GOAL_PEAK_MB:.0f} MB goal", flush=True)


if __name__ == "__main__":
    main()
