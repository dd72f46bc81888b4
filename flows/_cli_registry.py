"""``feedback models list|promote|rollback`` and training from the store's labels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows._cli_labels import open_store
from flows._cli_options import ConfigOption, DbOption
from flows._output import FormatOption, Listing, OutputFormat, print_listings
from pipelines._errors import PromotionRefused
from pipelines.storage import Store

if TYPE_CHECKING:
    from models.sentiment.store_models import ModelScores, SentimentModel

__all__ = ["register", "train_from_store"]

console = Console()
err_console = Console(stderr=True)
models_app = typer.Typer(
    help="Sentiment models trained from the store's labels.", no_args_is_help=True
)


def _gate_failures(metrics: dict[str, object]) -> list[str]:
    gate = metrics.get("gate")
    return list(gate.get("reasons", [])) if isinstance(gate, dict) else ["no gate recorded"]


def _committed_model_path() -> Path:
    """The committed stack's JSON when sentiment.yaml names one, else the committed head's."""
    from pipelines.analysis.sentiment import load_sentiment_config

    settings = load_sentiment_config().e5_head
    return settings.stack_path or settings.head_path


def _committed_model() -> SentimentModel:
    from models.sentiment import SentimentHead, StackedSentiment
    from pipelines.analysis.sentiment import load_sentiment_config

    settings = load_sentiment_config().e5_head
    if settings.stack_path is not None:
        return StackedSentiment.load(settings.stack_path)
    return SentimentHead.load(settings.head_path)


def train_from_store(
    training_config: Path, datasets_dir: Path | None, db: str, promote: bool
) -> None:
    """Train a candidate on the shared sets plus the store's labels, register it and, with
    ``promote``, promote it if the gate passes.

    Args:
        training_config: ``training.yaml``.
        datasets_dir: The shared sets (None: the default).
        db: The store.
        promote: Promote the candidate when the gate passes.

    Raises:
        PromotionRefused: ``promote`` was asked and the gate failed (the candidate stays
            registered).
    """
    from models.encoder import Encoder
    from models.sentiment.store_models import (
        MODEL_KIND,
        flag_thresholds,
        model_artifact_data,
        model_from_artifact,
    )
    from models.sentiment.store_training import train_candidate
    from models.sentiment.train import load_training_config
    from pipelines.storage import model_artifact, promote_model, promoted_model, register_model

    settings = load_training_config(training_config)
    encoder = Encoder.load(dtype=settings.encoder_dtype)
    with Store(db) as store:
        in_use = promoted_model(store, MODEL_KIND)
        current = (
            model_from_artifact(model_artifact(store, in_use.version))
            if in_use is not None
            else _committed_model()
        )
        candidate = train_candidate(
            store, settings, encoder, current, datasets_dir, err_console.print
        )
        weights, metadata = model_artifact_data(candidate.model)
        register_model(
            store,
            version=candidate.model.version,
            kind=MODEL_KIND,
            head_metadata=metadata,
            weights=weights,
            metrics=candidate.metrics(),
            parent_version=current.version,
        )
        _print_comparison(candidate.scores, candidate.current)
        console.print(
            f"registered {candidate.model.version} (store labels trained on: "
            f"{candidate.trained_rows or 'none'}); gate "
            + (
                "passed"
                if candidate.gate.passed
                else "failed: " + "; ".join(candidate.gate.reasons)
            )
        )
        if not promote:
            return
        if not candidate.gate.passed:
            raise PromotionRefused(
                f"{candidate.model.version} not promoted: {'; '.join(candidate.gate.reasons)}. "
                f"{current.version} stays in use"
            )
        promote_model(store, candidate.model.version)
    console.print(f"promoted {candidate.model.version} (was {current.version})")
    _advise_flag_thresholds(candidate.model.version, flag_thresholds(candidate.model), None)


def _print_comparison(candidate: ModelScores, current: ModelScores) -> None:
    table = Table(title="candidate vs model in use (macro-F1)")
    for column in ("rows", current.version, candidate.version):
        table.add_column(column)
    for lang in sorted(current.languages):
        after = candidate.languages.get(lang)
        table.add_row(
            f"{lang} dev",
            f"{current.languages[lang]:.3f}",
            "-" if after is None else f"{after:.3f}",
        )
    table.add_row(
        f"held-back labels ({candidate.holdout_rows})",
        "-" if current.holdout_macro_f1 is None else f"{current.holdout_macro_f1:.3f}",
        "-" if candidate.holdout_macro_f1 is None else f"{candidate.holdout_macro_f1:.3f}",
    )
    console.print(table)


@models_app.command("list")
def list_command(
    db: DbOption = None, config: ConfigOption = None, output: FormatOption = OutputFormat.table
) -> None:
    """List the registered sentiment models, newest first."""
    from models.sentiment.store_models import MODEL_KIND
    from pipelines.storage import list_models

    with open_store(db, config) as store:
        models = list_models(store, MODEL_KIND)
    rows = []
    for model in models:
        candidate = model.metrics.get("candidate", {})
        holdout = candidate.get("holdout_macro_f1") if isinstance(candidate, dict) else None
        rows.append(
            {
                "version": model.version,
                "status": model.status,
                "created_at": model.created_at,
                "promoted_at": model.promoted_at,
                "parent_version": model.parent_version,
                "holdout_macro_f1": None if holdout is None else round(float(holdout), 3),
                "gate": "passed" if not _gate_failures(model.metrics) else "failed",
            }
        )
    title = f"Sentiment models ({len(models)}; none promoted: the committed model)"
    columns = (
        "version",
        "status",
        "created_at",
        "promoted_at",
        "parent_version",
        "holdout_macro_f1",
        "gate",
    )
    print_listings(Listing("models", title, columns, rows), output, console=console)


@models_app.command("promote")
def promote_command(
    version: Annotated[str, typer.Argument(help="A version from `feedback models list`.")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote even though its gate failed.")
    ] = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Make a registered model the one analysis uses (refused if its gate failed, unless
    --force)."""
    from models.sentiment.store_models import MODEL_KIND, flag_thresholds
    from pipelines.storage import list_models, model_artifact, promote_model

    with open_store(db, config) as store:
        models = {model.version: model for model in list_models(store, MODEL_KIND)}
        failures = _gate_failures(models[version].metrics) if version in models else []
        if failures and not force:
            raise PromotionRefused(
                f"{version} failed its gate at training: {'; '.join(failures)}. Promote it "
                "anyway with --force"
            )
        previous = promote_model(store, version)
        thresholds = flag_thresholds(model_artifact(store, version))
    console.print(f"promoted {version}" + (f" (was {previous})" if previous else ""))
    _advise_flag_thresholds(version, thresholds, config)


