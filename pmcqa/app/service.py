"""The service facade: the one code path of the HTTP routes and the CLI for ask, search and the papers.

`Library` holds the components created once per process (store, embedder, retriever, answer backends) and
turns requests into typed results (`Answer`, streamed `AnswerEvent`s, `SearchResult`, `PaperPage`,
`PaperView`, `PaperText`, `LibraryStats`) or typed refusals (`pmcqa.app.errors`: each carries its HTTP status
and CLI exit code). Nothing outside this module reads the store to answer a request.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pmcqa.app.answering.base import (
    ABSTAIN_ANSWER,
    Answer,
    AnswerBackend,
    AnswerDone,
    AnswerEvent,
    BackendEvent,
    Draft,
    DraftDone,
    ErrorEvent,
    StepEvent,
)
from pmcqa.app.answering.citations import finalize
from pmcqa.app.answering.claims import apply_policy, check_claims
from pmcqa.app.answering.registry import create_backend
from pmcqa.app.errors import (
    BackendNotReady,
    GenerationTimeout,
    InternalError,
    InvalidInput,
    PaperBusy,
    PaperNotFound,
    ServiceError,
)
from pmcqa.app.id_lookup import RequestResolver
from pmcqa.core.ids import InvalidPaperId, PaperId, not_found_hint, parse_id
from pmcqa.core.logs import BACKEND_STATUS_LOGGER
from pmcqa.core.settings import Settings
from pmcqa.core.status import BUSY, Status
from pmcqa.core.text import has_unencodable
from pmcqa.index.embedding import Embedder
from pmcqa.index.library import open_library
from pmcqa.index.models import PaperRecord, Passage
from pmcqa.index.retrieval import MODES, Mode
from pmcqa.index.store import open_store

log = logging.getLogger(__name__)
# A server's only report of a backend that failed to load (with its traceback); `pmcqa ask` quiets it.
status_log = logging.getLogger(BACKEND_STATUS_LOGGER)

# What a refusal tells a client to wait (HTTP `Retry-After`) while something is still loading.
RETRY_AFTER_S = 5
GENERATION_THREADS = 4  # generations of one backend at a time (each waits at most generation_timeout_s)


@dataclass
class Prepared:
    """Everything generation needs, checked and retrieved before any answer text is produced."""

    paper: PaperRecord
    question: str
    passages: list[Passage]
    backend: AnswerBackend
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class SearchResult:
    paper_id: str | None  # the paper searched (canonical id), or None for the whole library
    mode: Mode  # the mode used: library-wide search is always dense
    passages: list[Passage]


@dataclass(frozen=True)
class PaperPage:
    total: int
    papers: list[PaperRecord]
    statuses: dict[str, Status] = field(default_factory=dict)  # paper id -> status shown (see `shown_status`)


@dataclass(frozen=True)
class PaperView:
    """A paper as the library knows it; `record` is None while its first ingest is queued, runs or failed."""

    paper_id: str
    status: Status
    record: PaperRecord | None = None
    chunks: int = 0


@dataclass(frozen=True)
class PaperText:
    """A window of a paper's canonical text: `text` is chars [context_start, context_end) of it, and the
    span asked for, [start, end), lies inside."""

    paper_id: str
    chars: int
    start: int
    end: int
    context_start: int
    context_end: int
    text: str
    section: str | None


@dataclass(frozen=True)
class LibraryStats:
    papers: int
    chunks: int
    last_ingest: datetime | None


# Most characters one text request returns (a long paper is read in windows).
MAX_TEXT_WINDOW = 50_000


@dataclass
class Library:
    settings: Settings
    store: Any
    embedder: Any
    retriever: Any
    id_resolver: RequestResolver | None = None
    backends: dict[str, AnswerBackend] = field(default_factory=dict)
    backend_errors: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Generation runs in a pool per backend, so a request can stop waiting after generation_timeout_s; a
    # backend whose timed-out generations still hold their threads (a hung model server) then cannot starve
    # another (the extractive answers went 504 behind four hung OpenAI calls).
    _pools: dict[str, concurrent.futures.ThreadPoolExecutor] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        with_backend: bool = True,
        progress: Callable[[str], None] | None = None,
        embedder: Embedder | None = None,
    ) -> Library:
        """Load the real components once: embedder (unless given), store, retriever, id resolver and (unless
        `with_backend` is False, e.g. to search only) the default answer backend. `progress` hears each
        step as it starts ("loading embedding model", "loading index", "loading backend")."""
        # Writable: the service stores uploaded papers and deletes papers, and its query vectors must come
        # from the stored vectors' model (checked).
        parts = open_library(settings, writable=True, embedder=embedder, progress=progress)
        library = cls(settings, parts.store, parts.embedder, parts.retriever, _make_resolver(settings))
        if with_backend:
            if progress is not None:
                progress("loading backend")
            library.load_backend(settings.answer_backend)
        return library

    @classmethod
    def for_papers(cls, settings: Settings) -> Library:
        """The library for listing, showing, reading and deleting papers only: no embedding model is loaded
        (`pmcqa papers`); asking and searching need `create`."""
        return cls(settings, open_store(settings), None, None, _make_resolver(settings))

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        if self.id_resolver is not None:
            self.id_resolver.close()
        close = getattr(self.store, "close", None)
        if callable(close):
            close()

    # --- backends ------------------------------------------------------------------------------------------
    def load_backend(self, name: str) -> AnswerBackend | None:
        """Create backend `name` once; a failure is remembered (readyz and /ask report it) and not retried.

        A backend with a separate `load()` (the transformers model: minutes) is created unloaded and loads in
        a background thread, so the service is up (healthz 200, readyz/ask 503) while the weights arrive.
        """
        with self._lock:
            if name in self.backends:
                return self.backends[name]
            if name in self.backend_errors:
                return None
            try:
                backend = create_backend(name, self.settings, self.embedder)
            except Exception as exc:  # missing optional dependency, unknown name, bad configuration, ...
                status_log.exception("answer backend %s failed to load", name)
                self.backend_errors[name] = f"{type(exc).__name__}: {exc}"
                return None
            self.backends[name] = backend
        load = getattr(backend, "load", None)
        if callable(load) and not backend.is_ready():
            threading.Thread(target=self._load_in_background, args=(name, load), daemon=True).start()
        return backend

    def _load_in_background(self, name: str, load: Any) -> None:
        try:
            load()
        except Exception as exc:  # no GPU, weights missing, out of memory: report it, keep serving
            status_log.exception("answer backend %s failed to load", name)
            with self._lock:
                self.backend_errors[name] = f"{type(exc).__name__}: {exc}"
                self.backends.pop(name, None)

    def wait_for_backend(self, name: str | None = None, poll_s: float = 0.05) -> None:
        """Block while backend `name` (default: the configured one) loads in the background: in-process
        callers (`pmcqa ask`, evaluations) wait for it where the API answers 503. A failed load returns at
        once (`backend` then reports it); a backend that is up but not ready (an unreachable server) too."""
        name = name or self.settings.answer_backend
        backend = self.load_backend(name)
        while (
            backend is not None
            and name not in self.backend_errors
            and callable(getattr(backend, "load", None))
            and not backend.is_ready()
        ):
            time.sleep(poll_s)

    def check_backend_allowed(self, name: str | None) -> None:
        """422 for a backend a request may not choose (`allowed_backends`): nothing is loaded for it."""
        allowed = self.settings.request_backends()
        if name is not None and name not in allowed:
            raise InvalidInput(
                f"answer backend {name!r} is not enabled on this server; allowed: {', '.join(allowed)} "
                "(PMCQA_ALLOWED_BACKENDS)",
                code="backend_not_allowed",
            )

    def backend(self, name: str | None = None) -> AnswerBackend:
        """Backend `name` (default: the configured one), ready to answer; requests are checked against the
        allowed ones first (`check_backend_allowed`, in `prepare`)."""
        name = name or self.settings.answer_backend
        backend = self.load_backend(name)
        if backend is None or name in self.backend_errors:
            raise BackendNotReady(f"answer backend {name!r} failed to load: {self.backend_errors[name]}")
        problem = _unavailable(backend)
        if problem is not None:
            raise BackendNotReady(
                f"answer backend {name!r} is not ready: {problem}", retry_after_s=RETRY_AFTER_S
            )
        return backend

    def readiness(self) -> dict[str, Any]:
        name = self.settings.answer_backend
        backend = self.backends.get(name)
        problem = _unavailable(backend) if backend is not None else None
        backend_ready = backend is not None and problem is None
        try:
            papers = int(self.store.count_papers())
            index_ready = True
        except Exception as exc:
            log.warning("index not ready: %s", exc)
            papers, index_ready = 0, False
        detail = self.backend_errors.get(name) or problem or (None if backend_ready else "backend loading")
        return {
            "ready": index_ready and backend_ready,
            "index": index_ready,
            "backend": name,
            "backend_ready": backend_ready,
            "papers": papers,
            "detail": detail if not (index_ready and backend_ready) else None,
        }

    # --- papers --------------------------------------------------------------------------------------------
    def _parse(self, text: str) -> PaperId:
        return check_paper_id(text, self.settings)

    async def canonical_id(self, text: str) -> str:
        """`resolve_id` for async handlers: an NCBI lookup is awaited without holding a server thread, so a
        burst of unknown PMIDs with NCBI unreachable cannot starve other requests of threads."""
        parsed = self._parse(text)
        if parsed.kind == "pmcid":
            self._known_if_bare(parsed)
            return parsed.value
        paper_id = self.store.resolve_alias(str(parsed))  # one indexed SQLite read
        if paper_id:
            return str(paper_id)
        if self.id_resolver is not None:
            pmcid = await self.id_resolver.pmcid_async(parsed)
            if pmcid:
                return pmcid
        raise PaperNotFound.for_paper(str(parsed), not_found_hint(parsed))

    def resolve_id(self, text: str) -> str:
        """Canonical paper id of any accepted form (PMCID, versioned PMCID, URL, PMID, DOI, bare number)."""
        parsed = self._parse(text)
        if parsed.kind == "pmcid":
            self._known_if_bare(parsed)
            return parsed.value
        # PMID / DOI: the store's aliases first (no network), then NCBI's ID converter, bounded in time
        # (`RequestResolver`): NCBI unreachable is a 503/504 saying so, a definite miss a 404.
        paper_id = self.store.resolve_alias(str(parsed))
        if paper_id:
            return str(paper_id)
        if self.id_resolver is not None:
            pmcid = self.id_resolver.pmcid(parsed)
            if pmcid:
                return pmcid
        raise PaperNotFound.for_paper(str(parsed), not_found_hint(parsed))

    def _known_if_bare(self, parsed: PaperId) -> None:
        """A bare number read as a PMCID that the library knows nothing of (no paper, no ingest status) is
        refused here, while the reading is known, with a message naming the other one ("if you meant PMID
        8026465, pass pmid:8026465"): the caller goes on with the canonical id alone."""
        pmcid = parsed.value
        if parsed.bare and self.store.resolve_alias(pmcid) is None and self.store.get_status(pmcid) is None:
            raise PaperNotFound.for_paper(pmcid, not_found_hint(parsed))

    def status_of(self, paper_id: str) -> Status | None:
        """The store's ingest status of a canonical id (queued, ingesting, ingested, failed, ...), or None."""
        status = self.store.get_status(paper_id)
        return None if status is None else Status(getattr(status, "status", status))

    def _not_busy(self, paper_id: str) -> Status | None:
        status = self.status_of(paper_id)
        if status in BUSY:
            raise PaperBusy.for_paper(paper_id, status)
        return status

    def require_paper(self, text: str) -> PaperRecord:
        """The stored paper for an id, or the error saying why not (404 absent, 409 still ingesting)."""
        paper_id = self.resolve_id(text)
        self._not_busy(paper_id)
        paper = self.store.get_paper(paper_id)
        if paper is None:
            raise PaperNotFound.for_paper(paper_id)
        return paper

    def papers(self, offset: int = 0, limit: int = 50) -> PaperPage:
        """A page of the stored papers, most recently stored first, with the library's size; each paper's
        status is the one `paper` shows."""
        records = self.store.list_papers(offset, limit)
        statuses = {r.paper_id: self.shown_status(r, self.status_of(r.paper_id)) for r in records}
        return PaperPage(total=int(self.store.count_papers()), papers=records, statuses=statuses)

    @staticmethod
    def shown_status(record: PaperRecord, status: Status | None) -> Status:
        """A stored paper reads as its record says, unless an ingest of it is under way (queued, ingesting).
        A failed re-ingest left the stored paper intact, so it still reads `ingested` (list and detail alike).
        """
        return status if status in BUSY else Status(record.status)

    def paper(self, text: str) -> PaperView:
        """One paper's record and status; a paper not stored yet is shown while it has a status to poll."""
        paper_id = self.resolve_id(text)
        status = self.status_of(paper_id)
        record = self.store.get_paper(paper_id)
        if record is None:
            if status is None:
                raise PaperNotFound.for_paper(paper_id)
            return PaperView(paper_id, status)
        chunks = len(self.store.get_chunks(paper_id))
        return PaperView(paper_id, self.shown_status(record, status), record, chunks)

    def delete(self, text: str) -> str:
        """Remove a stored paper; returns its canonical id. Refused while it is being ingested."""
        paper_id = self.resolve_id(text)
        self._not_busy(paper_id)
        if self.store.get_paper(paper_id) is None:
            raise PaperNotFound.for_paper(paper_id)
        self.store.delete_paper(paper_id)
        return paper_id

    def text(self, text_id: str, start: int = 0, end: int | None = None, context: int = 0) -> PaperText:
        """Chars [start, end) of a paper's canonical text with `context` chars either side, e.g. to show a
        citation where it stands; `end` defaults to as far as one window reaches."""
        paper = self.require_paper(text_id)
        chars = len(paper.text)
        if start < 0 or context < 0:
            raise InvalidInput("start and context must not be negative")
        if start > chars:
            raise InvalidInput(f"start={start} is past the end of the text ({chars} characters)")
        if end is None:  # as far as one window reaches with its context
            end = min(chars, start + max(0, MAX_TEXT_WINDOW - min(context, start) - context))
        if end < start:
            raise InvalidInput(f"end={end} is before start={start}")
        end = min(end, chars)
        context_start, context_end = max(0, start - context), min(chars, end + context)
        if context_end - context_start > MAX_TEXT_WINDOW:
            raise InvalidInput(
                f"{context_end - context_start} characters asked for; one request returns at most "
                f"{MAX_TEXT_WINDOW} (ask for a smaller window)"
            )
        section = next(
            (c.section for c in self.store.get_chunks(paper.paper_id) if c.start <= start < c.end), None
        )
        window = paper.text[context_start:context_end]
        return PaperText(paper.paper_id, chars, start, end, context_start, context_end, window, section)

    def stats(self) -> LibraryStats:
        """The library's size and when it last changed (for metrics)."""
        return LibraryStats(
            int(self.store.count_papers()), int(self.store.count_chunks()), self.store.last_update()
        )

    def check_question(self, question: str, what: str = "question") -> str:
        return check_question(question, self.settings, what)

    # --- answering -----------------------------------------------------------------------------------------
    def prepare(
        self, paper_id: str, question: str, top_k: int | None = None, backend: str | None = None
    ) -> Prepared:
        # Input errors first (422, 404, 409), then whether the backend can answer now (503).
        self.check_backend_allowed(backend)
        question = self.check_question(question)
        paper = self.require_paper(paper_id)
        chosen = self.backend(backend)
        started = time.perf_counter()
        passages = self.retriever.retrieve(paper.paper_id, question, top_k or self.settings.top_k, "hybrid")
        timings = {"retrieve": round(time.perf_counter() - started, 4)}
        return Prepared(paper, question, passages, chosen, timings, started)

    def answer(self, prepared: Prepared, draft: Draft, deadline: float | None = None) -> Answer:
        """The final Answer: the draft's text with only verified citations, each claim checked against what
        it cites (unsupported claims flagged, dropped or kept: `settings.unsupported_claims`). Claims whose
        turn comes after `deadline` (`time.monotonic()`: the answer's, set when generation began) are marked
        not checked, so the whole answer keeps to `generation_timeout_s`."""
        citations = finalize(draft, prepared.paper, prepared.passages)
        started = time.perf_counter()
        claims = check_claims(draft, citations, prepared.passages, self.embedder, deadline)
        checked = apply_policy(draft, citations, claims, self.settings.unsupported_claims, ABSTAIN_ANSWER)
        if claims and not draft.verbatim:
            prepared.timings["check_claims"] = round(time.perf_counter() - started, 4)
        prepared.timings["total"] = round(time.perf_counter() - prepared.started, 4)
        return Answer(
            paper_id=prepared.paper.paper_id,
            question=prepared.question,
            answer=checked.answer,
            steps=[*draft.steps, *checked.steps],
            citations=checked.citations,
            claims=checked.claims,
            abstained=checked.abstained,
            backend=prepared.backend.name,
            model=draft.model or prepared.backend.model,
            truncated=draft.truncated,
            confidence=draft.confidence,
            timings=prepared.timings,
        )

    def _pool(self, backend: str) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            pool = self._pools.get(backend)
            if pool is None:
                pool = self._pools[backend] = concurrent.futures.ThreadPoolExecutor(
                    GENERATION_THREADS, thread_name_prefix=f"pmcqa-gen-{backend}"
                )
            return pool

    def ask(
        self, paper_id: str, question: str, top_k: int | None = None, backend: str | None = None
    ) -> Answer:
        prepared = self.prepare(paper_id, question, top_k, backend)
        started = time.perf_counter()
        deadline = time.monotonic() + self.settings.generation_timeout_s  # generation and the claim check
        future = self._pool(prepared.backend.name).submit(
            contextvars.copy_context().run,  # the request id travels with the generation
            prepared.backend.generate,
            prepared.question,
            prepared.passages,
            prepared.paper,
        )
        try:
            draft = future.result(timeout=self.settings.generation_timeout_s)
        except concurrent.futures.TimeoutError:
            # The worker thread cannot be killed; it finishes in the background and its result is discarded.
            future.cancel()
            raise GenerationTimeout(
                f"generation ran past {self.settings.generation_timeout_s:g}s (PMCQA_GENERATION_TIMEOUT_S)"
            ) from None
        prepared.timings["generate"] = round(time.perf_counter() - started, 4)
        return self.answer(prepared, draft, deadline)

    def stream(self, prepared: Prepared, cancelled: threading.Event | None = None) -> Iterator[AnswerEvent]:
        """Steps and answer deltas as the backend produces them, then `AnswerDone` with the final Answer, or
        an `ErrorEvent` saying why there is none.

        The backend runs in a worker thread feeding a queue, so a stalled backend still ends the stream with
        an error event at generation_timeout_s. Setting `cancelled` (the client went away) stops generation:
        the backend sees it (the transformers backend stops at the next token and frees its model, the
        OpenAI-compatible backend cuts its HTTP stream, stalled or not), and its stream is closed. This
        stream's end, whatever it is, sets `cancelled` too: a backend still running (past this stream's
        deadline) stops, and nothing of it waits on.
        """
        events: queue.Queue[BackendEvent | BaseException | None] = queue.Queue()
        deadline = time.monotonic() + self.settings.generation_timeout_s
        cancelled = cancelled or threading.Event()

        def produce() -> None:
            backend_events = prepared.backend.stream(
                prepared.question, prepared.passages, prepared.paper, cancelled=cancelled
            )
            try:
                for event in backend_events:
                    if cancelled.is_set():
                        log.info("client gone: generation stopped")
                        break
                    events.put(event)
            except BaseException as exc:  # handed to the consumer, which reports it as an error event
                events.put(exc)
            finally:
                close = getattr(backend_events, "close", None)
                if callable(close):
                    close()  # runs the backend's own cleanup (stop generating, close the connection)
                events.put(None)

        started = time.perf_counter()
        # The copied context carries the request id into the backend (logs, X-Request-ID to the server).
        self._pool(prepared.backend.name).submit(contextvars.copy_context().run, produce)
        try:
            steps: list[str] = []
            while True:
                try:
                    # Short waits, so a consumer whose client left stops waiting too.
                    item = events.get(timeout=min(0.25, max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    if cancelled.is_set():
                        return
                    if time.monotonic() < deadline:
                        continue
                    timeout_s = self.settings.generation_timeout_s
                    yield ErrorEvent.of(GenerationTimeout(f"generation ran past {timeout_s:g}s"))
                    return
                if item is None:
                    if not cancelled.is_set():
                        yield ErrorEvent.of(InternalError("no answer produced"))
                    return
                if isinstance(item, BaseException):
                    yield ErrorEvent.of(_as_service_error(item))
                    return
                if isinstance(item, DraftDone):
                    draft = item.data.model_copy(update={"steps": item.data.steps or steps})
                    prepared.timings["generate"] = round(time.perf_counter() - started, 4)
                    yield AnswerDone(data=self.answer(prepared, draft, deadline))
                    return
                if isinstance(item, StepEvent):
                    steps.append(item.data)
                yield item
        finally:
            cancelled.set()  # nobody reads on: the backend stops, and lets go of what it waits on

    # --- search --------------------------------------------------------------------------------------------
    def search(
        self, query: str, paper_id: str | None = None, k: int | None = None, mode: str = "hybrid"
    ) -> SearchResult:
        """Passages for a query inside one paper (`mode`: hybrid, dense or lexical) or across the library."""
        query = self.check_question(query, "query")
        if mode not in MODES:
            raise InvalidInput(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        top_k = k or self.settings.top_k
        if paper_id:
            paper = self.require_paper(paper_id)
            passages = self.retriever.retrieve(paper.paper_id, query, top_k, mode)
            return SearchResult(paper.paper_id, mode, passages)  # type: ignore[arg-type]  # checked above
        return SearchResult(None, "dense", self.retriever.search_library(query, top_k))


def check_paper_id(text: str, settings: Settings) -> PaperId:
    """The parsed id (`pmcqa.core.ids.parse_id`), or `InvalidInput` saying why it is not a paper id."""
    try:
        return parse_id(text, settings.bare_digits)
    except InvalidPaperId as exc:
        raise InvalidInput(str(exc)) from None


def check_question(question: str, settings: Settings, what: str = "question") -> str:
    """The question (or search query) stripped, or `InvalidInput` (empty, over `max_question_chars`, not
    valid text); needs no library, so `pmcqa ask` checks it before loading one."""
    question = question.strip()
    if not question:
        raise InvalidInput(f"{what} must not be empty")
    limit = settings.max_question_chars
    if len(question) > limit:
        raise InvalidInput(
            f"{what} is {len(question)} characters; the limit is {limit} (PMCQA_MAX_QUESTION_CHARS)"
        )
    if not question.isprintable() and has_unencodable(question):
        # JSON may carry a lone surrogate ("\ud800"); no tokenizer or database can take one.
        raise InvalidInput(f"{what} is not valid Unicode text (it holds a lone surrogate)")
    return question


def _unavailable(backend: AnswerBackend) -> str | None:
    """Why a backend cannot answer now (its own words where it has them, e.g. an unreachable server)."""
    unavailable = getattr(backend, "unavailable", None)
    if callable(unavailable):
        return unavailable()
    return None if backend.is_ready() else "still loading; retry shortly"


def _as_service_error(error: BaseException) -> ServiceError:
    """What a stream reports for an exception its backend raised."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, TimeoutError):  # a wall-clock limit of the backend's own
        return GenerationTimeout(str(error) or "generation timed out")
    log.error("streaming backend failed", exc_info=error)
    return InternalError("generation failed")


def _make_resolver(settings: Settings) -> RequestResolver | None:
    """NCBI id resolver (cached id map + ID Converter) for PMIDs/DOIs the store does not know, bounded for
    request paths (`app.id_lookup`)."""
    try:
        return RequestResolver(settings)
    except Exception as exc:  # the service still answers for PMCIDs and stored aliases
        log.warning("no id resolver: %s", exc)
        return None
