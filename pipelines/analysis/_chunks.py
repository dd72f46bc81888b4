"""Analysis as chunk tasks: the per-record stages run chunk by chunk, anywhere, then the rest.

A run's analysis has two passes over its scope:

1. **Chunk tasks.** The leading ``per_record`` stages (sentiment, aspects, topics: a record's
   results depend only on the record and the run's prepared model) run on chunks of
   ``analysis_chunk_size`` records. A chunk task gets a ``ChunkPlan`` and record ids, reads its
   records from the store, runs the stages, saves what is missing (upserts keyed by record and
   version, noted in ``stage_results``) and returns ``ChunkCounts``: nothing personal and nothing
   large travels or is kept as a task result. Chunks are independent, so they may run in any
   order, in parallel, on other machines (Dask), and a chunk lost with its worker is simply run
   again. Before the first chunk the flow prepares the stages once (topics: the refit, whose
   model is stored before any chunk task starts; other processes load it).
2. **The rest, in order.** The stages that need the run's other records (trends count the
   stored history, flagging reads trends, alerts queue and deliver) run chunk by chunk in the
   flow, oldest first, on the per-record stages' columns read back from the store
   (``Stage.restore``). They see every record of the run analysed, whatever order the chunk
   tasks finished in: a local run and a distributed one store the same results.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from pipelines.analysis._runner import (
    AnalysisResult,
    RunStep,
    SaveStep,
    _run_directly,
    _run_stages,
    analyse_in_chunks,
    prepare_stages,
    records_to_save,
    save_results,
    with_as_of,
)
from pipelines.registry import build_stages
from pipelines.stages import Stage, StageContext
from pipelines.storage import (
    RecordScope,
    Store,
    records_by_ids,
    saved_by_run,
    scoped_id_chunks,
)

__all__ = [
    "ChunkCounts",
    "ChunkPlan",
    "MapChunks",
    "analyse_chunk",
    "analyse_with_chunk_tasks",
    "per_record_prefix",
    "process_stages",
]

_WORKER_OPTIONS_DROPPED = ("refit_topics",)
"""Options only the flow acts on (the refit happens once, in the flow's ``prepare``)."""


@dataclass(frozen=True)
class ChunkPlan:
    """What a chunk task needs besides its record ids; small and picklable.

    Attributes:
        db_url: The database (shared by every worker: PostgreSQL across machines).
        run_id: The run (stored beside every result).
        stages: Names of the per-record stages to run, in order.
        config_dir: Configuration folder the stages are built from (None: embedded defaults).
        options: The run's stage options (``as_of``...).
        reanalyze: Save every record again with the current versions.
    """

    db_url: str
    run_id: str
    stages: tuple[str, ...]
    config_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    reanalyze: bool = False


@dataclass
class ChunkCounts:
    """What one chunk task did (the task's whole result).

    Attributes:
        records: Records of the chunk found in the store.
        analysed: Records that went through the stages.
        stage_rows: Stage name -> rows saved.
        stage_new: Stage name -> records saved for the first time by the stage.
        stage_reanalysed: Stage name -> records saved again.
        stage_seconds: Stage name -> seconds spent running and saving.
    """

    records: int = 0
    analysed: int = 0
    stage_rows: dict[str, int] = field(default_factory=dict)
    stage_new: dict[str, int] = field(default_factory=dict)
    stage_reanalysed: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)


MapChunks = Callable[[ChunkPlan, Iterable[list[str]], Sequence[Stage]], Iterator[ChunkCounts]]
"""Runs ``analyse_chunk`` for each id chunk (in this process, or as tasks elsewhere given only
the plan and the ids) and yields each chunk's counts; the stages are this process's objects."""


def per_record_prefix(stages: Sequence[Stage]) -> list[Stage]:
    """The leading ``per_record`` stages: those that run as chunk tasks.

    Args:
        stages: The run's stages, in order.

    Returns:
        The stages before the first one that needs the run's other records.
    """
    prefix: list[Stage] = []
    for stage in stages:
        if not stage.per_record:
            break
        prefix.append(stage)
    return prefix


_PROCESS_STAGES: dict[tuple[tuple[str, ...], str | None, str], list[Stage]] = {}
_PROCESS_STAGES_LOCK = threading.Lock()


def _config_fingerprint(config_dir: str | None) -> str:
    if config_dir is None:
        return ""
    digest = hashlib.sha256()
    for file in sorted(Path(config_dir).glob("*.yaml")):
        digest.update(file.name.encode() + b"\x1f" + file.read_bytes() + b"\x1e")
    return digest.hexdigest()


def process_stages(names: Sequence[str], config_dir: str | None) -> list[Stage]:
    """The stages built once per process (a Dask worker loads its models once, for every
    chunk and run), rebuilt when a file of the configuration folder changes.

    Args:
        names: Stage names, in order.
        config_dir: Configuration folder (None: embedded defaults).

    Returns:
        The stage objects.
    """
    key = (tuple(names), config_dir, _config_fingerprint(config_dir))
    with _PROCESS_STAGES_LOCK:
        if key not in _PROCESS_STAGES:
            _PROCESS_STAGES[key] = build_stages(names, config_dir)
        return _PROCESS_STAGES[key]


