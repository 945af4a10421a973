"""`pmcqa report FOLDER`: the corpus report of `bench/corpus_report.py` (pmcqa beside pubmed_parser).

`bench/` is a folder of scripts, not an installed package, so the script is loaded from the source checkout.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import typer

from pmcqa.app.commands.parse import fail

MODULE_NAME = "pmcqa_corpus_report"
REPORT_SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "corpus_report.py"


def register(cli: typer.Typer) -> None:
    cli.command("report")(report)


def load_report_module() -> ModuleType:
    if not REPORT_SCRIPT.is_file():
        raise fail(f"pmcqa report needs a source checkout: {REPORT_SCRIPT} not found")
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, REPORT_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def report(
    folder: Path = typer.Argument(..., help="Folder of JATS/NXML files (searched recursively)."),
) -> None:
    """Parse and chunk every JATS file of a folder; print counts, failures and time beside pubmed_parser."""
    code = load_report_module().main([str(folder)])
    if code:
        raise typer.Exit(code)
