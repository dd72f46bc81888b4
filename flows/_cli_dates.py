"""``--since``/``--until``/``--date`` options: ``YYYY-MM-DD`` or ISO 8601, one clear error."""

from __future__ import annotations

from datetime import datetime

import typer

from pipelines._dates import EXPECTED_FORMAT, parse_moment
from pipelines._errors import ConfigError

__all__ = ["parse_moment_option"]


def parse_moment_option(value: str | datetime) -> datetime:
    """``parser`` of every date option: a bad value is a usage error (exit 2) quoting the format.

    Args:
        value: The option's text.

    Returns:
        The instant (naive unless the text carried an offset).

    Raises:
        typer.BadParameter: Not a date.
    """
    if isinstance(value, datetime):
        return value
    try:
        return parse_moment(value)
    except ConfigError:
        raise typer.BadParameter(f"{value!r} is not a date; write {EXPECTED_FORMAT}.") from None
