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

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import ColumnElement, and_, exists, func, or_, select, true

from pipelines.stages import Stage, StageContext
from pipelines.storage import Store, schema

__all__ = [
    "AnalysisResult",
    "RunStep",
    "SaveStep",
    "analyse_in_chunks",
    "iter_chunks",
    "load_run_records",
    "range_scope",
    "records_to_save",
    "run_scope",
    "save_results",
    "scoped_ids",
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
    """

    in_scope: int = 0
    analysed: int = 0
    chunks: int = 0
    stage_rows: dict[str, int] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)
    cached_stages: list[str] = field(default_factory=list)
    languages: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)


def run_scope(run_id: str, unanalysed_by: Sequence[str] = ()) -> ColumnElement[bool]:
    """The records a run stored, and those of earlier runs some stage never analysed.

    Args:
        run_id: The run.
        unanalysed_by: Stage names; records lacking results of any of them (an ingest-only run,
            a run that crashed mid-analysis) are in scope too, so nothing stored is left behind.

    Returns:
        A condition on ``feedback``.
    """
    table, results = schema.feedback, schema.stage_results
    scope: ColumnElement[bool] = table.c.run_id == run_id
    for stage_name in unanalysed_by:
        scope = scope | ~exists().where(
            results.c.record_id == table.c.id, results.c.stage == stage_name
        )
    return scope


def range_scope(
    start: datetime, end: datetime | None, sources: Sequence[str] | None = None
) -> ColumnElement[bool]:
    """The records created in ``[start, end)``, of ``sources`` or all.

    Args:
        start: First instant (UTC).
        end: End instant (UTC, excluded), or None.
        sources: Only these sources, or all.

    Returns:
        A condition on ``feedback``.
    """
    table = schema.feedback
    scope = table.c.created_at >= start
    if end is not None:
        scope = scope & (table.c.created_at < end)
    if sources is not None:
        scope = scope & table.c.source.in_(list(sources))
    return scope


def _scoped(scope: ColumnElement[bool]) -> ColumnElement[bool]:
    return and_(scope, schema.feedback.c.duplicate_of.is_(None))


def _analysed_columns() -> list[Any]:
    """``feedback``'s columns but ``raw``: audit data no stage reads, kept out of the stage
    results Prefect stores."""
    return [column for column in schema.feedback.c if column.name != "raw"]


def scoped_ids(store: Store, scope: ColumnElement[bool]) -> list[str]:
    """Ids of the records in ``scope`` (duplicates excluded).

    Args:
        store: The database.
        scope: Condition on ``feedback`` (``run_scope``, ``range_scope``).

    Returns:
        The record ids.
    """
    query = select(schema.feedback.c.id).where(_scoped(scope))
    with store.engine.connect() as connection:
        return list(connection.execute(query).scalars())


def iter_chunks(
    store: Store, scope: ColumnElement[bool], chunk_size: int
) -> Iterator[pd.DataFrame]:
    """The records in ``scope`` (duplicates excluded), oldest first, ``chunk_size`` at a time.

    Pages by ``(created_at, id)`` with a fresh connection per page, so saving between pages is
    safe and only one page is in memory.

    Args:
        store: The database.
        scope: Condition on ``feedback`` (``run_scope``, ``range_scope``).
        chunk_size: Records per chunk.

    Yields:
        Rows of ``feedback`` without ``raw``.
    """
    table = schema.feedback
    query = (
        select(*_analysed_columns())
        .where(_scoped(scope))
        .order_by(table.c.created_at, table.c.id)
        .limit(chunk_size)
    )
    after: ColumnElement[bool] = true()
    while True:
        with store.engine.connect() as connection:
            rows = connection.execute(query.where(after)).mappings().all()
        if not rows:
            return
        yield pd.DataFrame(rows)
        if len(rows) < chunk_size:
            return
        last_time, last_id = rows[-1]["created_at"], rows[-1]["id"]
        after = or_(
            table.c.created_at > last_time,
            and_(table.c.created_at == last_time, table.c.id > last_id),
        )


def load_run_records(store: Store, run_id: str, unanalysed_by: Sequence[str] = ()) -> pd.DataFrame:
    """All records of ``run_scope`` at once (for small runs such as a watch poll).

    Args:
        store: The database.
        run_id: The run.
        unanalysed_by: See ``run_scope``.

    Returns:
        One row per record, with the ``feedback`` table's columns but ``raw``.
    """
    query = select(*_analysed_columns()).where(_scoped(run_scope(run_id, unanalysed_by)))
    with store.engine.connect() as connection:
        return pd.DataFrame(connection.execute(query).mappings().all())


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


def _saved_ids(store: Store, stage: Stage, ids: Sequence[str], any_version: bool) -> set[str]:
    """Which of ``ids`` have results of ``stage`` (of its current version, or of any)."""
    table = schema.stage_results
    found: set[str] = set()
    with store.engine.connect() as connection:
        for start in range(0, len(ids), 1000):
            query = select(table.c.record_id).where(
                table.c.stage == stage.name, table.c.record_id.in_(ids[start : start + 1000])
            )
            if not any_version:
                query = query.where(table.c.version == stage.version)
            found.update(connection.execute(query).scalars())
    return found


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
            carried.update(set(wanted) - _saved_ids(store, stage, wanted, any_version=True))
        needed[stage.name] = set(carried)
    return needed


def _run_directly(
    stage: Stage, batch: pd.DataFrame, context: StageContext, upstream: tuple[str, ...]
) -> tuple[pd.DataFrame, bool]:
    return stage.run(batch, context), False


def _with_as_of(store: Store, scope: ColumnElement[bool], context: StageContext) -> StageContext:
    """``context`` with option ``as_of`` (newest ``created_at`` in scope) unless already given."""
    if context.options.get("as_of") is not None:
        return context
    with store.engine.connect() as connection:
        newest = connection.execute(
            select(func.max(schema.feedback.c.created_at)).where(_scoped(scope))
        ).scalar()
    return replace(context, options={**context.options, "as_of": newest})


def analyse_in_chunks(
    scope: ColumnElement[bool],
    stages: Sequence[Stage],
    context: StageContext,
    chunk_size: int,
    reanalyze: bool = False,
    run_step: RunStep = _run_directly,
    save_step: SaveStep = save_results,
    after_step: Callable[[], Any] | None = None,
) -> AnalysisResult:
    """Run the stages over the records in ``scope`` that need them, chunk by chunk, and save.

    Before the first chunk with work every stage's ``prepare`` runs once (with option ``as_of``
    set to the newest ``created_at`` in scope unless given).

    Args:
        scope: Condition on ``feedback`` (``run_scope``, ``range_scope``).
        stages: Stages to run, in order.
        context: Store, run id and options.
        chunk_size: Records read, analysed and saved at a time.
        reanalyze: Save every record again with the current versions (see ``records_to_save``).
        run_step: Runs a stage on a chunk (default: ``stage.run``; flows pass a cached task).
        save_step: Saves a stage's share of a chunk (default: ``save_results``).
        after_step: Called after every stage of every chunk (e.g. to renew the run lock).

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
            context = _with_as_of(store, scope, context)
            for stage in stages:
                stage.prepare(context)
            prepared = True
        batch = records[records["id"].isin(work_ids)]
        del records
        result.analysed += len(batch)
        result.chunks += 1
        upstream: list[str] = []
        for stage in stages:
            batch, cached = run_step(stage, batch, context, tuple(upstream))
            # A stage may settle its version while running (topics: the model it fitted or loaded).
            result.model_versions[stage.name] = stage.version
            if not cached:
                computed.add(stage.name)
            to_save = batch[batch["id"].isin(needed[stage.name])]
            if not to_save.empty:
                result.stage_rows[stage.name] += save_step(stage, to_save, context)
            upstream.append(f"{stage.name}={stage.version}")
            if after_step is not None:
                after_step()
    if result.chunks:
        result.cached_stages = [stage.name for stage in stages if stage.name not in computed]
    result.languages = dict(languages)
    result.channels = dict(channels)
    return result
