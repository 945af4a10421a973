"""Opening the library for a process: the one place that puts embedder, store and retriever together.

`open_library(settings, writable=...)` is used by the service (`app.service.Library.create`, hence the API,
`pmcqa ask` and `pmcqa search`), the ingest pipeline and the worker (their writing store), `pmcqa reindex`
and the evaluation. The embedding model is loaded once per process (`index.embedding.load_model` and, for
the ONNX backends, `index.onnx_backend.load_onnx_model` cache it), so opening the library twice in one
process costs no second model load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pmcqa.core.settings import Settings
from pmcqa.index.embedding import Embedder
from pmcqa.index.retrieval import Retriever
from pmcqa.index.store import PaperStore, open_store


@dataclass
class LibraryParts:
    """The library as one process uses it. `embedder` computes both the vectors it stores and its queries'."""

    settings: Settings
    embedder: Embedder
    store: PaperStore
    retriever: Retriever

    def close(self) -> None:
        """Close the store (a store that wrote brings its FAISS file, if it has one, up to date first)."""
        self.store.close()


def open_library(
    settings: Settings,
    *,
    writable: bool,
    embedder: Embedder | None = None,
    progress: Callable[[str], None] | None = None,
) -> LibraryParts:
    """Load the embedder (or use `embedder`), open the store and build a retriever over both.

    `writable=True` is for a process that stores vectors computed by this embedder, or compares its query
    vectors with stored ones (ingest, the service, evaluation): the stored vectors must come from the same
    model, so it is checked now and `EmbeddingModelMismatch` names both models. `writable=False` opens the
    store whatever model its vectors come from: for `pmcqa reindex`, whose job is to replace that model.
    `progress` hears each step as it starts ("loading embedding model", "loading index"): the API reports it.
    """
    report = progress or (lambda _step: None)
    if embedder is None:
        report("loading embedding model")
        embedder = Embedder(settings)
    report("loading index")
    store = open_store(settings)  # SQLite, or PostgreSQL when settings.database_url is set
    if writable:
        try:
            store.check_model(embedder)
        except BaseException:
            store.close()
            raise
    return LibraryParts(settings, embedder, store, Retriever(store, embedder, settings))
