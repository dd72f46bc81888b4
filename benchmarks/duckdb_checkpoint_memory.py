"""Memory a DuckDB checkpoint takes while a table of wide rows grows, with and without vacuum.

``Store`` closes its DuckDB file after every transaction, and the close checkpoints. With
DuckDB's default ``max_vacuum_tasks`` that checkpoint now and then merges the row groups of a
table of wide rows (``embeddings``: a 1.5 KB vector a row) into new ones, holding the whole table
in memory while it does, so the transient grows with the database. This script inserts chunks of
vectors the way ``TextEmbedder`` saves them (a registered DataFrame, ``INSERT OR IGNORE``, one
open and close per chunk), samples this process's RSS every 5 ms, and reports the largest rise
above the level before each chunk, for the configurations given, interleaved chunk by chunk.

Usage: ``python benchmarks/duckdb_checkpoint_memory.py --chunks 64 --rows 5000``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_memory import _cpu_model

_CONFIGS = {"default": {}, "max_vacuum_tasks=0": {"max_vacuum_tasks": 0}}
_CREATE = (
    "CREATE TABLE embeddings (model_version VARCHAR, text_hash VARCHAR, vector BLOB NOT NULL, "
    "PRIMARY KEY (model_version, text_hash))"
)


class _PeakSampler:
    """The largest RSS of this process since the last ``reset``, sampled every 5 ms."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak = 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.005)

    def reset(self) -> int:
        self.peak = current = self._process.memory_info().rss
        return current


def _chunk(index: int, rows: int, generator: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model_version": ["e5-small"] * rows,
            "text_hash": [
                hashlib.md5(f"{index}-{row}".encode()).hexdigest() for row in range(rows)
            ],
            "vector": [generator.standard_normal(384).astype("<f4").tobytes() for _ in range(rows)],
        },
        dtype=object,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--rows", type=int, default=5000, help="vectors per chunk")
    args = parser.parse_args()
    sampler = _PeakSampler()
    generator = np.random.default_rng(0)
    worst = dict.fromkeys(_CONFIGS, 0)
    seconds = dict.fromkeys(_CONFIGS, 0.0)
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: str(Path(folder) / f"{index}.duckdb") for index, name in enumerate(_CONFIGS)}
        for name, config in _CONFIGS.items():
            with duckdb.connect(paths[name], config=config) as connection:
                connection.execute(_CREATE)
        for index in range(args.chunks):
            frame = _chunk(index, args.rows, generator)
            for name, config in _CONFIGS.items():
                before = sampler.reset()
                started = time.perf_counter()
                with duckdb.connect(paths[name], config=config) as connection:
                    connection.register("incoming", frame)
                    connection.execute("INSERT OR IGNORE INTO embeddings SELECT * FROM incoming")
                seconds[name] += time.perf_counter() - started
                worst[name] = max(worst[name], sampler.peak - before)
        sizes = {name: Path(path).stat().st_size for name, path in paths.items()}
    print(
        json.dumps(
            {
                "machine": f"{_cpu_model()}, {os.cpu_count()} cores",
                "date": time.strftime("%Y-%m-%d"),
                "duckdb": duckdb.__version__,
                "vectors": args.chunks * args.rows,
                "results": {
                    name: {
                        "largest_transient_mb": worst[name] >> 20,
                        "insert_and_close_s": round(seconds[name], 1),
                        "file_mb": sizes[name] >> 20,
                    }
                    for name in _CONFIGS
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
