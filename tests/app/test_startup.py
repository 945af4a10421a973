"""Start-up: the CLI checks its input before importing anything heavy, and the API serves /healthz while its
library loads (a background thread: /readyz says what is loading, routes that need the library say 503 with
Retry-After). No timing assertions: what is imported, and what is answered while loading, are asserted."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import HEAVY, ROOT, make_settings, run_cli
from fastapi.testclient import TestClient

from pmcqa.app.cli import COMMANDS, load_command
from pmcqa.app.main import create_app
from pmcqa.app.service import Library

QUESTION = "What is the probability that a research claim is true?"


def test_ask_with_a_malformed_id_exits_without_importing_torch(tmp_path: Path) -> None:
    report, stderr = run_cli(["ask", "banana", "x"], tmp_path)
    assert report["code"] == 2 and "not a paper id: 'banana'" in stderr
    assert report["loaded"] == []  # not torch, not the embedding model's libraries, not faiss
    assert report["commands"] == ["pmcqa.app.commands.ask"]  # only the chosen command's module


def test_ask_with_a_bad_question_exits_without_importing_torch(tmp_path: Path) -> None:
    empty, stderr = run_cli(["ask", "PMC1182327", "   "], tmp_path)
    assert empty["code"] == 2 and "question must not be empty" in stderr and empty["loaded"] == []
    long_question = "why " * 1000
    too_long, stderr = run_cli(["ask", "PMC1182327", long_question], tmp_path)
    assert too_long["code"] == 2 and "PMCQA_MAX_QUESTION_CHARS" in stderr and too_long["loaded"] == []


def test_help_and_jobs_load_no_heavy_module(tmp_path: Path) -> None:
    help_report, _ = run_cli(["--help"], tmp_path)
    assert help_report["code"] == 0 and help_report["loaded"] == [] and help_report["commands"] == []
    jobs_report, _ = run_cli(["jobs"], tmp_path)
    assert jobs_report["code"] == 0 and jobs_report["loaded"] == []


def test_backup_loads_no_heavy_module(library_dir: Path, ingested, tmp_path: Path) -> None:
    """A backup copies files and databases: no model, no FAISS (its file is copied, not read)."""
    report, stderr = run_cli(["backup", str(tmp_path / "copy"), "--json"], library_dir)
    assert report["code"] == 0, stderr
    assert report["loaded"] == [] and report["commands"] == ["pmcqa.app.commands.backup"]
    assert (tmp_path / "copy" / "index" / "library.faiss").is_file()


def test_parse_counts_tokens_without_the_model_weights(tmp_path: Path, shared_data: Path) -> None:
    article = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pmed.0020124.xml"
    report, _ = run_cli(["parse", str(article), "--json"], tmp_path)
    assert report["code"] == 0 and report["loaded"] == []  # tokenizer.json via `tokenizers`, no transformers


def test_ingest_and_ask_on_the_default_encoder_never_import_torch(
    tmp_path: Path, shared_data: Path, shared_onnx_exports: Path
) -> None:
    """The CPU default encoder (onnx-int8) tokenizes, pools and normalises without torch: embedding a paper's
    chunks and a question loads none of torch, transformers or sentence-transformers (~600 MB in the API)."""
    article = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pmed.0020124.xml"
    exports = {"PMCQA_EMBEDDING_EXPORT_DIR": str(shared_onnx_exports)}
    torch_family = {"torch", "transformers", "sentence_transformers", "onnxscript"}  # onnxscript: export only
    ingested, stderr = run_cli(["ingest", "--xml", str(article), "--json"], tmp_path, exports)
    assert ingested["code"] == 0, stderr
    assert not torch_family & set(ingested["loaded"]), ingested
    asked, stderr = run_cli(["ask", "10.1371/journal.pmed.0020124", QUESTION], tmp_path, exports)
    assert asked["code"] == 0, stderr  # the paper was stored and answered from (exit 0, not 3: not stored)
    assert not torch_family & set(asked["loaded"]) and "faiss" not in asked["loaded"], asked


def test_no_command_module_imports_a_heavy_library() -> None:
    probe = (
        "import json, sys\n"
        "from pmcqa.app.cli import COMMANDS, load_command\n"
        "for name in COMMANDS: load_command(name)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules} & set(json.loads(sys.argv[1])))))"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(HEAVY)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []  # serve, worker, search, eval ...: each loads them only when run


def test_help_lists_each_command_by_its_own_docstring() -> None:
    for name, (_, summary) in COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        assert (command.help or "").strip().splitlines()[0] == summary, name


# --- the API while the library loads ------------------------------------------------------------------------


class SlowFactory:
    """A library factory that blocks until released, standing in for a slow model load."""

    def __init__(self, library: Library | None = None, error: Exception | None = None) -> None:
        self.library, self.error = library, error
        self.release = threading.Event()

    def __call__(self, _settings: object) -> Library:
        assert self.release.wait(60), "the test never released the factory"
        if self.error is not None:
            raise self.error
        assert self.library is not None
        return self.library


def test_healthz_answers_while_the_library_loads_then_readyz(library) -> None:
    factory = SlowFactory(library)
    app = create_app(library.settings, library_factory=factory, load_in_background=True)
    with TestClient(app) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        loading = client.get("/readyz")
        assert loading.status_code == 503
        assert loading.json()["ready"] is False and loading.json()["detail"] == "loading library"
        asked = client.post("/ask", json={"paper_id": "PMC1182327", "question": QUESTION})
        assert asked.status_code == 503 and asked.headers["Retry-After"].isdigit()
        assert "still loading" in asked.json()["detail"]
        searched = client.post("/search", json={"query": "research claims"})
        assert searched.status_code == 503 and "Retry-After" in searched.headers

        factory.release.set()
        assert app.state.loader.wait(30)
        assert client.get("/readyz").status_code == 200
        answered = client.post("/ask", json={"paper_id": "PMC1182327", "question": QUESTION})
        assert answered.status_code == 200, answered.text


def test_a_library_that_fails_to_load_is_reported_not_retried(library) -> None:
    factory = SlowFactory(error=RuntimeError("no model files"))
    factory.release.set()
    app = create_app(library.settings, library_factory=factory, load_in_background=True)
    with TestClient(app) as client:
        assert app.state.loader.wait(30)
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["detail"] == "failed: RuntimeError: no model files"
        asked = client.post("/ask", json={"paper_id": "PMC1182327", "question": QUESTION})
        assert asked.status_code == 503 and "Retry-After" not in asked.headers
        assert "no model files" in asked.json()["detail"]


@pytest.fixture
def loading_server(library) -> Iterator[tuple[str, SlowFactory]]:
    """The app on uvicorn (a real socket) with a library factory that has not finished."""
    factory = SlowFactory(library)
    app = create_app(library.settings, library_factory=factory, load_in_background=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{server.config.port}", factory
    finally:
        factory.release.set()
        server.should_exit = True
        thread.join(timeout=10)


def test_the_port_opens_before_the_library_is_loaded(loading_server) -> None:
    url, factory = loading_server
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/healthz").status_code == 200  # served while the factory still blocks
        assert http.get("/readyz").status_code == 503
        assert not factory.release.is_set()
        factory.release.set()
        deadline = time.monotonic() + 30
        while http.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/readyz").json()["ready"] is True


def test_library_create_reports_each_loading_step(library) -> None:
    steps: list[str] = []
    created = Library.create(library.settings, progress=steps.append)
    try:
        assert steps == ["loading embedding model", "loading index", "loading backend"]
        assert created.readiness()["ready"] is True
    finally:
        created.close()


def test_backend_still_loading_is_503_with_retry_after(make_library) -> None:
    library = make_library()

    class Loading:
        name, model = "extractive", "loading"

        def is_ready(self) -> bool:
            return False

    library.backends["extractive"] = Loading()  # type: ignore[assignment]
    with TestClient(create_app(library.settings, library_factory=lambda _s: library)) as client:
        asked = client.post("/ask", json={"paper_id": "PMC1182327", "question": QUESTION})
        assert asked.status_code == 503 and asked.json()["error"] == "backend_not_ready"
        assert asked.headers["Retry-After"].isdigit()


def test_a_library_whose_database_comes_up_late_is_waited_for(monkeypatch) -> None:
    """A PostgreSQL library still starting (after a host restart, containers start unordered): the API waits
    for it and becomes ready (the load failed for good, /readyz 503 until someone restarted the API)."""
    import threading

    import pmcqa.app.loader as loader_module
    from pmcqa.core.db import DatabaseUnavailable
    from pmcqa.core.settings import Settings

    monkeypatch.setattr(loader_module, "DATABASE_RETRY_FIRST_S", 0.01)
    attempts: list[int] = []
    stages: list[str] = []
    ready = object()

    def factory(_settings: Settings) -> object:
        attempts.append(1)
        if len(attempts) < 3:
            raise DatabaseUnavailable("cannot connect to PostgreSQL at postgresql://db/pmcqa: refused")
        return ready

    loader = loader_module.LibraryLoader(Settings(), factory)  # type: ignore[arg-type]
    report = loader._report
    monkeypatch.setattr(loader, "_report", lambda stage: (stages.append(stage), report(stage)))
    thread = threading.Thread(target=loader.load)
    thread.start()
    assert loader.wait(10) and loader.library is ready and loader.stage == loader_module.READY
    thread.join()
    assert len(attempts) == 3 and any(stage.startswith("waiting for the database") for stage in stages)


def test_waiting_for_the_database_loads_the_embedding_model_once(monkeypatch, tmp_path: Path) -> None:
    """Only the database part is retried: the embedding model is not built again at each try."""
    import pmcqa.app.loader as loader_module
    import pmcqa.index.library as library_module
    from pmcqa.core.db import DatabaseUnavailable
    from pmcqa.index.embedding import Embedder

    monkeypatch.setattr(loader_module, "DATABASE_RETRY_FIRST_S", 0.01)
    loads: list[int] = []
    build_embedder = Embedder.__init__

    def counted(self: Embedder, settings: object) -> None:
        loads.append(1)
        build_embedder(self, settings)  # type: ignore[arg-type]

    monkeypatch.setattr(Embedder, "__init__", counted)
    tries: list[int] = []
    open_store = library_module.open_store

    def database_up_at_third_try(settings: object) -> object:
        tries.append(1)
        if len(tries) < 3:
            raise DatabaseUnavailable("cannot connect to PostgreSQL at postgresql://db/pmcqa: refused")
        return open_store(settings)  # type: ignore[arg-type]

    monkeypatch.setattr(library_module, "open_store", database_up_at_third_try)
    # hand-set: the extractive backend uses the library's embedder, no scorer of its own
    loader = loader_module.LibraryLoader(make_settings(tmp_path, answer_model="hand-set"))
    stages: list[str] = []
    report = loader._report
    monkeypatch.setattr(loader, "_report", lambda stage: (stages.append(stage), report(stage)))
    try:
        loader.load()
        assert loader.stage == loader_module.READY and loader.library is not None, loader.stage
        assert len(tries) == 3 and len(loads) == 1, (tries, loads)
        assert stages.count("loading embedding model") == 1 and stages[-1] == loader_module.READY
    finally:
        loader.close()
