"""Analysis stages over stored records: sentiment, aspects, topics, trends and flagging, run in
chunks by ``analyse_in_chunks``; the per-record stages as chunk tasks, possibly on a Dask
cluster (``analyse_with_chunk_tasks``)."""

from pipelines.analysis._chunks import (
    ChunkCounts,
    ChunkPlan,
    MapChunks,
    analyse_chunk,
    analyse_with_chunk_tasks,
    per_record_prefix,
    process_stages,
)
from pipelines.analysis._runner import (
    AnalysisResult,
    RunStep,
    SaveStep,
    analyse_in_chunks,
    iter_chunks,
    load_run_records,
    range_scope,
    records_to_save,
    run_scope,
    save_results,
    scoped_ids,
)

__all__ = [
    "AnalysisResult",
    "ChunkCounts",
    "ChunkPlan",
    "MapChunks",
    "RunStep",
    "SaveStep",
    "analyse_chunk",
    "analyse_in_chunks",
    "analyse_with_chunk_tasks",
    "iter_chunks",
    "load_run_records",
    "per_record_prefix",
    "process_stages",
    "range_scope",
    "records_to_save",
    "run_scope",
    "save_results",
    "scoped_ids",
]
