"""One real library per test session: the real embedder, store and retriever over really ingested JATS papers.

Papers come from ../shared/data/jats (PLOS articles without PMCIDs of their own, stored under the ids below)
through the real pipeline: `ingest.jats.parse_jats` → `ingest.chunking.Chunker` → `Store.put_paper`.
Loading the embedding model dominates the cost, so it happens once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.serving import serve_app
from fastapi.testclient import TestClient

from pmcqa.app.cli import main
from pmcqa.app.main import create_app
from pmcqa.app.service import Library
from pmcqa.core.settings import Settings
from pmcqa.index.embedding import Embedder
from pmcqa.index.library import open_library
from pmcqa.index.models import PaperRecord
from pmcqa.index.store import Store
from pmcqa.ingest.chunking import Chunker
from pmcqa.ingest.jats import parse_jats

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_path(relative: str) -> Path:
    root = Path(os.environ["PMCQA_SHARED_DIR"]) / "data" if "PMCQA_SHARED_DIR" in os.environ else SHARED_DATA
    path = root / relative
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (expected ../shared/data beside the checkout)")
    return path


ROOT = Path(__file__).resolve().parents[2]  # the checkout: PYTHONPATH of `run_cli`
HEAVY = ("torch", "transformers", "sentence_transformers", "faiss", "bm25s", "openai", "onnxscript")

# Runs the CLI in a fresh interpreter, then reports its exit code and which heavy modules it imported.
_PROBE = """
import json, sys
heavy = set(json.loads(sys.argv[2]))
sys.argv = ["pmcqa", *json.loads(sys.argv[1])]
from pmcqa.app.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
loaded = sorted({name.split(".")[0] for name in sys.modules} & heavy)
commands = sorted(name for name in sys.modules if name.startswith("pmcqa.app.commands."))
print(json.dumps({"code": code, "loaded": loaded, "commands": commands}), file=sys.stderr)
"""


def run_cli(args: list[str], data_dir: Path, extra_env: dict[str, str] | None = None) -> tuple[dict, str]:
    """(the probe's report, the command's own stderr) of `pmcqa args` in a subprocess."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "PMCQA_DATA_DIR": str(data_dir),
        **(extra_env or {}),
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args), json.dumps(HEAVY)],
        env=env,
        cwd=data_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    *output, report = done.stderr.strip().splitlines()
    return json.loads(report), "\n".join(output)


def run_read_only_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Iterator[tuple[list[str], object, str]]:
    """Run each command that only reads a library (ask, search, papers, jobs, and eval of JSONL questions,
    which are asked of the library) in this process: (its arguments, its exit code, its last stderr line)."""
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"paper_id": "PMC1182327", "question": "What is true?", "answers": ["x"]}\n')
    commands = [
        ["ask", "PMC1182327", "What is true?"],
        ["search", "research claims"],
        ["papers", "list"],
        ["papers", "show", "PMC1182327"],
        ["jobs"],
        ["eval", str(questions)],
    ]
    for args in commands:
        monkeypatch.setattr(sys, "argv", ["pmcqa", *args])
        with pytest.raises(SystemExit) as stop:
            main()
        err = capsys.readouterr().err.strip().splitlines()
        yield args, stop.value.code, err[-1] if err else ""


# (stored id, PMID alias, file under shared/data/jats)
PAPERS = {
    "ioannidis": ("PMC1182327", "16060722", "allofplos/allofplos/starter_corpus/journal.pmed.0020124.xml"),
    "xmrv": ("PMC2795199", "20066031", "allofplos/allofplos/starter_corpus/journal.pone.0008519.xml"),
}


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "eutils_url": "http://127.0.0.1:9/entrez/eutils/",
        "idconv_url": "http://127.0.0.1:9/idconv/",
        "ncbi_email": "tests@example.org",
        "ncbi_max_tries": 1,
        "ncbi_timeout_s": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def library_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="session")
def embedder(library_dir: Path):
    return Embedder(make_settings(library_dir))


@pytest.fixture(scope="session")
def ingested(library_dir: Path, embedder) -> dict[str, PaperRecord]:
    """Parse, chunk and store the test papers once; returns their records by short name."""
    settings = make_settings(library_dir)
    chunker = Chunker(settings)
    records: dict[str, PaperRecord] = {}
    with Store(settings) as store:
        for name, (paper_id, pmid, relative) in PAPERS.items():
            path = shared_path(f"jats/{relative}")
            (paper,) = parse_jats(path.read_bytes())
            paper = paper.model_copy(update={"pmid": pmid})
            record, chunks = chunker.chunk(paper, paper_id, source=str(path))
            store.put_paper(record, chunks, embedder)
            records[name] = record
    return records


@pytest.fixture(scope="session")
def make_library(library_dir: Path, embedder, ingested):
    """Build a `Library` over the shared index with settings overrides; components are the real ones."""
    def build(**overrides: object) -> Library:
        settings = make_settings(library_dir, **overrides)
        parts = open_library(settings, writable=True, embedder=embedder)
        library = Library(settings, parts.store, parts.embedder, parts.retriever, None)
        library.load_backend(settings.answer_backend)
        return library

    return build


@pytest.fixture(scope="session")
def library(make_library):
    return make_library()


@pytest.fixture(scope="session")
def make_scratch_library(tmp_path_factory: pytest.TempPathFactory, library_dir: Path, embedder, ingested):
    """Build a `Library` over a copy of the session library: a test may upload and delete papers in it
    without changing what other tests see. Real components, as `make_library`."""
    from pmcqa.app.service import Library
    from pmcqa.index.library import open_library

    made = []

    def build(**overrides: object) -> Library:
        copy = tmp_path_factory.mktemp("scratch") / "library"
        shutil.copytree(library_dir, copy)
        settings = make_settings(copy, **overrides)
        parts = open_library(settings, writable=True, embedder=embedder)
        library = Library(settings, parts.store, parts.embedder, parts.retriever, None)
        library.load_backend(settings.answer_backend)
        made.append(library)
        return library

    yield build
    for library in made:
        library.close()


@pytest.fixture(scope="session")
def client(library):
    app = create_app(library.settings, library_factory=lambda _settings: library)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def live_server(library) -> Iterator[str]:
    """The app over the session library, served by uvicorn on a real socket."""
    with serve_app(create_app(library.settings, library_factory=lambda _settings: library)) as url:
        yield url
