"""Nightly-run throughput: the local executor against Dask with 1 and 2 workers, interleaved.

Each measurement is one nightly flow (every analysis stage, in-process Prefect with a temporary
server) on a fresh database holding nothing: it reads one JSONL source of ``--records``
generated complaints (tests/_synthetic_feedback.py templates via benchmarks/run_memory.py) and
analyses them in chunks of ``--chunk-size``. Modes:

* ``local``: ``executor: {kind: local}``, chunk tasks in the flow's process;
* ``dask-N-cold``: ``executor: {kind: dask, n_workers: N}``, a temporary ``LocalCluster`` the
  run starts (worker processes, each loading the models) and closes;
* ``dask-N-warm``: ``executor: {kind: dask, address: ...}`` of a ``LocalCluster`` of N workers
  started once by this script and warmed by one untimed run (models loaded, as with long-lived
  ``dask worker`` processes).

Rounds interleave the modes (round 1: every mode, round 2: every mode...) so a change in the
load of the shared machine hits every mode alike; the load average is printed with each row.
Also prints what each run added to Prefect's result storage (``$PREFECT_HOME/storage``).

Usage: ``python benchmarks/dask_throughput.py --records 2000 --chunk-size 500 --rounds 2``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from run_memory import _cpu_model, write_config, write_source  # noqa: E402

from pipelines.config import DEFAULT_CONFIG_DIR  # noqa: E402


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _configure(folder: Path, chunk_size: int, executor: dict[str, Any], demo: bool) -> Path:
    config = folder / "configs"
    if config.exists():
        shutil.rmtree(config)
    write_config(folder, chunk_size)
    if demo:  # the demo sources instead of the generated one
        sources = (DEFAULT_CONFIG_DIR / "sources.yaml").read_text(encoding="utf-8")
        (config / "sources.yaml").write_text(
            sources.replace("data_dir: ../demo", f"data_dir: {REPO_ROOT / 'demo'}"),
            encoding="utf-8",
        )
    settings = yaml.safe_load((config / "pipeline.yaml").read_text(encoding="utf-8"))
    if executor["kind"] != "local":  # unset for local: the script also runs on older trees
        settings["executor"] = executor
    (config / "pipeline.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    return config


def run_once(
    folder: Path, chunk_size: int, executor: dict[str, Any], records: int, demo: bool = False
) -> dict:
    """One nightly run on a fresh DuckDB file; wall time and what it analysed."""
    from flows.nightly import nightly

    config = _configure(folder, chunk_size, executor, demo)
    for leftover in ("outbox", "reports"):
        shutil.rmtree(folder / leftover, ignore_errors=True)
    # A new file per run: the flows keep one Store (and its created schema) per URL and process.
    database = folder / f"run-{len(list(folder.glob('run-*.duckdb')))}.duckdb"
    load = os.getloadavg()[0]
    started = time.perf_counter()
    summary = nightly(config_dir=str(config), db=str(database))
    wall = time.perf_counter() - started
    if not demo and summary.analysed != records:
        raise SystemExit(f"analysed {summary.analysed} of {records} records")
    return {"wall_s": wall, "load": load, "analysed": summary.analysed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--demo", action="store_true", help="the demo data, not generated")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["local", "dask-1-warm", "dask-2-warm", "dask-1-cold", "dask-2-cold"],
    )
    args = parser.parse_args()

    from distributed import LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    print(
        f"Machine: {_cpu_model()}, {os.cpu_count()} cores; "
        f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{args.records} records, analysis_chunk_size {args.chunk_size}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="dask-throughput-") as name:
        folder = Path(name)
        (folder / "data").mkdir()
        write_source(folder / "data" / "feedback.jsonl", args.records)
        clusters: dict[str, LocalCluster] = {}
        walls: dict[str, list[float]] = {mode: [] for mode in args.modes}
        with prefect_test_harness(server_startup_timeout=600):
            storage = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / "storage"
            for mode in args.modes:
                if mode.endswith("-warm"):
                    workers = int(mode.split("-")[1])
                    clusters[mode] = LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address="127.0.0.1:0",
                    )
                    executor = {"kind": "dask", "address": clusters[mode].scheduler_address}
                    run_once(folder, args.chunk_size, executor, args.records)  # warm-up
            print(
                "| round | mode | wall s | records/s | load avg (1 min) | result storage added MB |"
            )
            print("|---:|---|---:|---:|---:|---:|", flush=True)
            for round_number in range(1, args.rounds + 1):
                for mode in args.modes:
                    if mode == "local":
                        executor: dict[str, Any] = {"kind": "local"}
                    elif mode.endswith("-warm"):
                        executor = {"kind": "dask", "address": clusters[mode].scheduler_address}
                    else:
                        executor = {"kind": "dask", "n_workers": int(mode.split("-")[1])}
                    before = _folder_bytes(storage) if storage.exists() else 0
                    row = run_once(folder, args.chunk_size, executor, args.records, args.demo)
                    walls[mode].append(row["wall_s"])
                    after = _folder_bytes(storage) if storage.exists() else 0
                    stored = (after - before) / 2**20
                    print(
                        f"| {round_number} | {mode} | {row['wall_s']:.1f} | "
                        f"{row['analysed'] / row['wall_s']:.1f} | {row['load']:.1f} | "
                        f"{stored:.2f} |",
                        flush=True,
                    )
            for cluster in clusters.values():
                cluster.close()
    print("\n| mode | median wall s | records/s | vs local |")
    print("|---|---:|---:|---:|")
    local = statistics.median(walls["local"]) if "local" in walls else None
    for mode, values in walls.items():
        median = statistics.median(values)
        ratio = f"{local / median:.2f}x" if local else "-"
        print(f"| {mode} | {median:.1f} | {args.records / median:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
