"""``feedback analyze``, ``feedback eval`` and ``feedback train sentiment``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows._cli_options import ConfigOption
from pipelines._errors import FeedbackError

if TYPE_CHECKING:
    import numpy as np

    from pipelines.analysis.sentiment import SentimentBackend

__all__ = ["register"]

console = Console()
err_console = Console(stderr=True)
train_app = typer.Typer(help="Train the models.", no_args_is_help=True)

_MAX_BAD_ROWS_SHOWN = 20


def _fail(exc: FeedbackError) -> typer.Exit:
    err_console.print(f"[red]{exc}[/]")
    return typer.Exit(code=1)


def analyze_command(
    input_path: Annotated[Path, typer.Argument(help="JSONL or CSV with id and text columns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output JSONL file.")],
    config: ConfigOption = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Store to cache document embeddings in (reruns are faster)."),
    ] = None,
    chunk_size: Annotated[
        int,
        typer.Option(
            min=1, help="Rows analysed per step (bounds memory; topics are fitted on the first)."
        ),
    ] = 2000,
) -> None:
    """Analyse a file of feedback with the nightly flow's stages: language, sentiment (document
    and sentences), aspects, topic and flags. Optional columns channel, rating, nps,
    author_followers, customer_id and customer_value feed the flagging rules."""
    from feedback_pipeline import Analyzer
    from pipelines.analysis.analyze import BadRow, count_input_rows, iter_feedback_file, write_jsonl

    try:
        total = count_input_rows(input_path)
        analyzer = Analyzer(config, db)
    except FeedbackError as exc:
        raise _fail(exc) from exc
    output.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    bad_rows: list[BadRow] = []
    progress = Progress(
        TextColumn("analysing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )
    # The input is streamed chunk by chunk; the output appears whole or not at all.
    partial = output.with_name(f".{output.name}.partial")
    try:
        with analyzer, progress, partial.open("w", encoding="utf-8") as handle:
            task = progress.add_task("rows", total=total)
            for frame, bad in iter_feedback_file(input_path, chunk_size):
                bad_rows.extend(bad)
                if not frame.empty:
                    analysed = analyzer.run(frame)
                    written += write_jsonl(analysed, handle)
                    for line in analysed.loc[~analysed["analysed"], "line"]:
                        bad_rows.append(BadRow(int(line), "no text left after normalization"))
                progress.advance(task, len(frame) + len(bad))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(output)
    for bad in sorted(bad_rows, key=lambda row: row.line)[:_MAX_BAD_ROWS_SHOWN]:
        err_console.print(f"[yellow]row {bad.line} skipped:[/] {bad.reason}", soft_wrap=True)
    if len(bad_rows) > _MAX_BAD_ROWS_SHOWN:
        err_console.print(f"[yellow]... and {len(bad_rows) - _MAX_BAD_ROWS_SHOWN} more[/]")
    err_console.print(
        f"analysed {written} row(s) into {output}; {len(bad_rows)} bad row(s)", soft_wrap=True
    )


def _eval_predictor(
    backend: SentimentBackend,
) -> Callable[[Sequence[str], Sequence[str | None]], np.ndarray]:
    """``(texts, langs) -> proba``; the e5 backend reuses the on-disk embedding cache."""
    from models.sentiment import FeatureCache
    from pipelines.analysis.sentiment import E5HeadBackend

    if not isinstance(backend, E5HeadBackend):
        return backend.predict_proba
    cache = FeatureCache(backend.encoder, layers=backend.head.metadata.encoder_layers)

    def predict(texts: Sequence[str], langs: Sequence[str | None]) -> np.ndarray:
        return backend.scores(cache.embeddings(texts), texts, langs)

    return predict


def eval_command(
    path: Annotated[Path, typer.Argument(help="Folder searched for data.jsonl files.")],
    split: Annotated[str, typer.Option(help="Split to score.")] = "dev",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the report: .json, else markdown.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Score the configured sentiment model on labelled data.jsonl files."""
    from models.evaluate import evaluate_folder, print_report, write_report
    from pipelines.analysis.sentiment import build_backend, load_sentiment_config

    try:
        backend = build_backend(load_sentiment_config(config))
        with err_console.status(f"Scoring {path} ({split})..."):
            report = evaluate_folder(path, _eval_predictor(backend), backend.version, split)
    except FeedbackError as exc:
        raise _fail(exc) from exc
    print_report(report, console)
    if out is not None:
        console.print(f"report written to {write_report(report, out)}")


@train_app.command("sentiment")
def train_sentiment_command(
    config: Annotated[Path, typer.Option("--config", help="Training configuration file.")] = Path(
        "configs/training.yaml"
    ),
    datasets_dir: Annotated[
        Path | None,
        typer.Option("--datasets", help="Folder of labelled sets (default ../shared/datasets)."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Also train on this store's labels; register the result as a candidate "
            "instead of writing the committed head.",
        ),
    ] = None,
    promote: Annotated[
        bool,
        typer.Option("--promote", help="With --db: promote the candidate if the gate passes."),
    ] = False,
) -> None:
    """Train the sentiment head; writes the head and the model card (with --db: registers a
    candidate trained on the shared sets plus the store's labels)."""
    if db is not None:
        from flows._cli_registry import train_from_store

        train_from_store(config, datasets_dir, db, promote)
        return
    if promote:
        raise typer.BadParameter("--promote needs --db", param_hint="--promote")
    from models.encoder import Encoder
    from models.evaluate import print_report
    from models.sentiment import FeatureCache
    from models.sentiment.train import load_training_config, train_head, write_model_card

    try:
        settings = load_training_config(config)
        encoder = Encoder.load(dtype=settings.encoder_dtype)
        cache = FeatureCache(encoder, layers=settings.encoder_layers)
        result = train_head(settings, cache, datasets_dir, err_console.print)
    except FeedbackError as exc:
        raise _fail(exc) from exc
    head_path = result.head.save(settings.resolved(settings.output))
    card_path = write_model_card(result, settings, settings.resolved(settings.card))
    print_report(result.report, console)
    console.print(
        f"ECE {result.ece_before:.4f} -> {result.ece_after:.4f} "
        f"(T = {result.head.metadata.temperature:.3f}); head {head_path}, card {card_path}"
    )


def register(app: typer.Typer) -> None:
    """Add ``analyze``, ``eval`` and ``train sentiment`` to the ``feedback`` app.

    Args:
        app: The root typer app.
    """
    app.command("analyze")(analyze_command)
    app.command("eval")(eval_command)
    app.add_typer(train_app, name="train")
