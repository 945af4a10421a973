"""Corpus report over the shared JATS folder: `pmcqa report` with a default folder.

.venv/bin/python bench/corpus_report.py [FOLDER]      # default: ../shared/data/jats
"""

from __future__ import annotations

import sys
from pathlib import Path

from pmcqa.app.corpus_report import report

DEFAULT_FOLDER = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "jats"

if __name__ == "__main__":
    raise SystemExit(report(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FOLDER))
