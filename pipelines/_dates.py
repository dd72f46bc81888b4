"""Dates and instants given by people: ``YYYY-MM-DD`` or ISO 8601, naive = pipeline timezone."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from pipelines._errors import ConfigError

__all__ = ["EXPECTED_FORMAT", "parse_moment", "to_utc"]

EXPECTED_FORMAT = (
    "YYYY-MM-DD (e.g. 2026-11-01) or ISO 8601 (e.g. 2026-11-01T08:30, 2026-11-01T08:30:00+03:00, "
    "2026-11-01T05:30:00Z)"
)
"""How a date must be written; every date error quotes it."""


def parse_moment(value: str | date | datetime, name: str = "date") -> datetime:
    """A date or instant from text (``YYYY-MM-DD`` or ISO 8601) or a ``date``/``datetime``.

    Args:
        value: What the user gave.
        name: The option or argument, for the error.

    Returns:
        The instant; naive unless the text carried an offset (a date is its midnight).

    Raises:
        ConfigError: E081 with the expected format.
    """
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"{name} {value!r} is not a date; write it as {EXPECTED_FORMAT}.", code="E081"
        ) from None


def to_utc(moment: str | date | datetime, timezone: str, name: str = "date") -> datetime:
    """An aware UTC instant; naive values and plain dates are read in ``timezone``.

    Args:
        moment: Text (see ``parse_moment``), a date or a datetime.
        timezone: IANA zone of naive values (pipeline.yaml's ``timezone``).
        name: The option or argument, for the error.

    Returns:
        The instant in UTC.

    Raises:
        ConfigError: E081 when text is not a date.
    """
    parsed = parse_moment(moment, name)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(timezone))
    return parsed.astimezone(UTC)
