"""The `pmcqa` command line: every subcommand is listed in `COMMANDS`, each defined in
`pmcqa/app/commands/<module>.py` by a `register(cli)` function.

Command modules import what they use at the top (the service and its index, FastAPI, the job queue, ...), and
all of them together take seconds to import. So `pmcqa` imports only the module of the command being run (or
asked for its own `--help`); `pmcqa --help` lists the commands from the summaries in `COMMANDS`, which a test
keeps equal to the commands' docstrings. Nothing loads torch, transformers, sentence-transformers or faiss
before a command has checked its arguments and needs the model or the index.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
import typer
from typer.core import TyperGroup

from pmcqa import __version__
from pmcqa.core.extras import MissingExtra

# Command name -> (module that registers it, the first line of its docstring), in `pmcqa --help` order.
COMMANDS: dict[str, tuple[str, str]] = {
    "ask": (
        "pmcqa.app.commands.ask",
        "Answer a question about one ingested paper, citing its own sentences.",
    ),
    "backup": (
        "pmcqa.app.commands.backup",
        "Copy the embedded library consistently, even while it is in use; restore with PMCQA_DATA_DIR.",
    ),
    "eval": (
        "pmcqa.app.commands.eval",
        "Evaluate retrieval per mode, or with --answers the answers (F1, gold contained, abstention).",
    ),
    "ingest": (
        "pmcqa.app.commands.ingest",
        "Ingest PMC papers by id, or local JATS files, into the index. Exit 1 if any id failed.",
    ),
    "papers": (
        "pmcqa.app.commands.papers",
        "List, show, read and delete the papers in the library.",
    ),
    "parse": ("pmcqa.app.commands.parse", "Parse a local JATS file and show the paper and its chunks."),
    "reindex": (
        "pmcqa.app.commands.reindex",
        "Re-embed every paper's chunks with the configured model and rebuild the library index.",
    ),
    "report": (
        "pmcqa.app.commands.report",
        "Parse and chunk every JATS file of a folder; print counts, failures and time beside pubmed_parser.",
    ),
    "search": (
        "pmcqa.app.commands.search",
        "Retrieve passages for a query from one paper or the whole library.",
    ),
    "serve": (
        "pmcqa.app.commands.serve",
        "Serve the question-answering API (POST /ask, /search, /papers, /healthz, /readyz, /metrics).",
    ),
    "train-answerer": (
        "pmcqa.app.commands.train_answerer",
        "Fine-tune the extractive answerer's sentence scorer; fit its ranker, confidence and threshold.",
    ),
    "worker": (
        "pmcqa.app.commands.worker",
        "Run queued ingest jobs until stopped (SIGTERM finishes the running batches first).",
    ),
    "jobs": ("pmcqa.app.commands.jobs", "Show ingest jobs: recent ones, or one job's per-id outcomes."),
}


def load_command(name: str) -> click.Command:
    """The click command `name`, built from its module (imported now: see the module docstring)."""
    module = importlib.import_module(COMMANDS[name][0])
    app = typer.Typer()
    module.register(app)
    return typer.main.get_group(app).commands[name]


class LazyCommandGroup(TyperGroup):
    """Knows every command by its summary; the command chosen on the command line is loaded for real."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, (_, summary) in COMMANDS.items():
            self.commands[name] = click.Command(name, help=summary)  # enough for `pmcqa --help`

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None:
            command = self.commands[name] = load_command(name)
        return name, command, rest


cli = typer.Typer(
    name="pmcqa",
    cls=LazyCommandGroup,
    help="Paper-grounded question answering over PubMed Central full texts.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pmcqa {__version__}")
        raise typer.Exit()


@cli.callback()
def _group(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """The group itself only answers --version; its commands come from `COMMANDS`."""


def _library_error_code(exc: BaseException) -> int | None:
    """The exit code of an error about the library this process was pointed at, None when `exc` is none: 2
    (a usage error) for one that is not there (a mistyped PMCQA_DATA_DIR, a database without pmcqa's
    tables), 1 for one it cannot use."""
    store, db = sys.modules.get("pmcqa.index.store"), sys.modules.get("pmcqa.core.db")
    if db is not None and isinstance(exc, db.LibraryNotFound):
        return 2
    if (store is not None and isinstance(exc, store.StoreError)) or (
        db is not None and isinstance(exc, db.DatabaseError)
    ):
        return 1
    return None


def settings_errors(exc: BaseException) -> list[str] | None:
    """One line per invalid setting, named as the environment spells it (a flag or config file sets the same
    value); None when `exc` is not a settings validation error."""
    settings = sys.modules.get("pmcqa.core.settings")
    if settings is None:  # never imported: cannot be one (and `--help` stays light)
        return None
    if isinstance(exc, settings.ConfigFileError):
        return [str(exc)]
    from pydantic import ValidationError  # loaded with the settings module

    if not isinstance(exc, ValidationError) or exc.title != settings.Settings.__name__:
        return None
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"invalid setting PMCQA_{name.upper()} ({name}): {error['msg']}")
    return lines


def main() -> None:
    try:
        cli()
    except MissingExtra as missing:  # one line naming the extra to install, not a traceback
        typer.echo(f"pmcqa: {missing}", err=True)
        raise SystemExit(1) from None
    except Exception as exc:
        code = _library_error_code(exc)
        if code is not None:  # a library missing or unusable here: its message says why and what to do
            typer.echo(f"pmcqa: {exc}", err=True)
            raise SystemExit(code) from None
        lines = settings_errors(exc)  # a bad PMCQA_* value, config entry or flag: a usage error
        if lines is None:
            raise
        for line in lines:
            typer.echo(f"pmcqa: {line}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
