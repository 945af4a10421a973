"""The `pmcqa` command line: every subcommand is listed here, each defined in `pmcqa/app/commands/<name>.py`.

Command modules import only typer and rich at the top; heavy imports (torch, sentence-transformers, faiss)
happen inside the commands that need them, so `pmcqa --help` and argument errors stay instant.
"""

from __future__ import annotations

import typer

from pmcqa.app.commands import ask, ingest, papers, parse, reindex, report, search, serve, worker
from pmcqa.app.commands import eval as eval_command

cli = typer.Typer(
    name="pmcqa",
    help="Paper-grounded question answering over PubMed Central full texts.",
    no_args_is_help=True,
    add_completion=False,
)

for command in (ask, eval_command, ingest, papers, parse, reindex, report, search, serve, worker):
    command.register(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
