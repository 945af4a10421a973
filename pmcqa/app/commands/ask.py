"""`pmcqa ask PAPER_ID "question"`: answer in-process (no server), from the local library.

A refusal exits with its `pmcqa.app.errors` code: 2 invalid input, 3 not in the library, 4 being ingested,
5 backend not ready, 6 generation timeout.
"""

from __future__ import annotations

import typer

from pmcqa.app.answering.registry import BACKENDS
from pmcqa.app.errors import ServiceError
from pmcqa.app.service import Library, check_paper_id, check_question
from pmcqa.core.logs import quiet_backend_status
from pmcqa.core.settings import Settings
from pmcqa.index.store import require_library


def ask(
    paper_id: str = typer.Argument(..., help="PMCID, versioned PMCID, PMID (pmid:123) or DOI."),
    question: str = typer.Argument(..., help="The question, answered from this paper only."),
    as_json: bool = typer.Option(False, "--json", help="Print the full Answer as JSON."),
    backend: str | None = typer.Option(None, "--backend", help="extractive | transformers | openai."),
    top_k: int | None = typer.Option(None, "--top-k", min=1, max=100, help="Passages to retrieve."),
) -> None:
    """Answer a question about one ingested paper, citing its own sentences."""
    if backend is not None and backend not in BACKENDS:
        raise typer.BadParameter(f"choose one of {', '.join(BACKENDS)}", param_hint="--backend")
    settings = Settings(**({"answer_backend": backend} if backend else {}))
    try:
        # The id and the question are checked before the library (the embedding model) loads.
        check_paper_id(paper_id, settings)
        check_question(question, settings)
        require_library(settings)  # a mistyped PMCQA_DATA_DIR: refused, not created empty
        # A backend that cannot answer is this command's error line below, not also a log line before it.
        with quiet_backend_status():
            library = Library.create(settings)
            try:
                library.wait_for_backend()  # a model loading in the background: wait, as a server would not
                answer = library.ask(paper_id, question, top_k)
            finally:
                library.close()
    except ServiceError as exc:  # its exit code tells scripts "not ingested yet" from a bad question
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
        return
    typer.echo(answer.answer)
    for number, citation in enumerate(answer.citations, start=1):
        typer.echo(f"  [{number}] {citation.place or '(untitled)'} [{citation.start}:{citation.end}]")
        typer.echo(f'      "{citation.quote}"')
    typer.echo("")
    unsupported = [claim for claim in answer.claims if not claim.supported]
    for claim in unsupported:
        typer.echo(f'  not supported: "{claim.text}" ({claim.reason})')
    if answer.confidence is not None:
        typer.echo(f"  confidence: {answer.confidence:.2f}")
    for step in answer.steps:
        typer.echo(f"  {step}")
    typer.echo(f"  ({answer.backend}, {answer.model}, {answer.timings.get('total', 0):.2f}s)")


def register(cli: typer.Typer) -> None:
    cli.command("ask")(ask)
