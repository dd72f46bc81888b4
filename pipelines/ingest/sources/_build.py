"""Turning sources.yaml into ready-to-read ``Source`` objects."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pipelines._errors import ConfigError
from pipelines.config import load_yaml_model
from pipelines.ingest.sources._base import Source
from pipelines.ingest.sources._config import (
    CsvSourceConfig,
    HttpJsonSourceConfig,
    JsonlSourceConfig,
    SourceConfig,
    SourcesConfig,
)
from pipelines.ingest.sources._files import CsvSource, JsonlSource, XlsxSource
from pipelines.ingest.sources._http import HttpJsonSource

__all__ = ["build_source", "load_sources"]

_GLOB_CHARS = frozenset("*?[")


def _check_inside_data_dir(config: SourcesConfig, file: Path, base_dir: Path) -> None:
    """Refuse a file source whose ``path`` leads out of ``data_dir``.

    The path, with ``~`` expanded and ``..`` collapsed, must lie inside ``data_dir``; a glob may
    not hold ``..`` at all (``**/..`` would climb out). Symbolic links inside the data folder are
    followed: the folder's owner put them there.
    """
    for index, source in enumerate(config.sources):
        if isinstance(source, HttpJsonSourceConfig):
            continue
        pattern = Path(source.path).expanduser()
        target = Path(os.path.normpath(base_dir / pattern))
        climbs = ".." in pattern.parts and bool(_GLOB_CHARS.intersection(source.path))
        if climbs or not target.is_relative_to(base_dir):
            raise ConfigError(
                f"{file}: key 'sources.{index}.path' (source '{source.name}') leads outside the "
                f"data folder {base_dir}; sources read only files inside data_dir. Give the "
                "path relative to data_dir without '..', or set data_dir to the folder that "
                "holds the data.",
                code="E006",
            )


def build_source(config: SourceConfig, base_dir: str | os.PathLike[str] | None = None) -> Source:
    """The reader for one source entry.

    Args:
        config: One validated entry of sources.yaml.
        base_dir: Folder relative file paths are resolved against (default: current directory).

    Returns:
        A ``CsvSource``, ``JsonlSource``, ``XlsxSource`` or ``HttpJsonSource``.
    """
    if isinstance(config, HttpJsonSourceConfig):
        return HttpJsonSource(config)
    folder = Path(base_dir) if base_dir is not None else Path.cwd()
    if isinstance(config, CsvSourceConfig):
        return CsvSource(config, folder)
    if isinstance(config, JsonlSourceConfig):
        return JsonlSource(config, folder)
    return XlsxSource(config, folder)


def load_sources(
    path: str | os.PathLike[str],
    names: Iterable[str] | None = None,
    include_disabled: bool = False,
) -> list[Source]:
    """Read sources.yaml and build its readers.

    Args:
        path: The sources.yaml file. File paths inside it are resolved against its
            ``data_dir`` (relative to the folder holding the YAML file) and must stay inside it.
        names: Only these sources (in file order); None for all.
        include_disabled: Also build sources with ``enabled: false``.

    Returns:
        The readers, in the order of the file.

    Raises:
        ConfigError: The file is missing or invalid, or ``names`` holds an unknown source;
            E006 when a file source's path leads outside ``data_dir``.
    """
    file = Path(path)
    config = load_yaml_model(file, SourcesConfig)
    base_dir = (file.resolve().parent / config.data_dir).resolve()
    _check_inside_data_dir(config, file, base_dir)
    wanted = None if names is None else list(names)
    if wanted is not None:
        known = [source.name for source in config.sources]
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ConfigError(
                f"unknown source(s) {unknown} requested; {file} defines {known}. Use one of "
                "those names or add the source to the file."
            )
    return [
        build_source(source, base_dir)
        for source in config.sources
        if (wanted is None or source.name in wanted) and (include_disabled or source.enabled)
    ]
