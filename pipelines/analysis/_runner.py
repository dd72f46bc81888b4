"""Run the analysis stages over stored records in chunks: bounded memory, resumable.

A run pages through the records in its scope, oldest first, ``chunk_size`` at a time. For each
chunk every stage runs on the records some stage must save (later stages need earlier stages'
columns), each stage saves its own share and notes it in ``stage_results`` before the next chunk
is read. So memory is bounded by the chunk size, not by the run, and a run that crashes leaves its
finished chunks saved: the next run analyses only what is missing (``records_to_save``).

Stages that need more than one chunk do that work once per run in ``Stage.prepare`` (topics: fit
on a bounded sample of the window). Trends count the stored history, which holds every earlier
chunk, plus the chunk itself: a chunk sees what one smaller run would have seen.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from pipelines.stages import Stage, StageContext
from pipelines.storage import (
    RecordScope,
    Store,
    iter_chunks,
    load_run_records,
    newest_created_at,
    range_scope,
    run_scope,
    saved_record_ids,
    schema,
    scoped_ids,
)

__all__ = [
    "AnalysisResult",
    "RunStep",
    "SaveStep",
    "analyse_in_chunks",
    "iter_chunks",
    "load_run_records",
    "prepare_stages",
    "range_scope",
    "records_to_save",
    "run_scope",
    "save_results",
    "scoped_ids",
    "with_as_of",
]

RunStep = Callable[[Stage, pd.DataFrame, StageContext, tuple[str, ...]], tuple[pd.DataFrame, bool]]
"""Runs one stage on one chunk (given the ``name=version`` of the stages before it); returns the
chunk with the stage's columns and whether the result came from a cache."""

SaveStep = Callable[[Stage, pd.DataFrame, StageContext], int]
"""Saves one stage's results for part of a chunk and notes them in ``stage_results``."""


@dataclass
class AnalysisResult:
    """What one analysis pass did.

    Attributes:
        in_scope: Records in the run's scope (copy-paste duplicates excluded).
        analysed: Records that went through the stages.
        chunks: Chunks that had work.
        stage_rows: Stage name -> rows the stage saved.
        model_versions: Stage name -> version used.
        cached_stages: Stages whose every chunk came from the cache instead of being computed.
        languages: Language -> records in scope.
        channels: Channel -> records in scope.
        stage_new: Stage name -> records saved for the first time by the stage (any version).
        stage_reanalysed: Stage name -> records saved again (they had results of the stage).
        stage_seconds: Stage name -> seconds spent running and saving it.
    """

    in_scope: int = 0
    analysed: int = 0
    chunks: int = 0
    stage_rows: dict[str, int] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)
    cached_stages: list[str] = field(default_factory=list)
    languages: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    stage_new: dict[str, int] = field(default_factory=dict)
    stage_reanalysed: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def save_results(stage: Stage, batch: pd.DataFrame, context: StageContext) -> int:
    """Save one stage's results for ``batch`` and note them in ``stage_results``.

    Args:
        stage: The stage.
        batch: Output of the stage's ``run``, restricted to the records that need saving.
        context: Store, run id and options (``resend_alerts``...).

    Returns:
        Rows the stage reported as written.
    """
    rows = stage.save(batch, context)
    now = datetime.now(UTC)
    context.store.upsert(
        schema.stage_results,
        [
            {
                "record_id": str(record_id),
                "stage": stage.name,
                "version": stage.version,
                "run_id": context.run_id,
                "saved_at": now,
            }
            for record_id in batch["id"]
        ],
    )
    return rows


def records_to_save(
    store: Store, stages: Sequence[Stage], ids: Iterable[str], reanalyze: bool
) -> dict[str, set[str]]:
    """Per stage, the records whose results must be (re)saved.

    Without ``reanalyze`` a stage saves the records it never analysed (no result of any
    version): new records and the ones a crashed run left. With ``reanalyze`` it saves every
    record with its current version, beside the results of earlier versions. A record saved by a
    stage is also saved by every stage after it, whose inputs it changed.

    Args:
        store: The database.
        stages: The stages, in order.
        ids: Record ids in scope.
        reanalyze: Recompute records that already have results.

    Returns:
        Stage name -> record ids to save.
    """
    wanted = list(dict.fromkeys(str(record_id) for record_id in ids))
    carried: set[str] = set()
    needed: dict[str, set[str]] = {}
    for stage in stages:
        if reanalyze:
            carried.update(wanted)
        else:
            carried.update(set(wanted) - saved_record_ids(store, stage.name, None, wanted))
        needed[stage.name] = set(carried)
    return needed


def _run_directly(
    stage: Stage, batch: pd.DataFrame, context: StageContext, upstream: tuple[str, ...]
) -> tuple[pd.DataFrame, bool]:
    return stage.run(batch, context), False


