"""Child processes end with the ``feedback`` process, even when it is killed (``kill -9``).

Prefect runs flows against a temporary API server it starts as a subprocess when
``PREFECT_API_URL`` is unset, and stops it from an ``atexit`` hook: a killed CLI never runs that
hook, so the server was orphaned. On Linux, ``PR_SET_PDEATHSIG`` asks the kernel to signal a
child when the thread that started it ends; ``die_with_parent`` sets it in the child before it
runs. ``start_temporary_prefect_server`` starts Prefect's server from the main thread with that
setting (Prefect then reuses it); ``feedback serve`` uses ``die_with_parent`` for its server.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

__all__ = ["die_with_parent", "start_temporary_prefect_server"]

_PR_SET_PDEATHSIG = 1
# Looked up before any fork: the child must not load libraries (locks held by other threads).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when this process ends.

    Returns:
        The function to pass as ``preexec_fn`` (None where the OS offers no such setting). The
        calling thread must live as long as the process (the main thread).
    """
    if _prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the setting took effect
            os._exit(1)

    return preexec


def start_temporary_prefect_server() -> None:
    """Start Prefect's temporary API server now, tied to this process (no-op when
    ``PREFECT_API_URL`` is set or the server already runs).

    Call from the main thread, before running a flow.
    """
    from prefect.server.api import server as prefect_server
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or threading.current_thread() is not threading.main_thread():
        return
    preexec = die_with_parent()

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(*args, **kwargs, preexec_fn=preexec)

    # Prefect's server module spawns through its global ``subprocess``; give it one whose Popen
    # sets the parent-death signal (the module's other uses are unchanged).
    prefect_server.subprocess = types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})  # type: ignore[attr-defined]
    prefect_server.SubprocessASGIServer().start()