def analyse_chunk(
    plan: ChunkPlan, ids: Sequence[str], store: Store, stages: Sequence[Stage] | None = None
) -> ChunkCounts:
    """Run the plan's per-record stages on the records ``ids`` and save what is missing.

    Idempotent: a record a stage already saved (this version, or any without ``reanalyze``) is
    not saved again, so running a chunk twice (a retry after a lost worker) changes nothing;
    except the records this run saved itself (a worker that saved, then died before returning
    its counts), which are saved again, identically, so that the run's counts stay true.

    Args:
        plan: The run's plan.
        ids: The chunk's record ids.
        store: The database of ``plan.db_url``.
        stages: The stage objects (in the flow's process); None builds them once per process
            (``process_stages``).

    Returns:
        The chunk's counts.
    """
    stages = list(stages) if stages is not None else process_stages(plan.stages, plan.config_dir)
    context = StageContext(store=store, run_id=plan.run_id, options=dict(plan.options))
    records = records_by_ids(store, ids)
    counts = ChunkCounts(records=len(records))
    needed = records_to_save(store, stages, records["id"], plan.reanalyze)
    names = [stage.name for stage in stages]
    again = saved_by_run(store, plan.run_id, names, [str(i) for i in records["id"]])
    carried: set[str] = set()
    for name in names:
        carried |= again[name]
        needed[name] |= carried
    work_ids = set().union(*needed.values()) if needed else set()
    if not work_ids:
        return counts
    prepare_stages(stages, context)
    batch = records[records["id"].isin(work_ids)]
    result = AnalysisResult(stage_rows={stage.name: 0 for stage in stages})
    _run_stages(stages, batch, needed, context, result, set(), _run_directly, save_results, None)
    counts.analysed = len(batch)
    counts.stage_rows = result.stage_rows
    counts.stage_new = result.stage_new
    counts.stage_reanalysed = result.stage_reanalysed
    counts.stage_seconds = result.stage_seconds
    return counts


def _chunks_with_work(
    store: Store, scope: RecordScope, stages: Sequence[Stage], chunk_size: int, reanalyze: bool
) -> Iterator[list[str]]:
    for ids in scoped_id_chunks(store, scope, chunk_size):
        if any(records_to_save(store, stages, ids, reanalyze).values()):
            yield ids


def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for name, value in part.items():
        total[name] = total.get(name, 0) + value


def analyse_with_chunk_tasks(
    scope: RecordScope,
    stages: Sequence[Stage],
    context: StageContext,
    chunk_size: int,
    map_chunks: MapChunks,
    config_dir: str | None = None,
    reanalyze: bool = False,
    run_step: RunStep = _run_directly,
    save_step: SaveStep = save_results,
    after_step: Callable[[], Any] | None = None,
) -> AnalysisResult:
    """Analyse ``scope``: per-record stages as chunk tasks, then the rest in order (module doc).

    Args:
        scope: The records (``run_scope``, ``range_scope``).
        stages: The run's stages, in order (built from ``config_dir`` by their names).
        context: Store, run id and options.
        chunk_size: Records per chunk task and per chunk of the second pass.
        map_chunks: Runs the chunk tasks (in process, or on a Dask cluster).
        config_dir: Configuration folder, for chunk tasks that build their own stages.
        reanalyze: Save every record again with the current versions.
        run_step: Runs a stage of the second pass on a chunk.
        save_step: Saves a stage's share of a chunk in the second pass.
        after_step: Called after every chunk task's result and every second-pass step.

    Returns:
        What both passes did.
    """
    store = context.store
    prefix = per_record_prefix(stages)
    tasks = AnalysisResult()
    if prefix:
        chunks = _chunks_with_work(store, scope, prefix, chunk_size, reanalyze)
        first = next(chunks, None)
        if first is not None:
            context = with_as_of(store, scope, context)
            prepare_stages(stages, context)
            plan = ChunkPlan(
                db_url=store.url,
                run_id=context.run_id,
                stages=tuple(stage.name for stage in prefix),
                config_dir=config_dir,
                options={
                    key: value
                    for key, value in context.options.items()
                    if key not in _WORKER_OPTIONS_DROPPED
                },
                reanalyze=reanalyze,
            )
            for counts in map_chunks(plan, chain([first], chunks), prefix):
                tasks.chunks += 1
                tasks.analysed += counts.analysed
                _add(tasks.stage_rows, counts.stage_rows)
                _add(tasks.stage_new, counts.stage_new)
                _add(tasks.stage_reanalysed, counts.stage_reanalysed)
                _add(tasks.stage_seconds, counts.stage_seconds)
                if after_step is not None:
                    after_step()
    restored = {stage.name for stage in prefix}
    result = analyse_in_chunks(
        scope, stages, context, chunk_size, reanalyze, run_step, save_step, after_step, restored
    )
    if tasks.chunks:
        result.analysed = max(result.analysed, tasks.analysed)
        result.chunks = max(result.chunks, tasks.chunks)
        result.cached_stages = [name for name in result.cached_stages if name not in restored]
    for name in restored:
        result.stage_rows[name] = tasks.stage_rows.get(name, 0)
    for total, part in (
        (result.stage_new, tasks.stage_new),
        (result.stage_reanalysed, tasks.stage_reanalysed),
        (result.stage_seconds, tasks.stage_seconds),
    ):
        _add(total, part)
    result.stage_seconds = {name: round(value, 3) for name, value in result.stage_seconds.items()}
    return result
