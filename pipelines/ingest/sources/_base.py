"""What every source reader shares: the batch it returns, rejected rows, and row mapping.

A reader turns its rows into plain ``dict``s (column name -> value) and hands them to
``RowMapper``, which applies the ``columns`` mapping of sources.yaml and either builds
``FeedbackRecord``s or raises ``RowRejected`` with a stable reason code.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from typing import Any, ClassVar, NamedTuple
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from pipelines._errors import CountBalanceError
from pipelines.ingest.privacy import RecordPrivacy
from pipelines.ingest.sources._config import SourceConfig
from pipelines.records import Channel, FeedbackRecord, content_id, record_id

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "MAX_TEXT_CHARS",
    "REJECT_REASONS",
    "Rejected",
    "RowMapper",
    "RowRejected",
    "Source",
    "SourceBatch",
    "json_safe",
    "lookup",
    "raw_text",
]

MAX_TEXT_CHARS = 20_000
DEFAULT_CHUNK_ROWS = 5_000
"""Rows per chunk a source yields: ingest memory is bounded by this, not by the input size."""
REJECT_REASONS: tuple[str, ...] = (
    "bad_csv_row",
    "missing_text",
    "bad_date",
    "text_too_long",
    "bad_encoding",
    "invalid_field",
    "not_json",
)
"""Stable reason codes of quarantined rows."""

_TEXT_FIELDS = (
    "title",
    "customer_id",
    "author",
    "platform",
    "url",
    "product",
    "store",
)
_INT_RANGES = {"rating": (1, 5), "nps": (0, 10), "author_followers": (0, None)}


class Rejected(NamedTuple):
    """A row that could not become a record; goes to quarantine, never silently dropped.

    Attributes:
        raw: The row as read (text), for audit and replay.
        reason: One of ``REJECT_REASONS``.
        detail: Human explanation (which field, what value, which line).
    """

    raw: str
    reason: str
    detail: str | None = None


@dataclass
class SourceBatch:
    """What a source produced: one chunk of ``Source.read_chunks`` or a whole ``Source.read``.

    Attributes:
        source: Source name.
        records: Rows mapped to records.
        rejected: Rows that failed, with the reason.
        rows_read: Rows parsed (for surveys: answers); always ``len(records) + len(rejected)``.
        watermark: Set on the last chunk only: the state the next read resumes from (files: the
            manifest of fully read files; APIs: page, cursor or the newest ids seen). Saved
            once every chunk is stored, never before.
        skipped: Rows deliberately not read or not kept, by reason (e.g. ``unchanged_file``:
            rows of a file ingested whole by an earlier run and unchanged since).

    Raises:
        CountBalanceError: ``rows_read`` does not match records plus rejected rows.
    """

    source: str
    records: list[FeedbackRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    rows_read: int = 0
    watermark: str | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rows_read != len(self.records) + len(self.rejected):
            raise CountBalanceError(
                f"source {self.source!r}: read {self.rows_read} rows but produced "
                f"{len(self.records)} records and {len(self.rejected)} rejected rows; the reader "
                "lost rows. This is a bug in the reader: report it with the input file."
            )


class RowRejected(Exception):
    """Raised by ``RowMapper`` for a row that must be quarantined.

    Args:
        reason: One of ``REJECT_REASONS``.
        detail: What was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def lookup(row: Mapping[str, Any], column: str) -> Any:
    """Value of ``column`` in a row; a dotted name reaches into nested JSON objects.

    Args:
        row: The row.
        column: Column name, or ``a.b`` for ``row["a"]["b"]`` when no ``a.b`` key exists.

    Returns:
        The value, or None when absent.
    """
    if column in row:
        return row[column]
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def json_safe(value: Any) -> Any:
    """The value with dates turned into ISO strings so it serialises to JSON.

    Args:
        value: A cell or JSON value (nested dicts and lists allowed).

    Returns:
        The JSON-serialisable equivalent.
    """
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _as_int(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number: float
    if isinstance(value, bool):
        raise RowRejected("invalid_field", f"{name} {value!r} is not a whole number")
    try:
        number = float(value.strip().replace(",", ".")) if isinstance(value, str) else value
        if not math.isfinite(number) or not float(number).is_integer():
            raise ValueError(value)
    except (TypeError, ValueError):
        raise RowRejected("invalid_field", f"{name} {value!r} is not a whole number") from None
    low, high = _INT_RANGES[name]
    if number < low or (high is not None and number > high):
        bounds = f"{low}-{high}" if high is not None else f">= {low}"
        raise RowRejected("invalid_field", f"{name} {value!r} is outside {bounds}")
    return int(number)


def _as_float(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise RowRejected("invalid_field", f"{name} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise RowRejected("invalid_field", f"{name} {value!r} is not a finite number")
    return number


class RowMapper:
    """Applies one source's ``columns`` mapping to rows.

    Args:
        config: The source's configuration.
    """

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.zone: tzinfo = ZoneInfo(config.timezone) if config.timezone else UTC
        self.privacy = RecordPrivacy(config.keep_in_clear)
        self.raw_columns = list(
            dict.fromkeys(
                [*config.columns.values(), *config.metadata_columns, *config.answer_columns]
            )
        )

    def created_at(self, row: Mapping[str, Any]) -> datetime:
        """The row's date as aware UTC (naive values are in the source's ``timezone``).

        Args:
            row: The row.

        Returns:
            The parsed date.

        Raises:
            RowRejected: ``bad_date`` when the date is missing or unparseable.
        """
        column = self.config.columns["created_at"]
        value = lookup(row, column)
        date_format = self.config.date_format
        if isinstance(value, datetime):
            moment = value
        elif isinstance(value, date):
            moment = datetime.combine(value, time())
        elif isinstance(value, str) and value.strip():
            try:
                moment = (
                    datetime.strptime(value.strip(), date_format)
                    if date_format
                    else datetime.fromisoformat(value.strip())
                )
            except ValueError:
                expected = f"format {date_format!r}" if date_format else "ISO 8601"
                raise RowRejected(
                    "bad_date", f"{column} {value!r} is not a date in {expected}"
                ) from None
        else:
            raise RowRejected("bad_date", f"{column} is empty or not a date: {value!r}")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.zone)
        return moment.astimezone(UTC)

    def records(self, row: Mapping[str, Any], created_at: datetime) -> list[FeedbackRecord]:
        """Map a row to its record (or, for surveys, one record per non-empty answer).

        Args:
            row: The row.
            created_at: Its date from ``created_at``.

        Returns:
            The records, at least one.

        Raises:
            RowRejected: ``missing_text``, ``text_too_long`` or ``invalid_field``.
        """
        columns = self.config.columns
        fields: dict[str, Any] = {
            name: _as_text(lookup(row, columns[name])) for name in _TEXT_FIELDS if name in columns
        }
        for name in _INT_RANGES:
            if name in columns:
                fields[name] = _as_int(name, lookup(row, columns[name]))
        if "customer_value" in columns:
            fields["customer_value"] = _as_float(
                "customer_value", lookup(row, columns["customer_value"])
            )
        external_id = (
            _as_text(lookup(row, columns["external_id"])) if "external_id" in columns else None
        )
        metadata = {name: json_safe(lookup(row, name)) for name in self.config.metadata_columns}
        common = {
            "source": self.config.name,
            "channel": Channel(self.config.channel),
            "created_at": created_at,
            "raw": {column: json_safe(lookup(row, column)) for column in self.raw_columns},
            **fields,
        }
        if not self.config.answer_columns:
            text = self._text(row, columns["text"])
            return [self._build(common, external_id, text, metadata)]
        answers = {
            question: _as_text(lookup(row, question)) for question in self.config.answer_columns
        }
        filled = {question: answer for question, answer in answers.items() if answer}
        if not filled:
            raise RowRejected(
                "missing_text", f"no answer in {', '.join(self.config.answer_columns)}"
            )
        if common.get("customer_id") is None:
            common["customer_id"] = external_id
        records = []
        for question in filled:
            text = self._text(row, question)
            answer_id = f"{external_id}:{question}" if external_id is not None else None
            answer_metadata = {**metadata, "question": question, "respondent_id": external_id}
            records.append(self._build(common, answer_id, text, answer_metadata, question))
        return records

    @staticmethod
    def _text(row: Mapping[str, Any], column: str) -> str:
        text = _as_text(lookup(row, column))
        if text is None:
            raise RowRejected("missing_text", f"{column} is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise RowRejected(
                "text_too_long", f"{column} has {len(text)} characters (limit {MAX_TEXT_CHARS})"
            )
        return text

    def _build(
        self,
        common: dict[str, Any],
        external_id: str | None,
        text: str,
        metadata: dict[str, Any],
        question: str = "",
    ) -> FeedbackRecord:
        if external_id is not None:
            identifier = record_id(self.config.name, external_id)
        else:
            # No id column: hash (created_at, author, text); surveys add the question.
            author = common.get("author") or common.get("customer_id") or ""
            parts = [common["created_at"].isoformat(), author, *([question] if question else [])]
            identifier = content_id(self.config.name, *parts, text)
        try:
            record = FeedbackRecord(
                id=identifier, external_id=external_id, text=text, metadata=metadata, **common
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            raise RowRejected("invalid_field", problems) from None
        return self.privacy.protect(record)


def raw_text(row: Mapping[str, Any]) -> str:
    """A row serialised as one line of JSON, for ``Rejected.raw``.

    Args:
        row: The row.

    Returns:
        Its JSON text (non-ASCII kept readable).
    """
    return json.dumps(json_safe(dict(row)), ensure_ascii=False, default=str)


class Source(ABC):
    """One configured feed. Subclasses implement ``read_chunks`` for their kind.

    Args:
        config: The source's entry of sources.yaml.
    """

    kind: ClassVar[str]

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.mapper = RowMapper(config)

    @property
    def name(self) -> str:
        """The unique source name."""
        return self.config.name

    @property
    def channel(self) -> Channel:
        """Review, survey or social."""
        return Channel(self.config.channel)

    @abstractmethod
    def read_chunks(
        self, since: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Iterator[SourceBatch]:
        """Read the source in chunks of about ``chunk_rows`` rows.

        Args:
            since: State saved after the previous complete read (the last chunk's
                ``watermark``), or None to read everything.
            chunk_rows: Rows per chunk (an API page is never split).

        Returns:
            An iterator of batches, at least one; only the last carries the ``watermark``, to
            be saved once every chunk is stored.

        Raises:
            SourceError: The source cannot be read at all (missing file, API down).
        """

    def read(self, since: str | None = None) -> SourceBatch:
        """Read the whole source into one batch (tests, small sources; ingest uses chunks).

        Args:
            since: As for ``read_chunks``.

        Returns:
            Every chunk merged; the watermark is the last chunk's.
        """
        whole = SourceBatch(source=self.name)
        for chunk in self.read_chunks(since):
            whole.records.extend(chunk.records)
            whole.rejected.extend(chunk.rejected)
            whole.rows_read += chunk.rows_read
            for reason, rows in chunk.skipped.items():
                whole.skipped[reason] = whole.skipped.get(reason, 0) + rows
            whole.watermark = chunk.watermark
        return whole

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
