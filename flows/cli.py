"""The ``feedback`` command line: thin wrappers over the flows and stages."""

from __future__ import annotations

import atexit
import importlib
import os

import typer

__all__ = ["app"]


def _silence_interpreter_teardown() -> None:
    """Drop what C extensions print while the interpreter tears down.

    With torch loaded, duckdb's nanobind bindings list dozens of "leaked" types at exit: noise
    after the command has finished (nothing leaks while it runs). Registered first, so it runs
    after every other exit handler (Prefect's temporary-server shutdown logs included).
    """
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)


atexit.register(_silence_interpreter_teardown)

app = typer.Typer(
    name="feedback",
    help="Offline multilingual customer-feedback pipeline (tr/fa/ro/en).",
    no_args_is_help=True,
    add_completion=False,
)

# Each module defines ``register(app)`` adding its commands; keeps this file free of logic.
_COMMAND_MODULES: tuple[str, ...] = (
    "flows._cli_run",
    "flows._cli_alerts",
    "flows._cli_watch",
    "flows._cli_models",
    "flows._cli_ops",
    "flows._cli_topics",
)

for _module_name in _COMMAND_MODULES:
    importlib.import_module(_module_name).register(app)
