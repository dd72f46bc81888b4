"""The one interface every analysis stage implements (sentiment, aspects, topics, flags...).

A stage is a small object: ``run`` adds columns to a batch (a pandas DataFrame of feedback
records) and is pure; ``save`` persists what ``run`` added. Flows call them in order and know
nothing else about them, so a new stage plugs in without touching the flow. Runs analyse their
records in chunks; a stage that needs the whole window (a topic model's fit) does that work once
per run in ``prepare``, before the first chunk.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

import pandas as pd

if TYPE_CHECKING:
    from pipelines.storage import Store

__all__ = ["Stage", "StageContext", "stored_version_rows"]


@dataclass
class StageContext:
    """What a stage may need beyond the batch itself.

    Attributes:
        store: The database.
        run_id: Id of the current run; stored beside every result.
        options: Free per-run options (e.g. ``{"resend_alerts": True}``).
    """

    store: Store
    run_id: str
    options: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """Base class of the analysis stages.

    Subclasses set ``name`` and implement ``version`` and ``run``; override ``save`` when the
    stage stores results.
    """

    name: ClassVar[str]
    per_record: ClassVar[bool] = False
    """A record's results depend only on the record and the run's prepared model (not on other
    records of the run), so chunks may run in any order, in parallel, on other machines; such a
    stage implements ``restore``."""

    @classmethod
    def from_config(cls, config_dir: str | os.PathLike[str] | None = None) -> Self:
        """Build the stage from the configuration folder (``pipelines.registry`` entry point).

        Subclasses whose constructor takes more than ``config_dir`` override this.

        Args:
            config_dir: Folder with the YAML files (None: the embedded defaults).

        Returns:
            The stage.
        """
        return cls(config_dir=config_dir)  # type: ignore[call-arg]

    @property
    @abstractmethod
    def version(self) -> str:
        """Code + model version; part of cache keys and stored with every prediction."""

    @abstractmethod
    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        """Return ``batch`` with this stage's columns added.

        Args:
            batch: One row per feedback record (columns of ``feedback`` plus earlier stages').
            context: Store, run id and options.

        Returns:
            The batch with new columns; rows are never dropped.
        """

    def prepare(self, context: StageContext) -> None:
        """Do once per run, before the first chunk, what needs more than one chunk (a model fit).

        Args:
            context: Store, run id and options (``as_of``: newest ``created_at`` of the run).
        """
        return None

    def save(self, batch: pd.DataFrame, context: StageContext) -> int:
        """Persist this stage's columns of ``batch``; returns the number of rows written."""
        return 0

    def restore(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        """Return ``batch`` with this stage's columns read back from its stored results (the
        current version's, else the newest), for the stages after it (``per_record`` stages).

        Args:
            batch: Records whose results this stage saved.
            context: Store, run id and options.

        Returns:
            The batch with the stage's columns.
        """
        raise NotImplementedError(f"stage {self.name} cannot restore its results")


def stored_version_rows(rows: pd.DataFrame, version: str) -> pd.DataFrame:
    """Per record, its stored rows of ``version`` when there are any, else those of the version
    it was saved with last (for ``Stage.restore``).

    Args:
        rows: Stored results with columns ``record_id``, ``model_version``, ``created_at``.
        version: The stage's current version.

    Returns:
        The chosen rows.
    """
    if rows.empty:
        return rows
    ranked = rows.assign(_current=rows["model_version"] == version)
    chosen = ranked.sort_values(["_current", "created_at"]).groupby("record_id").tail(1)
    return rows.merge(chosen[["record_id", "model_version"]], on=["record_id", "model_version"])