def _advise_flag_thresholds(version: str, wanted: dict[str, float], config: Path | None) -> None:
    """Say which per-language negative thresholds the flag rules now use for model
    ``version``'s records: its own (``wanted``, keeping its dev negative recall at its target)
    when flagging.yaml's thresholds follow the model, else which configured ones differ."""
    from pipelines.analysis.flagging import FlaggingRules
    from pipelines.config import config_path, load_yaml_model

    file = config_path("flagging.yaml", config)
    configured = load_yaml_model(file, FlaggingRules).negative_document
    if configured.thresholds_from_model and wanted:
        console.print(
            f"flag thresholds follow the model ({file}): documents of {version} are flagged "
            f"from negative probability {_thresholds(wanted)}"
        )
        return
    differing = {
        lang: configured.threshold(lang)
        for lang, value in wanted.items()
        if abs(configured.threshold(lang) - value) >= 0.005
    }
    if not differing:
        return
    console.print(
        f"flag thresholds: {version} keeps dev negative recall at its target with "
        f"negative_document.min_probability_by_language {_thresholds(wanted)}; {file} "
        f"differs for {_thresholds(differing)}. Set the model's values there, or "
        "thresholds_from_model: true, to keep that recall."
    )


def _thresholds(values: dict[str, float]) -> str:
    return "{" + ", ".join(f"{lang}: {value:.2f}" for lang, value in values.items()) + "}"


@models_app.command("rollback")
def rollback_command(db: DbOption = None, config: ConfigOption = None) -> None:
    """Go back to the model promoted before the current one (or to the committed model)."""
    from models.sentiment.store_models import MODEL_KIND, flag_thresholds
    from pipelines.storage import model_artifact, rollback_model

    with open_store(db, config) as store:
        retired, restored = rollback_model(store, MODEL_KIND)
        in_use = _committed_model() if restored is None else model_artifact(store, restored)
    console.print(
        f"retired {retired}; now using "
        + (restored or f"the committed model ({os.path.basename(_committed_model_path())})")
    )
    _advise_flag_thresholds(restored or "the committed model", flag_thresholds(in_use), config)


def register(app: typer.Typer) -> None:
    """Add ``models list|promote|rollback`` to the ``feedback`` app.

    Args:
        app: The root typer app.
    """
    app.add_typer(models_app, name="models")
