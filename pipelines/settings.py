"""Pipeline-wide settings: ``configs/pipeline.yaml``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines._errors import ConfigError
from pipelines.config import config_path, load_yaml_model

__all__ = [
    "ExecutorSettings",
    "PipelineSettings",
    "beside_database",
    "load_settings",
    "outbox_dir_for",
    "reports_dir_for",
]


_SCHEDULER_ADDRESS = re.compile(
    r"tcp://(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})"
)


class ExecutorSettings(BaseModel):
    """Where the analysis chunk tasks run (``executor`` in ``pipeline.yaml``).

    Attributes:
        kind: ``local``: in the flow's process, one chunk after another; ``dask``: as Prefect
            tasks on a Dask cluster (``prefect_dask.DaskTaskRunner``).
        address: With ``dask``, an existing scheduler, ``tcp://host:port`` (workers on several
            machines, see README "Scaling out"); None starts a temporary ``LocalCluster`` of
            ``n_workers`` processes on this machine for the run.
        n_workers: Worker processes of the temporary ``LocalCluster`` (one thread each).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "dask"] = "local"
    address: str | None = None
    n_workers: int = Field(default=2, ge=1, le=256)

    @field_validator("address")
    @classmethod
    def _tcp_address(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = _SCHEDULER_ADDRESS.fullmatch(value)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ValueError(
                "must be a Dask scheduler address tcp://host:port, e.g. tcp://10.0.0.5:8786 "
                "(or null for a temporary local cluster)"
            )
        return value

    @model_validator(mode="after")
    def _address_needs_dask(self) -> ExecutorSettings:
        if self.kind == "local" and self.address is not None:
            raise ValueError("address is used only with kind: dask; remove it or set kind: dask")
        return self


class PipelineSettings(BaseModel):
    """Settings shared by every flow.

    Attributes:
        database: DuckDB file path or SQLAlchemy URL; ``$FEEDBACK_DB_URL`` and ``--db`` win.
        timezone: IANA zone for schedules and report days.
        stages: Analysis stages run after ingestion, in order; ``pipeline.yaml`` must list
            them (``[]`` to only ingest), so a missing key never silently analyses nothing.
        analysis_chunk_size: Records analysed and saved at a time; bounds a run's memory.
        outbox_dir: Where alert mails are written when no SMTP server is configured; when not
            set, ``outbox/`` beside the database (``outbox_dir_for``).
        reports_dir: Where HTML reports are written; when not set, ``reports/`` beside the
            database (``reports_dir_for``).
        failure_mail_to: Who gets a mail when a nightly or rerun run fails or crashes (the
            data team); same SMTP settings as the alerts.
        executor: Where the analysis chunk tasks run (local, or a Dask cluster).
    """

    model_config = ConfigDict(extra="forbid")

    database: str = "data/feedback.duckdb"
    timezone: str = "Europe/Istanbul"
    stages: list[str] = Field(default_factory=list)
    analysis_chunk_size: int = Field(default=2000, ge=1, le=100_000)
    outbox_dir: Path = Path("outbox")
    reports_dir: Path = Path("reports")
    failure_mail_to: list[str] = Field(default_factory=list)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)

    @field_validator("failure_mail_to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        if any("@" not in address or any(c.isspace() for c in address) for address in value):
            raise ValueError("must be a list of e-mail addresses, e.g. [data-team@example.com]")
        return value

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


def beside_database(db_url: str, name: str) -> Path:
    """The folder ``name`` (``reports``, ``outbox``) that belongs to the database ``db_url``.

    A DuckDB file's folder holds them (``data/feedback.duckdb`` -> ``data/reports``); for a
    server database they are ``<name>/<database>/`` under the working directory. So a run
    against another database never overwrites the real daily report or outbox.

    Args:
        db_url: SQLAlchemy URL or DuckDB path.
        name: Folder name.

    Returns:
        The folder (may not exist yet).
    """
    if "://" not in db_url or db_url.startswith("duckdb:"):
        return Path(db_url.removeprefix("duckdb:///")).parent / name
    location = db_url.split("://", 1)[1].split("?", 1)[0]
    database = location.split("/", 1)[1].strip("/") if "/" in location else ""
    return Path(name) / (database or "database")


def _configured_or_beside(settings: PipelineSettings, field: str, db_url: str) -> Path:
    if field in settings.model_fields_set:
        return Path(getattr(settings, field))
    return beside_database(db_url, Path(getattr(settings, field)).name)


def reports_dir_for(settings: PipelineSettings, db_url: str) -> Path:
    """Where the HTML reports of the database ``db_url`` go.

    Args:
        settings: The pipeline settings (``reports_dir`` wins when pipeline.yaml sets it).
        db_url: The database's SQLAlchemy URL or DuckDB path.

    Returns:
        The folder (may not exist yet).
    """
    return _configured_or_beside(settings, "reports_dir", db_url)


def outbox_dir_for(settings: PipelineSettings, db_url: str) -> Path:
    """Where the ``.eml`` alert mails of the database ``db_url`` go without an SMTP server.

    Args:
        settings: The pipeline settings (``outbox_dir`` wins when pipeline.yaml sets it).
        db_url: The database's SQLAlchemy URL or DuckDB path.

    Returns:
        The folder (may not exist yet).
    """
    return _configured_or_beside(settings, "outbox_dir", db_url)
