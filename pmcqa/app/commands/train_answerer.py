"""`pmcqa train-answerer FILE`: fine-tune the extractive backend's sentence scorer on a SQuAD-format file and
fit its ranker, confidence model and minimum confidence (`pmcqa.app.answer_training`).

    pmcqa train-answerer ../shared/data/covid-qa/train.json --dev ../shared/data/covid-qa/dev.json

The model goes to `<models_dir>/answer-scorer` (default `<data_dir>/models/answer-scorer`), where the
extractive backend finds it (`PMCQA_ANSWER_MODEL=auto`, the default); `--output` writes elsewhere. A
failed or interrupted training leaves the earlier model in place.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from pmcqa.app.answer_training import TrainingOptions, train_answerer
from pmcqa.app.answering.extractive import ANSWER_MODEL_DIR
from pmcqa.core.settings import get_settings

USAGE_ERROR = 2


def register(cli: typer.Typer) -> None:
    cli.command("train-answerer")(train_answerer_command)


def train_answerer_command(
    file: Path = typer.Argument(..., help="SQuAD-format JSON with answer offsets (e.g. COVID-QA train)."),
    dev: Path | None = typer.Option(
        None,
        "--dev",
        help="SQuAD-format JSON to choose the minimum confidence on (else held-out train papers).",
    ),
    epochs: int = typer.Option(2, "--epochs", min=1, max=20, help="Passes over the training triples."),
    batch_size: int = typer.Option(32, "--batch-size", min=2, help="Triples per step (in-batch negatives)."),
    learning_rate: float = typer.Option(
        2e-5, "--learning-rate", min=1e-7, max=1e-2, help="AdamW learning rate."
    ),
    reader_epochs: int = typer.Option(
        5, "--reader-epochs", min=0, max=20, help="Passes of the span reader over the answer spans (0: none)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffling and of torch."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Train on the first N questions only."),
    store_dir: Path | None = typer.Option(
        None, "--store-dir", help="Keep (and reuse) the store of the file's papers here (see `pmcqa eval`)."
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Write the model here instead of <models_dir>/answer-scorer."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the training record as JSON."),
) -> None:
    """Fine-tune the extractive answerer's sentence scorer; fit its ranker, confidence and threshold."""
    err = Console(stderr=True)
    for path in (file, dev):
        if path is not None and not path.is_file():
            err.print(f"[bold red]error:[/] no such file: {escape(str(path))}")
            raise typer.Exit(USAGE_ERROR)
    settings = get_settings()
    options = TrainingOptions(epochs, batch_size, learning_rate, seed, limit, reader_epochs)
    try:
        record = train_answerer(
            file,
            settings,
            options,
            dev=dev,
            store_dir=store_dir,
            output=output,
            progress=lambda message: err.print(message, highlight=False, markup=False),
        )
    except (ValueError, KeyError) as exc:  # malformed or unusable training file
        err.print(f"[bold red]error:[/] cannot train on {escape(str(file))}: {escape(str(exc))}")
        raise typer.Exit(USAGE_ERROR) from None
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
        return
    training = record["training"]
    target = output or settings.models_dir / ANSWER_MODEL_DIR
    typer.echo(
        f"answer model written to {target}: held-out best sentence overlaps gold "
        f"{training['held_out_top1_hand_set']:.3f} (hand-set) -> {training['held_out_top1_trained']:.3f} "
        f"(trained); minimum confidence {record['min_confidence']} answers "
        f"{training['answered_at_threshold']:.1%} of {training['threshold_chosen_on']} questions; "
        f"{training['seconds']:.0f} s"
    )
