"""`pmcqa eval FILE`: how often retrieval puts the gold answer in front of the answerer, and (``--answers``)
how good the answers are, end to end through the /ask code path.

    pmcqa eval ../shared/data/covid-qa/dev.json                    # retrieval: dense, lexical, hybrid
    pmcqa eval ../shared/data/covid-qa/dev.json --answers          # answers of the configured backend
    pmcqa eval train.json --split-name covid-qa-train --json       # machine-readable
    pmcqa eval questions.jsonl --answers --limit 100               # {paper_id, question, answers} lines

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

from pmcqa.app.answer_evaluation import answer_table, reliability_table, run_answer_evaluation
from pmcqa.app.errors import ServiceError
from pmcqa.app.evaluation import is_jsonl, report_table, run_evaluation
from pmcqa.core.settings import AnswerBackendName, Settings, get_settings
from pmcqa.index.retrieval import MODES
from pmcqa.index.store import require_library

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
    answers: bool = typer.Option(
        False, "--answers", help="Score the answers (F1, gold contained, abstention, citations, latency)."
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="Answer backend for --answers (default: the configured one)."
    ),
    min_confidence: float | None = typer.Option(
        None, "--min-confidence", min=0.0, max=1.0, help="Override PMCQA_MIN_CONFIDENCE for --answers."
    ),
    details: Path | None = typer.Option(
        None, "--details", help="With --answers: write every question's answers and scores here (JSON)."
    ),
) -> None:
    """Evaluate retrieval per mode, or with --answers the answers (F1, gold contained, abstention)."""
    err = Console(stderr=True)
    if not file.is_file():
        err.print(f"[bold red]error:[/] no such file: {escape(str(file))}")
        raise typer.Exit(USAGE_ERROR)
    chosen = parse_modes(modes)
    problem = _unusable_paths(answers, details, store_dir)
    if problem:
        err.print(f"[bold red]error:[/] {escape(problem)}")
        raise typer.Exit(USAGE_ERROR)
    settings = get_settings()
    if is_jsonl(file):  # asked of the user's library: a mistyped PMCQA_DATA_DIR is refused, not created empty
        require_library(settings)
    try:
        if answers:
            _answers(file, settings, split_name, backend, min_confidence, limit, store_dir, as_json, details)
            return
        options = {"rrf_k": rrf_k} if rrf_k else {}
        report = run_evaluation(
            file,
            settings,
            name=split_name,
            modes=chosen,  # type: ignore[arg-type]
            limit=limit,
            store_dir=store_dir,
            retriever_options=options,
        )
    except (ValueError, KeyError) as exc:  # malformed input file
        err.print(f"[bold red]error:[/] cannot evaluate {escape(str(file))}: {escape(str(exc))}")
        raise typer.Exit(USAGE_ERROR) from None
    except ServiceError as exc:  # the backend cannot answer (not allowed, failed to load, not ready)
        err.print(f"[bold red]error:[/] {escape(exc.detail)}")
        raise typer.Exit(exc.exit_code) from None
    if report.missing:
        shown = ", ".join(report.missing[:10]) + (" ..." if len(report.missing) > 10 else "")
        count = len(report.missing)
        err.print(f"[yellow]warning:[/] {count} paper(s) not in the library (misses): {escape(shown)}")
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        Console().print(report_table(report))


def _answers(
    file: Path,
    settings: object,
    name: str | None,
    backend: str | None,
    min_confidence: float | None,
    limit: int | None,
    store_dir: Path | None,
    as_json: bool,
    details: Path | None,
) -> None:
    assert isinstance(settings, Settings)
    if backend is not None and backend not in AnswerBackendName.__args__:  # type: ignore[attr-defined]
        raise typer.BadParameter(f"unknown backend {backend!r}", param_hint="--backend")
    if min_confidence is not None:
        settings = settings.model_copy(update={"min_confidence": min_confidence})
    err = Console(stderr=True)

    def progress(done: int, total: int) -> None:
        if done % 25 == 0 or done == total:
            err.print(f"  {done}/{total} questions", highlight=False)

    report = run_answer_evaluation(
        file, settings, name=name, backend=backend, limit=limit, store_dir=store_dir, progress=progress
    )
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        console = Console()
        console.print(answer_table(report))
        if report.calibration()["reliability"]:
            console.print(reliability_table(report))
    if details is not None:  # after the report: a run is never lost to where its details go
        try:
            details.write_text(json.dumps(report.as_dict(details=True), indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            where = escape(str(details))
            err.print(f"[bold red]error:[/] cannot write --details {where}: {escape(str(exc))}")
            raise typer.Exit(USAGE_ERROR) from None


def _unusable_paths(answers: bool, details: Path | None, store_dir: Path | None) -> str | None:
    """Why --details / --store-dir cannot be used, checked before a long run; None when they can."""
    if details is not None and not answers:
        return "--details needs --answers (it holds every question's answers)"
    if details is not None and not details.parent.is_dir():
        return f"--details {details}: no folder {details.parent}"
    if store_dir is not None and store_dir.exists() and not store_dir.is_dir():
        return f"--store-dir {store_dir} is a file, not a folder"
    return None
