"""The canonical feedback record every source is mapped into."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "RECORD_COLUMNS",
    "Channel",
    "FeedbackRecord",
    "content_id",
    "record_id",
    "storable",
]


# NUL (PostgreSQL text refuses it) and lone UTF-16 surrogates (not encodable as UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: Any) -> Any:
    """``value`` without the characters a database refuses in text, in strings at any depth.

    Args:
        value: A string, or a dict/list holding strings (``raw``, ``metadata``); anything else
            is returned as is.

    Returns:
        The same structure with NUL characters and lone surrogates removed.
    """
    if isinstance(value, str):
        return _UNSTORABLE.sub("", value)
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value


class Channel(StrEnum):
    """Kind of feedback; decides defaults such as reach and public visibility."""

    REVIEW = "review"
    SURVEY = "survey"
    SOCIAL = "social"


def _digest(*parts: str) -> str:
    joined = "\x1f".join(parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:32]


def record_id(source: str, external_id: str) -> str:
    """Stable record id from the source name and the source's own id.

    Args:
        source: Name of the source as declared in ``sources.yaml``.
        external_id: The id the source system gave the row (review id, answer id...).

    Returns:
        A 32-hex-character id that is the same on every run for the same row.
    """
    return _digest(source, str(external_id))


def content_id(source: str, *content: str) -> str:
    """Stable record id for sources without ids: a hash of the source and the row content.

    Args:
        source: Name of the source.
        content: Fields that together identify the row (e.g. created_at, author, text).

    Returns:
        A 32-hex-character id.
    """
    normalized = [unicodedata.normalize("NFC", part).strip() for part in content]
    return _digest(source, "content", *normalized)


class FeedbackRecord(BaseModel):
    """One piece of customer feedback, whatever source it came from.

    ``text`` holds the original free text; the normalize stage adds the redacted analysis
    text beside it. ``raw`` keeps the row's configured columns for audit. Records built by a
    source are already protected (``pipelines.ingest.privacy``): ``raw``, ``metadata``,
    ``author`` and the other fields carry no identifier in clear.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    channel: Channel
    external_id: str | None = None
    created_at: datetime
    text: str = Field(min_length=1, max_length=20_000)
    title: str | None = None
    rating: int | None = Field(default=None, ge=1, le=5)
    nps: int | None = Field(default=None, ge=0, le=10)
    customer_id: str | None = None
    customer_value: float | None = None
    author: str | None = None
    author_followers: int | None = Field(default=None, ge=0)
    platform: str | None = None
    url: str | None = None
    product: str | None = None
    store: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    raw: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        return storable(data) if isinstance(data, dict) else data

    @field_validator("created_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is blank")
        return value


RECORD_COLUMNS: tuple[str, ...] = tuple(FeedbackRecord.model_fields)
