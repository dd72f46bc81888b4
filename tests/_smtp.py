"""A real aiosmtpd server on a free loopback port, with FEEDBACK_SMTP_* pointing at it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiosmtpd.controller import Controller

__all__ = ["smtp_server"]


@contextmanager
def smtp_server(handler: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Serve ``handler`` on 127.0.0.1 for the block and configure the mailer to use it.

    Args:
        handler: An aiosmtpd handler (``handle_DATA``...).
        monkeypatch: Sets ``FEEDBACK_SMTP_*`` for the test.

    Yields:
        The server's port.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("FEEDBACK_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("FEEDBACK_SMTP_PORT", str(port))
    monkeypatch.setenv("FEEDBACK_SMTP_SECURITY", "none")
    monkeypatch.setenv("FEEDBACK_SMTP_FROM", "alerts@example.com")
    try:
        yield port
    finally:
        controller.stop()
