"""Reading the labelled sentiment sets (``data.jsonl`` in the ../shared/datasets format).

Each line is ``{id, text, label (neg|neu|pos), split, lang, ...}``, optionally with ``weight``
(a positive loss multiplier, default 1: labels from the store use it); a set's folder may hold a
``SOURCE.md`` whose ``**Licence (as stated):**`` line names its licence.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines._errors import ConfigError
from pipelines.ingest.normalize import normalize_text
from pipelines.ingest.redact import redact

__all__ = [
    "LABELS",
    "SHARED_DIR_ENV",
    "DatasetInfo",
    "DatasetSplit",
    "analysis_text",
    "capped_split",
    "discover_datasets",
    "read_split",
    "shared_datasets_dir",
]

LABELS: tuple[str, str, str] = ("negative", "neutral", "positive")
SHARED_DIR_ENV = "FEEDBACK_SHARED_DIR"
_LABEL_INDEX = {"neg": 0, "neu": 1, "pos": 2, "negative": 0, "neutral": 1, "positive": 2}
_LICENCE_LINE = re.compile(r"\*\*Licen[cs]e[^*]*\*\*\s*(.+)", re.IGNORECASE)
_CHOICES_LINE = re.compile(r"\*\*Label choices:\*\*\s*(.+)", re.IGNORECASE)
_REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_datasets_dir() -> Path:
    """Folder of the labelled sets: ``$FEEDBACK_SHARED_DIR/datasets``, else ``../shared/datasets``.

    Returns:
        The folder (which may not exist; callers report that).
    """
    shared = os.environ.get(SHARED_DIR_ENV)
    return (Path(shared) if shared else _REPO_ROOT.parent / "shared") / "datasets"


def analysis_text(text: str) -> str:
    """The text exactly as the pipeline analyses it: normalized, then PII-redacted.

    Args:
        text: Raw text.

    Returns:
        The analysis text (what ingestion stores and the models see).
    """
    return redact(normalize_text(text)).text


@dataclass(frozen=True)
class DatasetInfo:
    """One labelled set.

    Attributes:
        name: Folder name, e.g. ``laroseda_ro``.
        path: Its ``data.jsonl``.
        licence: Licence as stated in ``SOURCE.md`` (``"unknown"`` without one).
        neutral_choice: Whether its labellers could choose neutral, declared in ``SOURCE.md`` by
            a ``**Label choices:** negative, neutral, positive`` line (the store's labels): its
            rows then train and score all three classes even if none is neutral.
    """

    name: str
    path: Path
    licence: str
    neutral_choice: bool = False


@dataclass
class DatasetSplit:
    """The rows of one split of one set, ready for a model.

    Attributes:
        info: Which set.
        split: ``train`` or ``dev`` (or any split name in the file).
        frame: Columns ``id``, ``text`` (analysis text), ``label`` (0/1/2 for
            negative/neutral/positive), ``lang``, ``weight`` (loss multiplier, default 1).
        bad_lines: ``(line number, reason)`` of lines that could not be used.
    """

    info: DatasetInfo
    split: str
    frame: pd.DataFrame
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def has_neutral(self) -> bool:
        """Whether the split's labels include neutral: it has neutral rows, or its labellers
        could choose neutral (binary sets are neither)."""
        return self.info.neutral_choice or bool((self.frame["label"] == 1).any())

    @property
    def labels(self) -> np.ndarray:
        """Gold labels as an int64 array."""
        return self.frame["label"].to_numpy(dtype=np.int64)


def _dataset_info(file: Path) -> DatasetInfo:
    """A set's entry: licence and label choices from the ``SOURCE.md`` beside ``file``."""
    source = file.parent / "SOURCE.md"
    lines = (
        source.read_text(encoding="utf-8", errors="replace").splitlines()
        if source.is_file()
        else []
    )
    licences = [match.group(1).strip() for line in lines if (match := _LICENCE_LINE.search(line))]
    choices = [match.group(1).lower() for line in lines if (match := _CHOICES_LINE.search(line))]
    return DatasetInfo(
        file.parent.name,
        file,
        licences[0] if licences else "unknown",
        neutral_choice=bool(choices) and "neutral" in choices[0],
    )


def discover_datasets(root: str | os.PathLike[str]) -> list[DatasetInfo]:
    """Every ``data.jsonl`` under ``root`` (searched recursively), sorted by path.

    Args:
        root: A folder such as ../shared/datasets or one language's subfolder.

    Returns:
        One entry per file; the set's name is its folder's name.

    Raises:
        ConfigError: ``root`` is not a folder or holds no ``data.jsonl``.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise ConfigError(
            f"dataset folder {folder} not found; pass a folder containing data.jsonl files or "
            f"set ${SHARED_DIR_ENV} to the folder holding datasets/"
        )
    files = sorted(folder.rglob("data.jsonl"))
    if not files:
        raise ConfigError(f"no data.jsonl under {folder}; point at a folder of labelled sets")
    return [_dataset_info(file) for file in files]


def read_split(info: DatasetInfo, split: str) -> DatasetSplit:
    """Read the rows of one split, as analysis text with integer labels.

    Lines that are not JSON objects or lack a usable ``text``/``label`` are skipped and listed
    in ``bad_lines``, never fatal.

    Args:
        info: The set.
        split: Split name (``train``, ``dev``).

    Returns:
        The split (possibly empty).
    """
    rows: list[dict[str, object]] = []
    bad_lines: list[tuple[int, str]] = []
    with info.path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad_lines.append((number, "not JSON"))
                continue
            if not isinstance(row, dict) or row.get("split") != split:
                if not isinstance(row, dict):
                    bad_lines.append((number, "not a JSON object"))
                continue
            label = _LABEL_INDEX.get(str(row.get("label", "")).lower())
            text = row.get("text")
            if label is None or not isinstance(text, str):
                bad_lines.append((number, "missing text or unknown label"))
                continue
            prepared = analysis_text(text)
            if not prepared:
                bad_lines.append((number, "empty text"))
                continue
            weight = row.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
                bad_lines.append((number, "weight is not a positive number"))
                continue
            rows.append(
                {
                    "id": str(row.get("id", number)),
                    "text": prepared,
                    "label": label,
                    "lang": str(row.get("lang") or "other"),
                    "weight": float(weight),
                }
            )
    frame = pd.DataFrame(rows, columns=["id", "text", "label", "lang", "weight"])
    frame["label"] = frame["label"].astype("int64")
    frame["weight"] = frame["weight"].astype("float64")
    return DatasetSplit(info, split, frame, bad_lines)


def capped_split(split: DatasetSplit, max_rows: int, block_rows: int) -> DatasetSplit:
    """At most ``max_rows`` rows of a split: whole blocks of ``block_rows`` consecutive rows,
    evenly spaced over the file (some sets are sorted by label), first and last included.

    Whole blocks keep the feature cache's stored blocks reusable (``FeatureCache`` stores
    long lists block by block), so a capped set needs only those blocks embedded.

    Args:
        split: The split.
        max_rows: Cap (at least one block is kept).
        block_rows: Block size (``FeatureCache``'s ``CHUNK_ROWS``).

    Returns:
        The split itself when small enough, else a copy with the kept rows in file order.
    """
    rows = len(split.frame)
    if rows <= max_rows:
        return split
    blocks = -(-rows // block_rows)
    wanted = max(1, max_rows // block_rows)
    kept = np.unique(np.linspace(0, blocks - 1, wanted).round().astype(int))
    index = np.concatenate(
        [np.arange(b * block_rows, min((b + 1) * block_rows, rows)) for b in kept]
    )
    frame = split.frame.iloc[index].reset_index(drop=True)
    return DatasetSplit(split.info, split.split, frame, split.bad_lines)
