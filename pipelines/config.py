"""Loading and validating the YAML configuration (data, validated with pydantic).

Configuration fails closed: a configuration folder that does not exist, or one that lacks a
file naming the site's own sources or alert recipients (``SITE_FILES``), is an error, never a
silent fall-back to the embedded demo configuration. Error messages name the file, the line and
key, and the fix; they never quote what the file holds (it may be a secret or someone's data).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pipelines._errors import ConfigError

__all__ = [
    "CONFIG_DIR_ENV",
    "DEFAULT_CONFIG_DIR",
    "SITE_FILES",
    "config_path",
    "load_yaml_model",
]

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_DIR_ENV = "FEEDBACK_CONFIG_DIR"
SITE_FILES: tuple[str, ...] = ("sources.yaml", "routing.yaml")
"""Files a configuration folder must hold itself: the embedded ones read the demo data and
mail the demo addresses."""

ModelT = TypeVar("ModelT", bound=BaseModel)

# Quoted text in PyYAML's problem descriptions: a character, alias or tag copied from the file,
# or a token name ('<stream end>') or punctuation (',' or ']') that is kept.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_HIDDEN = "'…'"


def config_path(name: str, config_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the configuration file ``name`` in the chosen config directory.

    Without a folder (no ``--config``, no ``$FEEDBACK_CONFIG_DIR``) the embedded defaults in
    ``configs/`` are used (the demo). A folder given needs the ``SITE_FILES``; any other file
    it lacks (models, thresholds, taxonomy) is taken from the embedded defaults.

    Args:
        name: File name such as ``sources.yaml``.
        config_dir: Directory given by ``--config``; else ``$FEEDBACK_CONFIG_DIR``; else the
            embedded defaults in ``configs/``.

    Returns:
        The path (which may not exist; loaders report that with a fix).

    Raises:
        ConfigError: E002 when the folder given does not exist; E003 when it lacks ``name``
            and ``name`` is one of ``SITE_FILES``.
    """
    given, origin = (
        (config_dir, "--config")
        if config_dir
        else (os.environ.get(CONFIG_DIR_ENV), f"${CONFIG_DIR_ENV}")
    )
    if not given:
        return DEFAULT_CONFIG_DIR / name
    folder = Path(given).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"configuration folder {folder} (from {origin}) does not exist or is not a folder. "
            f"Fix the path, or create it with your sources.yaml and routing.yaml (templates in "
            f"{DEFAULT_CONFIG_DIR}); leave {origin} out only to run the demo configuration.",
            code="E002",
        )
    chosen = folder / name
    if chosen.is_file():
        return chosen
    if name in SITE_FILES:
        raise ConfigError(
            f"configuration folder {folder} has no {name}; the demo {name} is never used for a "
            f"folder given with {origin}. Copy {DEFAULT_CONFIG_DIR / name} to {chosen} and "
            "edit it for your site.",
            code="E003",
        )
    return DEFAULT_CONFIG_DIR / name


def _format_location(location: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in location) or "<root>"


def _line_of(text: str, location: Sequence[int | str]) -> int | None:
    """1-based line of the YAML node at ``location`` (or of its nearest existing parent).

    Location parts that are no key of the document (a missing key, the tag pydantic inserts for
    a discriminated union) are skipped.
    """
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return None
    for part in location:
        if isinstance(node, yaml.MappingNode):
            found = [value for key, value in node.value if str(key.value) == str(part)]
            node = found[0] if found else node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if 0 <= part < len(node.value) else node
    return node.start_mark.line + 1


def _leaves(value: Any) -> Iterator[str]:
    """Every scalar value (not key) in a parsed YAML value, as text."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, str | int | float):
        yield str(value)


def _without_values(message: str, value: Any) -> str:
    """``message`` with every quoted copy of a value from the offending input hidden."""
    for leaf in sorted(set(_leaves(value)), key=len, reverse=True):
        for quoted in (repr(leaf), f'"{leaf}"', f"'{leaf}'"):
            message = message.replace(quoted, _HIDDEN)
    return message


def _hide_quoted(quoted: re.Match[str]) -> str:
    """A quoted part of a PyYAML problem, hidden unless it is a token name or punctuation."""
    text = quoted[0]
    return text if text.startswith(("'<", '"<')) or not re.search(r"\w", text) else _HIDDEN


def _read_yaml(file: Path) -> tuple[str, Any]:
    """The text and parsed content of a YAML file; errors say where, never what."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{file} is not UTF-8 text. Point to the YAML configuration file, saved as UTF-8."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {file} ({exc.strerror}). Check the file's permissions."
        ) from None
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The exception's own text shows the offending line; raised ``from None`` so no
        # traceback (Prefect logs them) carries it either.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark:
            where += f" ({context} from line {context_mark.line + 1})"
        problem = _QUOTED.sub(_hide_quoted, getattr(exc, "problem", None) or "syntax error")
        raise ConfigError(
            f"{file} is not valid YAML{where}: {problem}. Fix the syntax there: indent with "
            "spaces (not tabs), put a space after each ':', close every quote and bracket."
        ) from None


def load_yaml_model(path: str | os.PathLike[str], model: type[ModelT]) -> ModelT:
    """Read a YAML file and validate it against a pydantic model.

    Args:
        path: The YAML file.
        model: The pydantic model describing the file.

    Returns:
        The validated configuration object.

    Raises:
        ConfigError: The file is missing, is not YAML, or a key is invalid; the message names
            the file, the line and key path and what to change, never the values in the file.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"configuration file {file} not found. Pass --config DIR pointing at a folder that "
            f"contains {file.name}, or copy the default from {DEFAULT_CONFIG_DIR / file.name}."
        )
    text, data = _read_yaml(file)
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            line = _line_of(text, error["loc"])
            where = f" (line {line})" if line else ""
            message = _without_values(error["msg"], error["input"])
            problems.append(f"key '{_format_location(error['loc'])}'{where}: {message}")
        raise ConfigError(
            f"{file} is invalid: {'; '.join(problems)}. Fix these keys (see the commented "
            f"defaults in {DEFAULT_CONFIG_DIR / file.name})."
        ) from None
