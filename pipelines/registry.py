"""Stage names used in ``pipeline.yaml`` and the classes that implement them."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

from pipelines._errors import ConfigError
from pipelines.stages import Stage

__all__ = ["STAGES", "build_stages"]

# name -> "module:Class"; each class offers ``from_config(config_dir) -> Stage``.
STAGES: dict[str, str] = {
    "sentiment": "pipelines.analysis.sentiment:SentimentStage",
    "aspects": "pipelines.analysis.aspects:AspectStage",
    "topics": "pipelines.analysis.topics:TopicStage",
    "trends": "pipelines.analysis.trends:TrendStage",
    "flagging": "pipelines.analysis.flagging:FlaggingStage",
    "alerts": "pipelines.delivery.alerts:AlertStage",
}


def build_stages(
    names: Sequence[str], config_dir: str | os.PathLike[str] | None = None
) -> list[Stage]:
    """Instantiate the named stages, in order.

    Args:
        names: Stage names from ``pipeline.yaml`` or the CLI.
        config_dir: Configuration folder handed to each stage.

    Returns:
        The stage objects.

    Raises:
        ConfigError: A name is unknown.
    """
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise ConfigError(
            f"unknown stage(s) {unknown}; use any of {sorted(STAGES)} in pipeline.yaml 'stages'."
        )
    stages = []
    for name in names:
        module_name, class_name = STAGES[name].split(":")
        stage_class = getattr(importlib.import_module(module_name), class_name)
        stages.append(stage_class.from_config(config_dir))
    return stages
