"""Expected errors on the command line: one line with the code and the fix, no traceback.

A ``FeedbackError`` (or one wrapped by Prefect, SQLAlchemy or an exception group) ends the
command with ``Error [E0xx] what went wrong. How to fix it.`` on stderr and exit code 1. The
traceback is printed only with ``feedback --debug``. Other exceptions are bugs: they keep their
traceback (without local variables, which may hold customer text).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from pipelines._errors import FeedbackError

__all__ = ["expected_error", "one_line_errors", "quiet_expected_tracebacks"]


def expected_error(exc: BaseException | None) -> FeedbackError | None:
    """The ``FeedbackError`` behind ``exc``: itself, its causes, or in an exception group.

    Args:
        exc: Any exception (None: none).

    Returns:
        The first ``FeedbackError`` found, or None for an unexpected error.
    """
    pending: list[BaseException] = [exc] if exc is not None else []
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, FeedbackError):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def _one_line(error: FeedbackError) -> str:
    return " ".join(str(error).split())


def one_line_errors(callback: Callable[..., Any], debug: Callable[[], bool]) -> Callable[..., Any]:
    """Wrap a command so that an expected error ends it with one line and exit code 1.

    Args:
        callback: The typer command function.
        debug: Whether ``--debug`` was given (then the exception propagates unchanged).

    Returns:
        The wrapped command (same signature, for typer).
    """

    @functools.wraps(callback)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except Exception as exc:
            error = expected_error(exc)
            if error is None or debug():
                raise
            typer.echo(f"Error {_one_line(error)}", err=True)
            raise typer.Exit(code=1) from None

    return command


@contextmanager
def quiet_expected_tracebacks() -> Iterator[None]:
    """Drop the traceback from log records of expected errors (Prefect logs failed runs with
    theirs) for the ``with`` block; the log line itself stays."""
    factory = logging.getLogRecordFactory()

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if record.exc_info and expected_error(record.exc_info[1]) is not None:
            record.exc_info = None
        return record

    logging.setLogRecordFactory(make_record)
    try:
        yield
    finally:
        logging.setLogRecordFactory(factory)
