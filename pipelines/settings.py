"""Pipeline-wide settings: ``configs/pipeline.yaml``."""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines._errors import ConfigError
from pipelines.config import config_path, load_yaml_model

__all__ = ["PipelineSettings", "load_settings"]


class PipelineSettings(BaseModel):
    """Settings shared by every flow.

    Attributes:
        database: DuckDB file path or SQLAlchemy URL; ``$FEEDBACK_DB_URL`` and ``--db`` win.
        timezone: IANA zone for schedules and report days.
        stages: Analysis stages run after ingestion, in order; ``pipeline.yaml`` must list
            them (``[]`` to only ingest), so a missing key never silently analyses nothing.
        analysis_chunk_size: Records analysed and saved at a time; bounds a run's memory.
        outbox_dir: Where alert mails are written when no SMTP server is configured.
        reports_dir: Where HTML reports are written.
    """

    model_config = ConfigDict(extra="forbid")

    database: str = "data/feedback.duckdb"
    timezone: str = "Europe/Istanbul"
    stages: list[str] = Field(default_factory=list)
    analysis_chunk_size: int = Field(default=2000, ge=1, le=100_000)
    outbox_dir: Path = Path("outbox")
    reports_dir: Path = Path("reports")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("unknown timezone; use an IANA name such as Europe/Istanbul") from exc
        return value


def load_settings(config_dir: str | os.PathLike[str] | None = None) -> PipelineSettings:
    """Load ``pipeline.yaml`` from the config directory (embedded defaults when not given).

    Args:
        config_dir: Folder with the YAML files, as given by ``--config``.

    Returns:
        The validated settings.

    Raises:
        ConfigError: E004 when the file has no ``stages`` key; other codes as
            ``load_yaml_model``.
    """
    file = config_path("pipeline.yaml", config_dir)
    settings = load_yaml_model(file, PipelineSettings)
    if "stages" not in settings.model_fields_set:
        raise ConfigError(
            f"{file} has no 'stages': nothing would be analysed. List the analysis stages, "
            "e.g. 'stages: [sentiment, aspects, topics, trends, flagging, alerts]', or write "
            "'stages: []' to only ingest.",
            code="E004",
        )
    return settings
