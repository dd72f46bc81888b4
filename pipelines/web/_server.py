"""Serving the app with uvicorn: in the foreground (``feedback web``) or in a thread
(``feedback serve``)."""

from __future__ import annotations

import socket
import threading

import uvicorn

from pipelines._errors import WebError
from pipelines.web._app import create_app
from pipelines.web._settings import WebSettings

__all__ = ["run_web", "web_server"]


def web_server(settings: WebSettings, host: str = "127.0.0.1", port: int = 8700) -> uvicorn.Server:
    """A uvicorn server for the app, not started.

    Uvicorn's access log is off: link URLs hold sign-in tokens, which must not land in logs.
    Actions are recorded in the audit log instead.

    Args:
        settings: The web settings.
        host: Interface to listen on (127.0.0.1: this machine only).
        port: TCP port.

    Returns:
        The server; ``run()`` serves until stopped, ``should_exit = True`` stops it.

    Raises:
        WebError: E077 when the port is taken.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise WebError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or stop "
                "what uses it",
                code="E077",
            ) from None
    config = uvicorn.Config(
        create_app(settings), host=host, port=port, access_log=False, log_level="warning"
    )
    return uvicorn.Server(config)


def run_web(
    settings: WebSettings, host: str = "127.0.0.1", port: int = 8700, background: bool = False
) -> uvicorn.Server:
    """Serve the triage page.

    Args:
        settings: The web settings.
        host: Interface to listen on.
        port: TCP port.
        background: Serve from a daemon thread and return at once (``feedback serve``).

    Returns:
        The server (already stopped unless ``background``).
    """
    server = web_server(settings, host, port)
    if background:
        threading.Thread(target=server.run, name="feedback-web", daemon=True).start()
    else:
        server.run()
    return server
