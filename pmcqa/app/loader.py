"""The API's library, loaded beside a server that already answers: `LibraryLoader`.

Loading the library (embedding model, index, default answer backend) takes seconds to minutes; the API binds
its port first and loads it in a background thread. `stage` says where loading is: "starting", "loading
embedding model", "loading index", "loading backend", "ready", or "failed: <reason>". Meanwhile `/healthz`
answers, `/readyz` reports the stage with 503, and every route that needs the library answers 503 with
`Retry-After` (`pmcqa.app.deps.get_library`). A database that cannot be reached yet (a PostgreSQL library
starting after the API, as after a host restart) is waited for, with backoff up to `DATABASE_RETRY_MAX_S`, and
`/readyz` says so; only the database part is retried (the embedding model loads once, before it). Any other
failed load is not retried: the reason stays in `/readyz` and the log until the process is restarted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pmcqa.app.service import Library
from pmcqa.core.db import DatabaseUnavailable
from pmcqa.core.settings import Settings
from pmcqa.index.embedding import Embedder, limit_torch_threads

log = logging.getLogger(__name__)

LibraryFactory = Callable[[Settings], Library]

READY = "ready"
FAILED = "failed"
DATABASE_RETRY_FIRST_S = 1.0
DATABASE_RETRY_MAX_S = 30.0


class LibraryLoader:
    """Builds the process's one `Library`, with `factory` (default `Library.create`), and says how far it got.

    `start()` loads in a daemon thread; `load()` loads in the calling thread. The library a supplied factory
    returns stays its caller's to close; the one `Library.create` built is closed by `close()`.
    """

    def __init__(self, settings: Settings, factory: LibraryFactory | None = None) -> None:
        self.settings = settings
        self._factory = factory
        self._library: Library | None = None
        self._stage = "starting"
        self._closed = False
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._stopping = threading.Event()  # set by close(): a load waiting for the database gives up

    @property
    def library(self) -> Library | None:
        """The library once it is ready, else None."""
        return self._library

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def failed(self) -> bool:
        return self._stage.startswith(FAILED)

    def _report(self, stage: str) -> None:
        log.info("library: %s", stage)
        self._stage = stage

    def start(self) -> None:
        threading.Thread(target=self.load, name="pmcqa-library-loader", daemon=True).start()

    def load(self) -> None:
        """Build the library here; a failure is logged and kept in `stage`, never raised. An unreachable
        database is waited for (it may still be starting); anything else fails the load."""
        try:
            embedder = self._load_embedder()
        except Exception as exc:  # missing model files, an unknown backend, ...
            self._fail(exc)
            return
        delay = DATABASE_RETRY_FIRST_S
        while True:
            try:
                library = self._build(embedder)
                break
            except DatabaseUnavailable as exc:
                self._report(f"waiting for the database, retrying in {delay:g}s: {exc}")
                if self._stopping.wait(delay):
                    self._finished.set()
                    return
                delay = min(delay * 2, DATABASE_RETRY_MAX_S)
            except Exception as exc:  # a store of another embedding model, a schema too new, ...
                self._fail(exc)
                return
        with self._lock:
            closed = self._closed
            if not closed:
                self._library = library
                self._report(READY)
        if closed and self._factory is None:  # the app stopped while this was loading
            library.close()
        self._finished.set()

    def _fail(self, exc: Exception) -> None:
        log.exception("the library failed to load")
        self._report(f"{FAILED}: {type(exc).__name__}: {exc}")
        self._finished.set()

    def _load_embedder(self) -> Embedder | None:
        """The embedding model, loaded once before the database is tried, so that waiting for the database
        retries the database alone; None with a supplied factory, which builds everything itself."""
        if self._factory is not None:
            return None
        # Before the model loads and before any request thread runs torch (see the setting).
        limit_torch_threads(self.settings.api_torch_threads)
        self._report("loading embedding model")
        return Embedder(self.settings)

    def _build(self, embedder: Embedder | None) -> Library:
        if embedder is None:
            assert self._factory is not None
            self._report("loading library")
            return self._factory(self.settings)
        return Library.create(self.settings, progress=self._report, embedder=embedder)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading has finished (ready or failed); False if `timeout` ran out first."""
        return self._finished.wait(timeout)

    def close(self) -> None:
        """At shutdown: close the library if this loader built it; a load still running closes its own."""
        self._stopping.set()
        with self._lock:
            self._closed = True
            library, self._library = self._library, None
        if library is not None and self._factory is None:
            library.close()
