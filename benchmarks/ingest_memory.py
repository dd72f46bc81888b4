"""Ingest of 1,000,000 short JSONL records into a DuckDB file: peak RSS and records/s.

Usage::

    python benchmarks/ingest_memory.py [--records 1000000] [--chunk-rows 5000] [--keep DIR]

The script writes the JSONL file itself (streamed to disk, never held): short reviews in
Turkish, Persian, Romanian and English in turn, built from the templates of
``tests/_synthetic_feedback.py`` with a random number, author and product, 5% of them with an
e-mail or phone number for the redaction path, and 1% exact re-sends of an earlier row (same
id: counted as duplicates). It then runs the real library ingest, ``ingest_source`` (read in
chunks, normalize, redact, language, dedupe, store), into a fresh DuckDB file and prints the
figures as a Markdown table: records, seconds, records/s, peak RSS (this process from
``getrusage``, generation included as it is streamed and small; plus the VmHWM of the reader
process that prepares chunks on the second core for a file this large, sampled every 5 s), the
counts ledger, the machine (``lscpu`` model name, cores) and the date. Targets (issue 11):
peak RSS <= 1 GB, >= 3,000 records/s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pipelines.ingest import ingest_source  # noqa: E402
from pipelines.ingest.sources import load_sources  # noqa: E402
from pipelines.storage import Store, schema  # noqa: E402
from tests._synthetic_feedback import THEMES  # noqa: E402

LANGUAGES = ("tr", "fa", "ro", "en")
START = datetime(2026, 10, 1, tzinfo=UTC)
SOURCES_YAML = """\
sources:
  - name: bench
    kind: jsonl
    channel: review
    path: reviews.jsonl
    encoding: auto
    columns: {external_id: id, created_at: created_at, author: author, product: product,
              rating: stars, text: text}
"""


def write_records(path: Path, count: int, seed: int = 11) -> None:
    """Write ``count`` JSONL records (plus 1% re-sent duplicates) to ``path``, streamed."""
    rng = random.Random(seed)
    templates = {
        lang: [text for theme in THEMES.values() for text in theme[lang]] for lang in LANGUAGES
    }
    contacts = ("ayse.k{n}@example.com", "+90 532 {n:03d} 45 67", "0721 {n:03d} 456")
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            lang = LANGUAGES[index % len(LANGUAGES)]
            text = rng.choice(templates[lang]).format(n=rng.randint(2, 40))
            if rng.random() < 0.05:
                text += " " + rng.choice(contacts).format(n=rng.randint(100, 999))
            row = {
                "id": f"r{index}",
                "created_at": (START + timedelta(seconds=index * 7)).isoformat(),
                "author": f"user{rng.randint(1, 200_000)}",
                "product": f"P{rng.randint(1, 500)}",
                "stars": rng.randint(1, 5),
                "text": f"{text} #{index}",
            }
            line = json.dumps(row, ensure_ascii=False)
            handle.write(line + "\n")
            if rng.random() < 0.01:
                handle.write(line + "\n")


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_rss_mb() -> float:
    """Largest peak RSS (VmHWM) among this process's live children, in MB (Linux).

    ``RUSAGE_CHILDREN`` cannot be used: a spawned child's ``ru_maxrss`` keeps the parent's
    RSS from before its ``exec``; VmHWM starts afresh with the new program.
    """
    peak = 0.0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def current_rss_mb() -> float:
    """Resident set size now, in MB (Linux)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> str:
    """CPU model and cores available to this process."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip()
            for line in lscpu.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=5_000)
    parser.add_argument("--keep", type=Path, help="folder to keep the data and database in")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "reviews.jsonl"
    began = time.perf_counter()
    write_records(data, args.records)
    print(
        f"wrote {data} ({data.stat().st_size / 2**20:.0f} MB) in "
        f"{time.perf_counter() - began:.0f} s; RSS {current_rss_mb():.0f} MB",
        flush=True,
    )
    (folder / "sources.yaml").write_text(SOURCES_YAML, encoding="utf-8")
    (source,) = load_sources(folder / "sources.yaml")
    db = folder / "feedback.duckdb"
    db.unlink(missing_ok=True)
    store = Store(db)

    samples: list[float] = []
    reader_peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(5):
            samples.append(current_rss_mb())
            reader_peak[0] = max(reader_peak[0], children_peak_rss_mb())
            print(
                f"  {time.perf_counter() - began:6.0f} s  RSS {samples[-1]:.0f} MB, reader "
                f"peak {reader_peak[0]:.0f} MB",
                flush=True,
            )

    sampler = threading.Thread(target=sample, daemon=True)
    cpu_before = cpu_seconds()
    began = time.perf_counter()
    sampler.start()
    counts = ingest_source(source, store, "bench", chunk_rows=args.chunk_rows)
    elapsed = time.perf_counter() - began
    done.set()
    cpu_after = cpu_seconds()
    own_cpu, child_cpu = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
    stored = store.count(schema.feedback)
    store.close()

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    print()
    print(f"Machine: {machine()}. Date: {when}, load average {load:.1f} at the end.")
    print(f"`python benchmarks/ingest_memory.py --records {args.records}` into {db.name}")
    print()
    own, child = peak_rss_mb(), reader_peak[0]
    print("| read | stored | duplicates | quarantined | seconds | records/s | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {counts.read:,} | {counts.stored:,} | {counts.duplicates:,} | {counts.quarantined:,} "
        f"| {elapsed:.0f} | {counts.read / elapsed:,.0f} | {own:.0f} + reader {child:.0f} "
        f"= {own + child:.0f} |"
    )
    print()
    print(
        f"CPU: this process {own_cpu:.0f} s, reader process {child_cpu:.0f} s; the two overlap, "
        f"so on two otherwise idle cores the wall time is about the larger one: "
        f"{counts.read / max(own_cpu, child_cpu, 1e-9):,.0f} records/s."
    )
    assert stored == counts.stored, (stored, counts)


if __name__ == "__main__":
    main()
