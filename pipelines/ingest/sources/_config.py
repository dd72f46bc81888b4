"""Pydantic models of ``configs/sources.yaml``: which feeds to read and how to map their columns.

Relative file paths are resolved against ``data_dir``, which is itself relative to the folder
of the YAML file (default: that folder), so a run reads the same files from any working
directory and moving the data means changing one key.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.ingest.privacy import KEEPABLE_FIELDS
from pipelines.records import Channel

__all__ = [
    "MAPPABLE_FIELDS",
    "CsvSourceConfig",
    "CursorPagination",
    "HttpJsonSourceConfig",
    "JsonlSourceConfig",
    "PagePagination",
    "SourceConfig",
    "SourcesConfig",
    "XlsxSourceConfig",
]

MAPPABLE_FIELDS: tuple[str, ...] = (
    "external_id",
    "created_at",
    "text",
    "title",
    "rating",
    "nps",
    "customer_id",
    "customer_value",
    "author",
    "author_followers",
    "platform",
    "url",
    "product",
    "store",
)
"""FeedbackRecord fields a source column can be mapped to with ``columns``."""

_SECRET_KEYS = ("token", "api_key", "apikey", "password", "secret", "bearer")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Encoding = Literal["auto", "utf-8", "cp1254", "windows-1256"]


class _SourceBase(BaseModel):
    """Keys every source has, whatever its kind."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=100)
    channel: Channel
    enabled: bool = True
    columns: dict[str, str]
    metadata_columns: list[str] = Field(default_factory=list)
    answer_columns: list[str] = Field(default_factory=list)
    date_format: str | None = None
    timezone: str | None = None
    keep_in_clear: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if str(key).lower() in _SECRET_KEYS:
                    # Errors echo their input: blank the secret in place so it never gets logged.
                    data[key] = "<redacted>"
                    raise ValueError(
                        f"key '{key}' looks like a secret; never put secrets in sources.yaml. "
                        "Export the token in an environment variable and name that variable "
                        "with token_env (e.g. token_env: REVIEWS_API_TOKEN)"
                    )
        return data

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(columns) - set(MAPPABLE_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown record field(s) {unknown}: keys of columns are FeedbackRecord fields "
                f"({', '.join(MAPPABLE_FIELDS)}) and values are the source's column names, "
                "e.g. 'rating: stars'; put other columns in metadata_columns"
            )
        return columns

    @field_validator("keep_in_clear")
    @classmethod
    def _keepable(cls, fields: list[str]) -> list[str]:
        unknown = sorted(set(fields) - set(KEEPABLE_FIELDS))
        if unknown:
            raise ValueError(
                f"keep_in_clear lists {unknown}; only {list(KEEPABLE_FIELDS)} can be kept "
                "readable (e.g. public social handles). Every other field is always redacted."
            )
        return fields

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, timezone: str | None) -> str | None:
        if timezone is not None:
            try:
                ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(
                    f"unknown timezone {timezone!r}; use an IANA name such as Europe/Istanbul"
                ) from exc
        return timezone

    @model_validator(mode="after")
    def _text_and_date_mapped(self) -> _SourceBase:
        if "created_at" not in self.columns:
            raise ValueError(
                "columns.created_at is required: name the column that holds the feedback date "
                "(incremental reads and content ids depend on it)"
            )
        if ("text" in self.columns) == bool(self.answer_columns):
            raise ValueError(
                "map the free text either with columns.text (one record per row) or, for "
                "surveys, with answer_columns (one record per non-empty answer), not both"
            )
        return self


class _FileSourceBase(_SourceBase):
    path: str = Field(min_length=1)


class CsvSourceConfig(_FileSourceBase):
    """A CSV file (or glob of files) with a header row.

    Attributes:
        encoding: ``auto`` detects UTF-8 (with or without BOM), cp1254 or windows-1256.
        delimiter: Field separator, one character.
    """

    kind: Literal["csv"]
    encoding: Encoding = "auto"
    delimiter: str = Field(default=",", min_length=1, max_length=1)


class JsonlSourceConfig(_FileSourceBase):
    """A JSON-lines file (or glob): one JSON object per line; dotted column names reach into
    nested objects (``user.name``)."""

    kind: Literal["jsonl"]
    encoding: Encoding = "auto"


class XlsxSourceConfig(_FileSourceBase):
    """An Excel workbook; the header is the first non-empty row of ``sheet`` (default: first)."""

    kind: Literal["xlsx"]
    sheet: str | None = None


class PagePagination(BaseModel):
    """``?page=N&page_size=M`` pagination; stops at an empty or short page.

    Attributes:
        order: ``oldest_first`` (new items are appended on the last pages: a read resumes at
            the last page read) or ``newest_first`` (new items push the others down: a read
            starts again at the first page and stops at the page holding the newest items of
            the previous complete read).
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["page"]
    page_param: str = "page"
    size_param: str = "page_size"
    page_size: int = Field(default=100, ge=1, le=10_000)
    first_page: int = Field(default=1, ge=0)
    order: Literal["oldest_first", "newest_first"] = "oldest_first"


class CursorPagination(BaseModel):
    """Cursor pagination: each response names the next cursor; stops when it is empty."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["cursor"]
    cursor_field: str = "next_cursor"
    cursor_param: str = "cursor"


class HttpJsonSourceConfig(_SourceBase):
    """A JSON HTTP API read page by page with retries.

    Attributes:
        url: Endpoint answering GET with JSON.
        items_path: Dotted path of the list of items in each response; empty when the response
            itself is the list.
        token_env: Name of the environment variable holding a bearer token (never the token).
        timeout_seconds: Total time one request may take, connection and body included.
        max_pages: Upper bound of pages per read; the watermark lets the next read go on
            (``newest_first`` pages: a read that would need more fails with E014).
    """

    kind: Literal["http_json"]
    url: str = Field(pattern=r"^https?://")
    pagination: Annotated[PagePagination | CursorPagination, Field(discriminator="type")]
    items_path: str = ""
    token_env: str | None = None
    max_retries: int = Field(default=3, ge=0, le=10)
    backoff_seconds: float = Field(default=1.0, ge=0, le=300)
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    max_pages: int = Field(default=1000, ge=1)

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, token_env: str | None) -> str | None:
        if token_env is not None and not _ENV_NAME.match(token_env):
            raise ValueError(
                "token_env must be the NAME of an environment variable (letters, digits, _), "
                "e.g. REVIEWS_API_TOKEN; export the token itself in that variable"
            )
        return token_env


SourceConfig = Annotated[
    CsvSourceConfig | JsonlSourceConfig | XlsxSourceConfig | HttpJsonSourceConfig,
    Field(discriminator="kind"),
]
"""One entry of ``sources``; ``kind`` (csv, jsonl, xlsx, http_json) picks the model."""


class SourcesConfig(BaseModel):
    """The whole ``sources.yaml``.

    Attributes:
        data_dir: Folder relative file paths are resolved against; relative to the YAML file.
        sources: The feeds, each with a unique name.
    """

    model_config = ConfigDict(extra="forbid")

    data_dir: str = "."
    sources: list[SourceConfig] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for source in sources:
            if source.name in seen:
                raise ValueError(
                    f"duplicate source name {source.name!r}: every source needs a unique name "
                    "(it keys record ids and watermarks); rename one of them"
                )
            seen.add(source.name)
        return sources
