"""Analysis stages over stored records: sentiment, aspects, topics, trends and flagging, run in
chunks by ``analyse_in_chunks``."""

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
