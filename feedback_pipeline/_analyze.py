"""``fp.analyze``: the ``feedback analyze`` stages on a DataFrame or a list of texts."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import pandas as pd

from pipelines._errors import ConfigError
from pipelines.analysis.analyze import analyze_frame, is_internal_column
from pipelines.ingest.language import prefetch_default_model
from pipelines.registry import build_stages
from pipelines.stages import Stage, StageContext
from pipelines.storage import Store

__all__ = ["ANALYZE_STAGES", "Analyzer", "analyze"]

ANALYZE_STAGES: tuple[str, ...] = ("sentiment", "aspects", "topics", "flagging")
"""The nightly stages that need nothing but the rows themselves (trends need history, alerts
mail)."""


class Analyzer:
    """The analysis stages, loaded once and run over as many chunks as needed.

    Use as a context manager; without ``db`` the stages work in a scratch DuckDB file that is
    deleted on exit.

    Args:
        config: Configuration folder (``--config``); None: the embedded defaults.
        db: Store caching document embeddings between calls (reruns are faster); None: none.
        stages: Stage names, in order.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | None = None,
        db: str | os.PathLike[str] | None = None,
        stages: Sequence[str] = ANALYZE_STAGES,
    ) -> None:
        prefetch_default_model()
        self.stages: list[Stage] = build_stages(stages, config)
        self._db = db
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._store: Store | None = None
        self._context: StageContext | None = None

    def __enter__(self) -> Self:
        if self._db is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="feedback-analyze-")
            self._store = Store(Path(self._scratch.name) / "analyze.duckdb")
        else:
            self._store = Store(self._db)
        self._store.__enter__()
        self._context = StageContext(
            self._store, str(uuid.uuid4()), {"cache_embeddings": self._db is not None}
        )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._store is not None:
            self._store.__exit__(kind, error, traceback)
        if self._scratch is not None:
            self._scratch.cleanup()

    def run(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Analyse rows with ``id`` and ``text`` (see ``analyze_frame``).

        Args:
            frame: The rows.

        Returns:
            ``analyze_frame``'s result, internal columns (``analysed``...) included.
        """
        if self._context is None:
            raise RuntimeError("use the Analyzer in a 'with' block")
        return analyze_frame(frame, self.stages, self._context)


def _as_frame(data: pd.DataFrame | pd.Series | Iterable[str]) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        if "text" not in data.columns:
            raise ConfigError(
                f"fp.analyze needs a 'text' column; the frame has {list(map(str, data.columns))}. "
                "Rename the text column to 'text' (an 'id' column is optional).",
                code="E082",
            )
        frame = data.copy()
    else:
        if isinstance(data, str):
            raise ConfigError(
                "fp.analyze takes a DataFrame or a list of texts, not one string; "
                "write fp.analyze([text]).",
                code="E082",
            )
        frame = pd.DataFrame({"text": list(data)})
    if "id" not in frame.columns:
        frame.insert(0, "id", [str(index) for index in frame.index])
    frame["text"] = ["" if pd.isna(text) else str(text) for text in frame["text"]]
    return frame


def analyze(
    data: pd.DataFrame | pd.Series | Iterable[str],
    *,
    config: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    stages: Sequence[str] = ANALYZE_STAGES,
    chunk_size: int = 2000,
) -> pd.DataFrame:
    """Language, sentiment (document and sentences), aspects, topic and flags, as
    ``feedback analyze`` writes them.

    Args:
        data: A DataFrame with ``text`` (optional ``id``, else the index; optional ``channel``,
            ``rating``, ``nps``, ``author_followers``, ``customer_id``, ``customer_value`` feed the
            flag rules; other columns are carried along), or texts.
        config: Configuration folder; None: the embedded defaults.
        db: Store caching embeddings between calls; None: a scratch store.
        stages: Stage names, in order.
        chunk_size: Rows analysed per step (bounds memory).

    Returns:
        One row per input row, in order, with the ``analyze`` columns: ``text`` (normalised and
        redacted), ``pii_counts``, ``lang``, ``lang_confidence`` and every stage's columns. Rows
        with no text left after normalisation have no language and no results (missing values).

    Raises:
        ConfigError: E082 when ``data`` has no text; other codes for a bad configuration.
    """
    frame = _as_frame(data)
    with Analyzer(config, db, stages) as analyzer:
        parts = [
            analyzer.run(frame.iloc[start : start + chunk_size])
            for start in range(0, len(frame), chunk_size)
        ]
    if not parts:
        return frame.assign(lang=pd.Series(dtype="string"))
    result = pd.concat(parts)
    return result[[name for name in result.columns if not is_internal_column(name)]]
