"""Fingerprint of pmcqa's parse + chunk output over a JATS folder, to prove a speed change changes nothing.

.venv/bin/python bench/chunk_fingerprint.py [FOLDER] > before.txt    # default: ../shared/data/jats
... change the code ...
.venv/bin/python bench/chunk_fingerprint.py [FOLDER] > after.txt && diff before.txt after.txt

One line per file: sha256 of the parsed Paper (every block, section, reference and mention, as JSON), of the
stored record and of every chunk (ids, offsets, text, section, kind, ref ids, label) under the default
settings; then one line over all files. A file that fails prints its error instead.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from pmcqa.app.corpus_report import _paper_id, corpus_files
from pmcqa.core.settings import Settings
from pmcqa.ingest.chunking import Chunker
from pmcqa.ingest.jats import parse_jats

DEFAULT_FOLDER = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "jats"


def fingerprint(path: Path, chunker: Chunker) -> str:
    digest = hashlib.sha256()
    try:
        for paper in parse_jats(path.read_bytes()):
            digest.update(paper.model_dump_json().encode())
            record, chunks = chunker.chunk(paper, _paper_id(paper.pmcid, paper.doi))
            digest.update(record.model_dump_json().encode())
            for chunk in chunks:
                digest.update(chunk.model_dump_json().encode())
    except Exception as exc:  # the fingerprint records failures too: they must not change either
        return f"error {type(exc).__name__}: {exc}"
    return digest.hexdigest()


def main(folder: Path) -> int:
    chunker = Chunker(Settings())
    overall = hashlib.sha256()
    for path in corpus_files(folder):
        line = f"{fingerprint(path, chunker)}  {path.relative_to(folder)}"
        overall.update(line.encode())
        print(line)
    print(f"{overall.hexdigest()}  (all files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FOLDER))
