"""The `pmcqa` command line. Each subcommand lives in `app/commands/<name>.py` and registers itself here.

Heavy imports (torch, lxml, faiss) happen inside the commands, so `pmcqa --help` stays instant.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import app.commands

cli = typer.Typer(
    name="pmcqa",
    help="Paper-grounded question answering over PubMed Central full texts.",
    no_args_is_help=True,
    add_completion=False,
)


def _register_commands() -> None:
    # Every module of app.commands defines `register(cli)`; discovering them keeps this file free of merges.
    for module_info in sorted(pkgutil.iter_modules(app.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"app.commands.{module_info.name}")
        module.register(cli)


_register_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
