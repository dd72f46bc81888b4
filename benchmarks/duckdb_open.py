"""What one transaction on a DuckDB file costs through ``Store``: back to back (a burst, the
database instance kept between transactions) and after a pause longer than the linger (the file
was let go, so each transaction builds the instance again), interleaved round by round.

Usage: ``python benchmarks/duckdb_open.py --transactions 50 --rounds 3``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_memory import _cpu_model

from pipelines.storage import Store

_PAUSE = 0.2
"""Seconds between the paused transactions: four times the store's 50 ms linger."""


def _transaction(store: Store) -> float:
    started = time.perf_counter()
    with store.begin() as connection:
        connection.exec_driver_sql("SELECT count(*) FROM feedback").scalar()
    return time.perf_counter() - started


def _burst(store: Store, transactions: int) -> float:
    return statistics.median(_transaction(store) for _ in range(transactions))


def _paused(store: Store, transactions: int) -> float:
    seconds = []
    for _ in range(transactions):
        time.sleep(_PAUSE)
        seconds.append(_transaction(store))
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bursts: list[float] = []
    pauses: list[float] = []
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "feedback.duckdb") as store:
        for _ in range(args.rounds):
            bursts.append(_burst(store, args.transactions))
            pauses.append(_paused(store, args.transactions // 5 or 1))
    print(
        f"`benchmarks/duckdb_open.py --transactions {args.transactions} --rounds {args.rounds}`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: **{_cpu_model()}**, "
        f"{os.cpu_count()} cores. Median ms per transaction (`SELECT count(*)`), per round:\n"
    )
    print(f"| {_cpu_model()} | ms per transaction | rounds |")
    print("|---|---:|---|")
    for name, values in (("back to back (instance kept)", bursts), ("after a pause", pauses)):
        rounds = ", ".join(f"{1000 * value:.1f}" for value in values)
        print(f"| {name} | {1000 * statistics.median(values):.1f} | {rounds} |")


if __name__ == "__main__":
    main()
