"""Spam-style duplicates (same author, same text, short time) and the text hash for caches.

A record is a duplicate when an earlier record has

* the same author identity: ``author`` within the same ``source`` (handles are only unique
  per platform), or else ``customer_id`` (our own id, valid across sources). Rows with
  neither are never duplicates: two anonymous "Great!" reviews are two opinions;
* the same duplicate key: ``normalize_text`` (HTML, URLs, mentions, Persian letters and
  digits...), casefolded, with punctuation, symbols and emoji removed and whitespace
  collapsed. So ``"Kargo geç geldi!!"`` and ``"kargo geç geldi"`` match; ``"kargo geç"`` does
  not. A text that is only punctuation/emoji keeps them in its key (so 👍 != 👎);
* a ``created_at`` at most ``window`` after the first record of the series, whose id goes to
  ``duplicate_of``. The window is anchored at that first record: a bot posting every 12 hours
  starts a new series after a day.

Rows whose ``created_at`` is missing or unparseable are never duplicates (they cannot be
placed in time) and are kept like every other row.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import timedelta

import pandas as pd

from pipelines.ingest.normalize import normalize_text

__all__ = ["DUPLICATE_COLUMN", "duplicate_key", "mark_duplicates", "text_hash"]

DUPLICATE_COLUMN = "duplicate_of"
_REQUIRED_COLUMNS = ("id", "created_at", "text")
_WHITESPACE = re.compile(r"\s+")


def text_hash(text: str) -> str:
    """Stable hash of the exact text given (pass the analysis text that gets embedded).

    Args:
        text: The text, byte for byte as it is fed to the model.

    Returns:
        The first 32 hex characters of its UTF-8 SHA-256.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def duplicate_key(text: str) -> str:
    """The form two texts must share to be duplicates (see the module docstring).

    Args:
        text: Raw feedback text.

    Returns:
        Normalized, casefolded text without punctuation, symbols and emoji; when that leaves
        nothing, the normalized casefolded text with them.
    """
    folded = normalize_text(text).casefold()
    kept = "".join(
        " " if unicodedata.category(char)[0] in "PSZ" or char == "\u200d" else char
        for char in folded
    )
    stripped = _WHITESPACE.sub(" ", kept).strip()
    return stripped or folded


def _present(value: object) -> str | None:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    return str(value).strip() or None


def _identity(author: object, source: object, customer: object) -> str | None:
    author_text = _present(author)
    if author_text is not None:
        return f"author\x1f{_present(source) or ''}\x1f{author_text}"
    customer_text = _present(customer)
    if customer_text is not None:
        return f"customer\x1f{customer_text}"
    return None


def _column(frame: pd.DataFrame, name: str) -> list[object]:
    return frame[name].tolist() if name in frame.columns else [None] * len(frame)


def _candidates(frame: pd.DataFrame, from_batch: bool) -> pd.DataFrame:
    identities = map(
        _identity, _column(frame, "author"), _column(frame, "source"), _column(frame, "customer_id")
    )
    return pd.DataFrame(
        {
            "id": frame["id"].astype(str).to_numpy(),
            "identity": list(identities),
            "text": frame["text"].astype("string").fillna("").to_numpy(),
            "time": pd.to_datetime(
                frame["created_at"], utc=True, errors="coerce", format="mixed"
            ).to_numpy(),
            "from_batch": from_batch,
            "position": range(len(frame)),
        }
    )


def mark_duplicates(
    batch: pd.DataFrame,
    window: timedelta = timedelta(days=1),
    existing: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Add ``duplicate_of``: id of the first record of the same author's same-text series.

    Args:
        batch: New records; needs ``id``, ``created_at`` and ``text``, uses ``author``,
            ``customer_id`` and ``source`` when present.
        window: Longest time after the first record of a series that still counts as a
            duplicate of it (inclusive).
        existing: Recently stored records (same columns) to compare against across runs.
            Rows already marked as duplicates there (non-null ``duplicate_of``) are ignored,
            as are rows whose id is also in ``batch``.

    Returns:
        A copy of ``batch`` with ``duplicate_of`` (an id, or None for first occurrences and
        rows that cannot be duplicates). No row is dropped.

    Raises:
        ValueError: A required column is missing (the message names it).
    """
    for name, frame in (("batch", batch), ("existing", existing)):
        if frame is None:
            continue
        missing = [column for column in _REQUIRED_COLUMNS if column not in frame.columns]
        if missing:
            raise ValueError(
                f"{name} lacks column(s) {missing}; pass records with id, created_at and text"
            )
    if window < timedelta(0):
        raise ValueError(f"window must not be negative, got {window}; use e.g. timedelta(days=1)")

    marked = batch.copy()
    marked[DUPLICATE_COLUMN] = pd.Series([None] * len(batch), index=batch.index, dtype=object)
    if batch.empty:
        return marked

    pools = [_candidates(batch, from_batch=True)]
    if existing is not None and not existing.empty:
        earlier = existing[~existing["id"].astype(str).isin(set(pools[0]["id"]))]
        if DUPLICATE_COLUMN in earlier.columns:
            earlier = earlier[earlier[DUPLICATE_COLUMN].isna()]
        pools.append(_candidates(earlier, from_batch=False))
    candidates = pd.concat(pools, ignore_index=True)
    candidates = candidates[candidates["identity"].notna() & candidates["time"].notna()]
    # Only an author seen twice can repeat a text: the (costly) keys are for those rows alone.
    candidates = candidates[candidates["identity"].duplicated(keep=False)]
    candidates = candidates.sort_values(["time", "from_batch", "position"], kind="stable")

    duplicate_of: list[object] = [None] * len(batch)
    window_span = pd.Timedelta(window).to_timedelta64()
    first: dict[tuple[str, str], tuple[str, object]] = {}
    for identity, text, record_id, moment, from_batch, position in zip(
        candidates["identity"],
        candidates["text"],
        candidates["id"],
        candidates["time"].to_numpy(),
        candidates["from_batch"],
        candidates["position"],
        strict=True,
    ):
        series = (identity, duplicate_key(text))
        start = first.get(series)
        if start is not None and moment - start[1] <= window_span:
            if from_batch:
                duplicate_of[position] = start[0]
            continue
        first[series] = (record_id, moment)
    marked[DUPLICATE_COLUMN] = pd.Series(duplicate_of, index=batch.index, dtype=object)
    return marked