def _run_stages(
    stages: Sequence[Stage],
    batch: pd.DataFrame,
    needed: dict[str, set[str]],
    context: StageContext,
    result: AnalysisResult,
    computed: set[str],
    run_step: RunStep,
    save_step: SaveStep,
    after_step: Callable[[], Any] | None,
    restored: Collection[str] = (),
) -> None:
    """Run (or restore) every stage on one chunk's ``batch`` and save each stage's share."""
    store = context.store
    upstream: list[str] = []
    for stage in stages:
        started = time.perf_counter()
        if stage.name in restored:
            batch = stage.restore(batch, context)
        else:
            batch, cached = run_step(stage, batch, context, tuple(upstream))
            if not cached:
                computed.add(stage.name)
            to_save = batch[batch["id"].isin(needed[stage.name])]
            if not to_save.empty:
                ids = [str(record_id) for record_id in to_save["id"]]
                seen = len(saved_record_ids(store, stage.name, None, ids))
                result.stage_reanalysed[stage.name] = (
                    result.stage_reanalysed.get(stage.name, 0) + seen
                )
                result.stage_new[stage.name] = result.stage_new.get(stage.name, 0) + len(ids) - seen
                result.stage_rows[stage.name] += save_step(stage, to_save, context)
        result.stage_seconds[stage.name] = round(
            result.stage_seconds.get(stage.name, 0.0) + time.perf_counter() - started, 3
        )
        # A stage may settle its version while running (topics: the model it fitted or loaded).
        result.model_versions[stage.name] = stage.version
        upstream.append(f"{stage.name}={stage.version}")
        if after_step is not None:
            after_step()


def prepare_stages(stages: Sequence[Stage], context: StageContext) -> None:
    """Run every stage's ``prepare`` for ``context.run_id``, once per run and stage object.

    Chunk tasks of one run in one process (and the flow before them) share the preparation:
    topics fit (and store) their model once, the chunk tasks load it.

    Args:
        stages: The stages.
        context: Store, run id and options (``as_of``).
    """
    for stage in stages:
        if _PREPARED.get(id(stage)) != context.run_id:
            stage.prepare(context)
            _PREPARED[id(stage)] = context.run_id


_PREPARED: dict[int, str] = {}
"""``id(stage)`` -> the run it was last prepared for."""


def with_as_of(store: Store, scope: RecordScope, context: StageContext) -> StageContext:
    """``context`` with option ``as_of`` (newest ``created_at`` in scope) unless already given."""
    if context.options.get("as_of") is not None:
        return context
    newest = newest_created_at(store, scope)
    return replace(context, options={**context.options, "as_of": newest})


def analyse_in_chunks(
    scope: RecordScope,
    stages: Sequence[Stage],
    context: StageContext,
    chunk_size: int,
    reanalyze: bool = False,
    run_step: RunStep = _run_directly,
    save_step: SaveStep = save_results,
    after_step: Callable[[], Any] | None = None,
    restored: Collection[str] = (),
) -> AnalysisResult:
    """Run the stages over the records in ``scope`` that need them, chunk by chunk, and save.

    Before the first chunk with work every stage's ``prepare`` runs once (with option ``as_of``
    set to the newest ``created_at`` in scope unless given).

    Args:
        scope: The records (``run_scope``, ``range_scope``).
        stages: Stages to run, in order.
        context: Store, run id and options.
        chunk_size: Records read, analysed and saved at a time.
        reanalyze: Save every record again with the current versions (see ``records_to_save``).
        run_step: Runs a stage on a chunk (default: ``stage.run``; flows pass a cached task).
        save_step: Saves a stage's share of a chunk (default: ``save_results``).
        after_step: Called after every stage of every chunk (e.g. to renew the run lock).
        restored: Names of ``per_record`` stages whose results chunk tasks already saved:
            their columns are read back (``Stage.restore``), not computed or saved again.

    Returns:
        Counts, versions and cache hits.
    """
    store = context.store
    result = AnalysisResult(
        stage_rows={stage.name: 0 for stage in stages},
        model_versions={stage.name: stage.version for stage in stages},
    )
    languages: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    computed: set[str] = set()
    prepared = False
    for records in iter_chunks(store, scope, chunk_size):
        result.in_scope += len(records)
        languages.update(records["lang"].dropna())
        channels.update(records["channel"].dropna())
        needed = records_to_save(store, stages, records["id"], reanalyze) if stages else {}
        work_ids = set().union(*needed.values()) if needed else set()
        if not work_ids:
            continue
        if not prepared:
            context = with_as_of(store, scope, context)
            prepare_stages(stages, context)
            prepared = True
        batch = records[records["id"].isin(work_ids)]
        del records
        result.analysed += len(batch)
        result.chunks += 1
        _run_stages(
            stages,
            batch,
            needed,
            context,
            result,
            computed,
            run_step,
            save_step,
            after_step,
            restored,
        )
    if result.chunks:
        result.cached_stages = [stage.name for stage in stages if stage.name not in computed]
    result.languages = dict(languages)
    result.channels = dict(channels)
    return result
