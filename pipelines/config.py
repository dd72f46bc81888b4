"""Loading and validating the YAML configuration (data, validated with pydantic)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pipelines._errors import ConfigError

__all__ = ["CONFIG_DIR_ENV", "DEFAULT_CONFIG_DIR", "config_path", "load_yaml_model"]

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_DIR_ENV = "FEEDBACK_CONFIG_DIR"

ModelT = TypeVar("ModelT", bound=BaseModel)


def config_path(name: str, config_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the configuration file ``name`` in the chosen config directory.

    A folder given by ``--config`` only needs the files it changes: any file it lacks is taken
    from the embedded defaults.

    Args:
        name: File name such as ``sources.yaml``.
        config_dir: Directory given by ``--config``; else ``$FEEDBACK_CONFIG_DIR``; else the
            embedded defaults in ``configs/``.

    Returns:
        The path (which may not exist; loaders report that with a fix).
    """
    directory = config_dir or os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR
    chosen = Path(directory) / name
    return chosen if chosen.is_file() else DEFAULT_CONFIG_DIR / name


def _format_location(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location) or "<root>"


def _shown_input(value: object, error_type: str) -> str:
    """The offending value for short scalars only, so secrets in nested mappings never echo."""
    if error_type == "missing" or not isinstance(value, (str, int, float, bool)):
        return ""
    text = repr(value)
    return f" (got {text})" if len(text) <= 60 else ""


def load_yaml_model(path: str | os.PathLike[str], model: type[ModelT]) -> ModelT:
    """Read a YAML file and validate it against a pydantic model.

    Args:
        path: The YAML file.
        model: The pydantic model describing the file.

    Returns:
        The validated configuration object.

    Raises:
        ConfigError: The file is missing, is not YAML, or a key is invalid; the message names
            the file, the key path and what to change.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"configuration file {file} not found. Pass --config DIR pointing at a folder that "
            f"contains {file.name}, or copy the default from {DEFAULT_CONFIG_DIR / file.name}."
        )
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{file} is not valid YAML: {exc}. Fix the syntax at the line shown."
        ) from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"key '{_format_location(error['loc'])}': {error['msg']}"
            + _shown_input(error["input"], error["type"])
            for error in exc.errors()
        )
        raise ConfigError(
            f"{file} is invalid: {problems}. Fix these keys (see the commented defaults in "
            f"{DEFAULT_CONFIG_DIR / file.name})."
        ) from exc
