"""The ``feedback`` command line: thin wrappers over the flows and stages."""

from __future__ import annotations

import importlib

import typer

__all__ = ["app"]

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
