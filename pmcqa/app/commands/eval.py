"""`pmcqa eval FILE`: how often retrieval puts the gold answer in front of the answerer.

    pmcqa eval ../shared/data/covid-qa/dev.json                    # dense, lexical, hybrid; rich table
    pmcqa eval train.json --split-name covid-qa-train --json       # machine-readable
    pmcqa eval questions.jsonl --modes hybrid --limit 100          # {paper_id, question, answers} lines

SQuAD files are ingested into a temporary store (never the user's library); `--store-dir` keeps that store so
a rerun skips chunking's embeddings. JSONL questions are asked of papers already in the library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from pmcqa.app.evaluation import report_table, run_evaluation
from pmcqa.core.settings import get_settings
from pmcqa.index.retrieval import MODES

USAGE_ERROR = 2


def register(cli: typer.Typer) -> None:
    cli.command("eval")(eval_command)


def parse_modes(value: str) -> list[str]:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise typer.BadParameter(f"modes must be a comma-separated subset of {','.join(MODES)}")
    return modes


def eval_command(
    file: Path = typer.Argument(..., help="SQuAD-format JSON or JSONL of {paper_id, question, answers}."),
    split_name: str | None = typer.Option(None, "--split-name", help="Name shown in the report."),
    modes: str = typer.Option("dense,lexical,hybrid", "--modes", help="Comma-separated retrieval modes."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N questions only."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    store_dir: Path | None = typer.Option(
        None, "--store-dir", help="Keep (and reuse) the evaluation store here instead of a temporary dir."
    ),
    rrf_k: int | None = typer.Option(None, "--rrf-k", min=1, help="Reciprocal rank fusion constant."),
) -> None:
    """Evaluate retrieval (answer inside the retrieved passages at 512/1024/2048 tokens, MRR) per mode."""
    err = Console(stderr=True)
    if not file.is_file():
        err.print(f"[bold red]error:[/] no such file: {escape(str(file))}")
        raise typer.Exit(USAGE_ERROR)
    chosen = parse_modes(modes)
    options = {"rrf_k": rrf_k} if rrf_k else {}
    try:
        report = run_evaluation(
            file,
            get_settings(),
            name=split_name,
            modes=chosen,  # type: ignore[arg-type]
            limit=limit,
            store_dir=store_dir,
            retriever_options=options,
        )
    except (ValueError, KeyError) as exc:  # malformed input file
        err.print(f"[bold red]error:[/] cannot evaluate {escape(str(file))}: {escape(str(exc))}")
        raise typer.Exit(USAGE_ERROR) from None
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        Console().print(report_table(report))
