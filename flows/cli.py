"""The ``feedback`` command line: thin wrappers over the flows and stages."""

from __future__ import annotations

import atexit
import importlib
import os
from typing import Annotated

import typer

from flows._cli_errors import one_line_errors, quiet_expected_tracebacks

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
    pretty_exceptions_show_locals=False,
)
_debug = False


@app.callback()
def _options(
    context: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Print the traceback of errors, expected ones too.")
    ] = False,
) -> None:
    """Offline multilingual customer-feedback pipeline (tr/fa/ro/en)."""
    global _debug
    _debug = debug
    if not debug:
        context.with_resource(quiet_expected_tracebacks())


# Each module defines ``register(app)`` adding its commands; keeps this file free of logic.
_COMMAND_MODULES: tuple[str, ...] = (
    "flows._cli_run",
    "flows._cli_alerts",
    "flows._cli_watch",
    "flows._cli_models",
    "flows._cli_ops",
    "flows._cli_topics",
    "flows._cli_unlock",
    "flows._cli_web",
    "flows._cli_labels",
    "flows._cli_registry",
)


def _wrap_commands(group: typer.Typer) -> None:
    """Make every command of ``group`` (and its sub-groups) end expected errors in one line."""
    for command in group.registered_commands:
        command.callback = one_line_errors(command.callback, lambda: _debug)
    for sub_group in group.registered_groups:
        sub_app = sub_group.typer_instance
        if sub_app.registered_callback is not None:
            callback = sub_app.registered_callback.callback
            sub_app.registered_callback.callback = one_line_errors(callback, lambda: _debug)
        _wrap_commands(sub_app)


for _module_name in _COMMAND_MODULES:
    importlib.import_module(_module_name).register(app)
_wrap_commands(app)
