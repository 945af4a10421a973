"""The `pmcqa` command line: every subcommand is listed here, each defined in `pmcqa/app/commands/<name>.py`.

Command modules import only typer and rich at the top; heavy imports (torch, sentence-transformers, faiss)
happen inside the commands that need them, so `pmcqa --help`, `pmcqa --version` and argument errors stay
instant. A feature whose optional extra is not installed ends with one line naming it, not a traceback.
"""

from __future__ import annotations

import typer

from pmcqa import __version__
from pmcqa.app.commands import ask, ingest, parse, reindex, report, search, serve, worker
from pmcqa.app.commands import eval as eval_command
from pmcqa.core.extras import MissingExtra

cli = typer.Typer(
    name="pmcqa",
    help="Paper-grounded question answering over PubMed Central full texts.",
    no_args_is_help=True,
    add_completion=False,
)



def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pmcqa {__version__}")
        raise typer.Exit()


@cli.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Paper-grounded question answering over PubMed Central full texts."""


for command in (ask, eval_command, ingest, parse, reindex, report, search, serve, worker):
    command.register(cli)


def main() -> None:
    try:
        cli()
    except MissingExtra as missing:
        typer.echo(f"pmcqa: {missing}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
