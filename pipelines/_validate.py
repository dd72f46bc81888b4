"""Validate every configuration file a command will use, before anything starts.

Commands that start Prefect (``run``, ``ingest``, ``rerun``, ``serve``) call this first, so a
typo ends in one line (code, file, key, fix) within a second, not after a server started and a
flow failed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pipelines._errors import ConfigError
from pipelines.config import config_path
from pipelines.ingest.sources import load_sources
from pipelines.registry import STAGES
from pipelines.settings import PipelineSettings, load_settings

__all__ = ["check_configuration"]


def check_configuration(
    config_dir: str | os.PathLike[str] | None = None,
    sources: Sequence[str] | None = None,
    stages: Sequence[str] | None = None,
) -> PipelineSettings:
    """Load and validate ``pipeline.yaml``, ``sources.yaml`` and each stage's file.

    Args:
        config_dir: ``--config`` folder; None: ``$FEEDBACK_CONFIG_DIR`` or the embedded defaults.
        sources: Source names the command will read (unknown names are an error).
        stages: Stages the command will run; None: ``pipeline.yaml``'s.

    Returns:
        The pipeline settings.

    Raises:
        ConfigError: The first problem found (its code, file, key and fix).
    """
    settings = load_settings(config_dir)
    load_sources(config_path("sources.yaml", config_dir), names=sources)
    chosen = list(settings.stages if stages is None else stages)
    unknown = [name for name in chosen if name not in STAGES]
    if unknown:
        raise ConfigError(
            f"unknown stage(s) {unknown}; use any of {sorted(STAGES)} "
            f"({config_path('pipeline.yaml', config_dir)} 'stages' or --stage)."
        )
    if "sentiment" in chosen:
        from pipelines.analysis.sentiment import load_sentiment_config

        load_sentiment_config(config_dir)
    if "topics" in chosen:
        from pipelines.analysis.topics import load_topics_config

        load_topics_config(config_dir)
    if {"aspects", "flagging", "alerts"} & set(chosen):
        from pipelines.analysis.aspects import load_aspect_config

        load_aspect_config(config_dir)
    if "flagging" in chosen:
        from pipelines.analysis.flagging import load_flagging_rules

        load_flagging_rules(config_dir)
    if "alerts" in chosen:
        from pipelines.delivery.routing import load_routing

        load_routing(config_dir)
    return settings
