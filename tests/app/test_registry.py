"""Backends by name: lazy imports, shared components passed only where accepted, background loading."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from pmcqa.app.answering.extractive import ExtractiveBackend
from pmcqa.app.answering.registry import BACKENDS, UnknownBackend, create_backend
from pmcqa.app.errors import BackendNotReady
from pmcqa.app.service import Library
from pmcqa.core.extras import MissingExtra
from pmcqa.core.logs import BACKEND_STATUS_LOGGER, quiet_backend_status
from pmcqa.core.settings import Settings


class LoadsLater:
    """A backend whose weights load in `load()` (like the transformers backend created with load=False)."""

    name = "loads-later"
    model = "m"

    def __init__(self, settings: Settings, *, load: bool = True) -> None:
        self.ready = False
        self.release = threading.Event()
        if load:
            self.load()

    def load(self) -> None:
        self.release.wait(10)
        self.ready = True

    def is_ready(self) -> bool:
        return self.ready


def test_names_map_to_backends_and_unknown_names_fail_clearly(tmp_path):
    assert set(BACKENDS) == {"extractive", "transformers", "openai"}
    backend = create_backend("extractive", Settings(data_dir=tmp_path), embedder="E")
    assert isinstance(backend, ExtractiveBackend)
    assert backend._embedder == "E"  # the process's embedder is shared, not loaded again
    with pytest.raises(UnknownBackend, match="choose one of extractive, transformers, openai"):
        create_backend("gpt9", Settings(data_dir=tmp_path))


def test_choosing_extractive_imports_no_generation_stack():
    code = (
        "import sys; from pmcqa.app.answering.registry import create_backend;"
        "from pmcqa.core.settings import Settings;"
        "create_backend('extractive', Settings(), embedder=object());"
        "print(any(m in sys.modules for m in ('openai', 'pmcqa.app.answering.transformers_backend')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_a_slow_backend_loads_in_the_background(monkeypatch, tmp_path):
    monkeypatch.setitem(BACKENDS, "later", lambda settings, embedder: LoadsLater(settings, load=False))
    library = Library(Settings(data_dir=tmp_path), store=None, embedder=None, retriever=None)
    backend = library.load_backend("later")
    assert isinstance(backend, LoadsLater) and not backend.is_ready()
    with pytest.raises(BackendNotReady, match="still loading"):
        library.backend("later")
    backend.release.set()
    deadline = time.monotonic() + 10
    while not backend.is_ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert library.backend("later") is backend


class FailsToLoad(LoadsLater):
    def load(self) -> None:
        raise OSError("no weights at /nowhere")


def test_a_failed_load_is_logged_with_its_traceback_unless_the_caller_reports_it(
    monkeypatch, tmp_path, caplog
):
    monkeypatch.setitem(BACKENDS, "broken", lambda settings, embedder: FailsToLoad(settings, load=False))

    def failed_load() -> Library:
        library = Library(Settings(data_dir=tmp_path), store=None, embedder=None, retriever=None)
        library.wait_for_backend("broken")
        with pytest.raises(BackendNotReady, match="failed to load: OSError: no weights at /nowhere"):
            library.backend("broken")
        return library

    failed_load()  # a server: its log is where the operator reads why, traceback included
    logged = [record for record in caplog.records if record.name == BACKEND_STATUS_LOGGER]
    assert [(record.levelname, record.exc_info is not None) for record in logged] == [("ERROR", True)]
    caplog.clear()
    with quiet_backend_status():  # `pmcqa ask`: its error line says why, once
        failed_load()
    assert [record for record in caplog.records if record.name == BACKEND_STATUS_LOGGER] == []


@pytest.mark.parametrize(
    ("backend", "extra", "blocked"),
    [("transformers", "llm", ("peft", "bitsandbytes")), ("openai", "openai", ("openai",))],
)
def test_a_backend_without_its_extra_names_the_extra(monkeypatch, tmp_path, backend, extra, blocked):
    for module in blocked:  # how Python itself marks a module as not importable
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtra) as raised:
        create_backend(backend, Settings(data_dir=tmp_path))
    message = str(raised.value)
    assert f"pip install 'pmcqa[{extra}]'" in message and all(module in message for module in blocked)
    assert raised.value.extra == extra

    library = Library(Settings(data_dir=tmp_path), store=None, embedder=None, retriever=None)
    with pytest.raises(BackendNotReady, match=rf"pmcqa\[{extra}\]"):  # what /ask answers (503)
        library.backend(backend)
