"""A copy of the shipped configuration with one line of one file changed."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipelines.config import DEFAULT_CONFIG_DIR


def edited_configs(folder: Path, file: str, old: str, new: str) -> Path:
    """Copy ``configs/`` into ``folder`` and replace ``old`` by ``new`` in ``file``.

    Args:
        folder: Where the copy goes (must not exist).
        file: e.g. ``flagging.yaml``.
        old: Text the shipped file holds (checked, so a changed default fails loudly).
        new: Its replacement.

    Returns:
        ``folder``.
    """
    shutil.copytree(DEFAULT_CONFIG_DIR, folder)
    target = folder / file
    text = target.read_text(encoding="utf-8")
    assert old in text, f"{file} no longer holds {old!r}"
    target.write_text(text.replace(old, new), encoding="utf-8")
    return folder
