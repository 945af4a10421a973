"""Paper id or local file -> stored, searchable paper: resolve, fetch (raw cache), parse, chunk, store.

Every requested id (and every document found in the given files) yields exactly one `IngestOutcome`:

=============== ===================================================================================
ingested        full text parsed, chunked and stored
no-full-text    the article exists but has no usable body (publisher restriction, front matter only);
                its title/abstract are stored with status "no-full-text"
not-found       not in PMC (efetch `<error>`, or the ID Converter / elink found no PMCID)
failed          something went wrong (transport gave up, unusable reply, parse/store error); see reason
invalid         the id or file is malformed / not JATS / carries no id (`skipped` marks package members
                that are simply not articles, e.g. images in a .tar.gz)
=============== ===================================================================================

Each article is parsed once (the fetcher hands over the parsed element) and chunked by
`ingest.chunking.Chunker`. A file's paper id is the ``--id`` given for it, else its own PMCID, else its DOI
(`pmcqa.core.ids`); a DOI the library holds under a PMCID stores under that PMCID. One paper is one record:
PMC's copy of a paper stored under its DOI moves it to its PMCID (`Ingestor._moved_doi_copy`,
`index.store.supersede_doi_copy`). The library (store and embedding model) is opened on first use with
`index.library.open_library`, unless the caller hands in a store and its encoder, so resolving and fetching
need neither.
"""

from __future__ import annotations

import logging
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lxml import etree
from pydantic import BaseModel

from pmcqa.core.ids import (
    NO_OWN_ID,
    InvalidPaperId,
    alias_key,
    canonical_pmcid,
    check_storable_id,
    given_paper_id,
    not_found_hint,
    own_paper_id,
)
from pmcqa.core.settings import Settings
from pmcqa.core.status import BUSY, OK, IngestState, OutcomeStatus, Status
from pmcqa.index.library import open_library
from pmcqa.index.models import PaperRecord
from pmcqa.index.store import DocumentEncoder, PaperStore, doi_copy_alias, is_doi_copy, open_store
from pmcqa.ingest.chunking import Chunker, rekeyed
from pmcqa.ingest.entrez import EntrezClient, RateLimiter
from pmcqa.ingest.fetch import Fetcher, FetchResult
from pmcqa.ingest.jats import (
    NO_BODY,
    JatsError,
    article_doi,
    article_pmcid,
    articleset_errors,
    find_articles,
    parse_article,
)
from pmcqa.ingest.resolve import IdResolver, Resolution
from pmcqa.ingest.xml import parse_xml

log = logging.getLogger(__name__)

XML_SUFFIXES = (".xml", ".nxml")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Members a package may hold: PMC packages hold tens; a crafted one of millions of empty members would cost
# an outcome (and a TarInfo) each.
MAX_PACKAGE_MEMBERS = 10_000

Progress = Callable[["IngestOutcome"], None]


def _holds_full_text(store: PaperStore, paper_id: str) -> bool:
    stored = store.get_paper(paper_id)
    return stored is not None and stored.status == Status.INGESTED


def _user_copy(record: PaperRecord) -> bool:
    """Whether a stored paper came from a file or an upload (not from PMC), which an ingest by id keeps."""
    return record.source not in (None, "efetch", "cache")


def _kept_reason(record: PaperRecord) -> str:
    return f"already in the library from {record.source}; ingest with refresh to fetch PMC's copy"


class IngestOutcome(BaseModel):
    requested: str  # the id as given, or the file (``package.tar.gz::member.nxml`` for package members)
    paper_id: str | None = None
    status: OutcomeStatus
    reason: str | None = None
    title: str | None = None
    chunks: int = 0
    source: str | None = None  # "efetch", "cache" (raw XML cache) or the file path
    skipped: bool = False  # a package member that is not an article: reported, but not a failure

    @property
    def ok(self) -> bool:
        return self.status in OK or self.skipped


@dataclass
class _Document:
    label: str
    data: bytes | None = None
    error: IngestOutcome | None = None
    override: str | None = None


class Ingestor:
    """Runs ingests inline. One instance per thread; its `client` (and `client.limiter`) may be shared.

    `store` and `encoder` (the model that embeds the papers it stores) come together, or neither: then the
    library is opened for writing on first use.
    """

    def __init__(
        self,
        settings: Settings,
        store: PaperStore | None = None,
        encoder: DocumentEncoder | None = None,
        client: EntrezClient | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        if (store is None) != (encoder is None):
            raise ValueError("Ingestor: pass both a store and the encoder that embeds its papers, or neither")
        self.settings = settings
        self.client = client or EntrezClient(settings, limiter=limiter)
        self.resolver = IdResolver(settings, self.client)
        self.fetcher = Fetcher(settings, self.client)
        self._store = store
        self._encoder = encoder
        self._status_store: PaperStore | None = None
        self.chunker = Chunker(settings)  # the tokenizer loads on the first article
        self._stored: dict[str, IngestOutcome] = {}  # pmcid -> outcome of this call: asked twice, stored once
        self._in_flight: set[str] = set()  # paper ids marked `ingesting` and not yet given a final status

    # --- collaborators, built on first use ---------------------------------------------------------------
    @property
    def store(self) -> PaperStore:
        return self._writer()[0]

    def _writer(self) -> tuple[PaperStore, DocumentEncoder]:
        """The store papers go to and the encoder of their vectors (loads the model on first use)."""
        if self._store is None or self._encoder is None:
            library = open_library(self.settings, writable=True)
            self._store, self._encoder = library.store, library.embedder
        return self._store, self._encoder

    def _reader(self) -> PaperStore:
        """The store, without loading the embedding model: for statuses and for what is stored already."""
        if self._store is not None:
            return self._store
        if self._status_store is None:
            self._status_store = open_store(self.settings)
        return self._status_store

    def _record_status(self, paper_id: str, status: IngestState, reason: str | None) -> None:
        """Best effort: note an id's state in the store's ingest status, which the service reads.

        `ingesting` before the work, `failed` / `not-found` after it (a stored paper's status is written by
        `put_paper` in the same transaction). No model load is needed for this.
        """
        if status in BUSY:
            self._in_flight.add(paper_id)
        else:
            self._in_flight.discard(paper_id)
        try:
            self._reader().set_status(paper_id, status, reason)
        except Exception as exc:  # the outcome is what matters; the status table is a convenience
            log.warning("could not record status of %s: %s", paper_id, exc)

    def close(self) -> None:
        self.client.close()
        for store in (self._store, self._status_store):
            if store is not None:
                store.close()

    # --- ids ---------------------------------------------------------------------------------------------
    def ingest_ids(
        self, ids: Iterable[str], refresh: bool = False, progress: Progress | None = None
    ) -> list[IngestOutcome]:
        """Resolve, fetch and store each id; one outcome per requested id, in the order given."""
        requested = list(ids)
        resolutions = self.resolver.resolve_many(requested)
        by_pmcid: dict[str, list[Resolution]] = {}
        done: dict[str, IngestOutcome] = {}  # requested text -> outcome
        for text in dict.fromkeys(requested):
            resolution = resolutions[text]
            if resolution.ok and resolution.pmcid:
                by_pmcid.setdefault(resolution.pmcid, []).append(resolution)
            else:
                done[text] = self._unresolved(resolution)
                if progress:
                    progress(done[text])

        def on_result(result: FetchResult) -> None:
            for resolution in by_pmcid.get(result.pmcid, []):
                done[resolution.requested] = self._fetched(resolution, result, refresh)
                if progress:
                    progress(done[resolution.requested])

        self._stored = {}
        if not refresh:
            for pmcid in list(by_pmcid):
                if (kept := self._kept_local_copy(pmcid)) is not None:
                    self._record_status(pmcid, kept.status, None)  # a job marked it `queued`: it is not
                    for resolution in by_pmcid.pop(pmcid):
                        text = resolution.requested
                        done[text] = kept.model_copy(update={"requested": text})
                        if progress:
                            progress(done[text])
        # What the service reads: while a paper is `ingesting`, /ask and DELETE on it answer 409.
        for pmcid in by_pmcid:
            self._record_status(pmcid, Status.INGESTING, None)
        try:
            self.fetcher.fetch_many(list(by_pmcid), refresh=refresh, on_result=on_result)
        except BaseException as exc:
            self._fail_in_flight(exc)
            raise
        for pmcid in list(self._in_flight):  # defensive: the fetcher answers every id
            self._record_status(pmcid, Status.FAILED, "no fetch result")
        outcomes = []
        for text in requested:
            outcome = done.get(text)
            if outcome is None:  # defensive: nothing requested may vanish
                outcome = IngestOutcome(requested=text, status=Status.FAILED, reason="no fetch result")
            outcomes.append(outcome.model_copy(update={"requested": text}))
        return outcomes

    def _stored_spelling(self, paper_id: str) -> str:
        """The id a paper is already stored under when the DOI `paper_id` names it otherwise: the DOI in
        another case (DOIs are case-insensitive, so `10.1/ABC` and `10.1/abc` are one paper: stored twice, one
        copy would shadow the other's id and could no longer be read or deleted), or the PMCID of the stored
        paper that carries this DOI (one paper, one record, under its canonical id)."""
        if canonical_pmcid(paper_id):
            return paper_id
        try:
            stored = self._reader().resolve_alias(paper_id)
        except Exception as exc:  # unreadable store: the write will say what is wrong
            log.warning("could not look up %s: %s", paper_id, exc)
            return paper_id
        if stored is None:
            return paper_id
        same_doi = alias_key(stored) == alias_key(paper_id)
        return stored if same_doi or canonical_pmcid(stored) == stored else paper_id

    def _doi_copy(self, paper_id: str, doi: str | None) -> PaperRecord | None:
        """The paper stored under `doi` itself (a file without PMCID), which storing the PMCID `paper_id` with
        that DOI replaces (`index.store.supersede_doi_copy`); None when there is none."""
        key = doi_copy_alias(paper_id, doi) if doi else None
        if doi is None or key is None:
            return None
        try:
            stored = self._reader().resolve_alias("doi:" + doi)
            if stored is None or not is_doi_copy(stored, paper_id, key):
                return None
            return self._reader().get_paper(stored)
        except Exception as exc:  # an unreadable store: the write will say what is wrong
            log.warning("could not look up %s: %s", doi, exc)
            return None

    def _kept_local_copy(self, pmcid: str) -> IngestOutcome | None:
        """The outcome for a paper stored from a file or an upload, which an ingest by id without refresh
        keeps: there is no raw XML cached to re-read, and fetching PMC's copy would replace the one the user
        gave (and take the paper offline while NCBI is slow or out of reach). None for anything else."""
        try:
            record = self._reader().get_paper(pmcid)
        except Exception as exc:  # an unreadable store: fetch as usual, the write will say what is wrong
            log.warning("could not read stored %s: %s", pmcid, exc)
            return None
        if record is None or not _user_copy(record):
            return None
        chunks = len(self._reader().get_chunks(pmcid))
        return IngestOutcome(
            requested=pmcid, paper_id=pmcid, status=record.status, reason=_kept_reason(record),
            title=record.title, chunks=chunks, source="library",
        )

    def _moved_doi_copy(self, requested: str, pmcid: str, article: etree._Element) -> IngestOutcome | None:
        """Without refresh, a copy the user gave of the fetched paper, stored under its DOI (the file carried
        no PMCID), is kept as `_kept_local_copy` keeps one under the PMCID, and moves to the PMCID, the
        paper's canonical id: its text and vectors as they are, the DOI naming it still. None when the
        library holds no such copy."""
        doi_copy = self._doi_copy(pmcid, article_doi(article))
        if doi_copy is None or not _user_copy(doi_copy) or doi_copy.chunking is None:
            return None
        try:
            store, encoder = self._writer()
            record, chunks = rekeyed(doi_copy, store.get_chunks(doi_copy.paper_id), pmcid, doi_copy.chunking)
            store.put_paper(record, chunks, encoder)  # replaces the DOI's copy; vectors come from it
            self._in_flight.discard(pmcid)
        except Exception as exc:
            log.exception("moving %s to %s failed", doi_copy.paper_id, pmcid)
            reason = f"store failed: {exc}"
            self._record_status(pmcid, Status.FAILED, reason)
            return IngestOutcome(requested=requested, paper_id=pmcid, status=Status.FAILED, reason=reason)
        reason = f"{_kept_reason(doi_copy)} (stored under its DOI {doi_copy.paper_id} until now)"
        return IngestOutcome(
            requested=requested, paper_id=pmcid, status=record.status, reason=reason, title=record.title,
            chunks=len(chunks), source="library",
        )

    def _fail_in_flight(self, exc: BaseException) -> None:
        """An exception (or Ctrl-C) stops the run: a paper left `ingesting` would refuse questions until a
        re-run, so record that it failed."""
        for paper_id in list(self._in_flight):
            self._record_status(paper_id, Status.FAILED, f"interrupted: {type(exc).__name__}: {exc}")

    def _unresolved(self, resolution: Resolution) -> IngestOutcome:
        # `ok` without a pmcid cannot happen; failed, defensively.
        status = Status.FAILED if resolution.ok else Status(resolution.status)
        return IngestOutcome(requested=resolution.requested, status=status, reason=resolution.error)

    def _fetched(self, resolution: Resolution, result: FetchResult, refresh: bool) -> IngestOutcome:
        pmcid = result.pmcid
        if pmcid in self._stored:
            return self._stored[pmcid].model_copy(update={"requested": resolution.requested})
        base = {"requested": resolution.requested, "paper_id": pmcid}
        if result.status == Status.NOT_FOUND:
            reason = result.reason or f"{pmcid} is not in PMC"
            if resolution.paper_id is not None and (hint := not_found_hint(resolution.paper_id)):
                reason = f"{reason} ({hint})"
            outcome = IngestOutcome(**base, status=Status.NOT_FOUND, reason=reason)
            self._record_status(pmcid, Status.NOT_FOUND, reason)
        elif result.status == Status.FAILED or result.article is None:
            outcome = IngestOutcome(**base, status=Status.FAILED, reason=result.reason or "fetch failed")
            self._record_status(pmcid, Status.FAILED, outcome.reason)
        else:
            source = "cache" if result.from_cache else "efetch"
            moved = None if refresh else self._moved_doi_copy(resolution.requested, pmcid, result.article)
            outcome = moved or self._store_article(
                resolution.requested, pmcid, result.article, source, result.reason
            )
        self._stored[pmcid] = outcome
        return outcome

    # --- one article -------------------------------------------------------------------------------------
    def _store_article(
        self, requested: str, paper_id: str, article: etree._Element, source: str, reason: str | None
    ) -> IngestOutcome:
        try:  # the one gate of every id a paper is stored under (a file's own DOI included)
            check_storable_id(paper_id)
        except InvalidPaperId as exc:
            return IngestOutcome(requested=requested, status=Status.INVALID, reason=str(exc), source=source)
        paper_id = self._stored_spelling(paper_id)
        base = {"requested": requested, "paper_id": paper_id, "source": source}
        self._record_status(paper_id, Status.INGESTING, None)  # put_paper (or a failure) supersedes it
        try:
            paper = parse_article(article)
        except Exception as exc:
            log.exception("parsing %s failed", paper_id)
            self._record_status(paper_id, Status.FAILED, f"parse failed: {exc}")
            return IngestOutcome(**base, status=Status.FAILED, reason=f"parse failed: {exc}")
        try:
            record, chunks = self.chunker.chunk(paper, paper_id, "efetch" if source == "cache" else source)
            store, encoder = self._writer()
            full = self._stored_full_text(store, record) if record.status == Status.NO_FULL_TEXT else None
            if full is not None:
                # A copy without body (a stub upload, a file cut short, a withdrawn PMC text) must not
                # replace the full text a researcher already asks questions of: it fails like any re-ingest.
                reason = f"{reason or NO_BODY}; the full text already stored under {full} is kept"
                self._record_status(paper_id, Status.FAILED, reason)
                return IngestOutcome(**base, status=Status.FAILED, reason=reason, title=paper.title)
            store.put_paper(record, chunks, encoder)
            self._in_flight.discard(paper_id)  # put_paper wrote the final status with the paper
        except Exception as exc:
            log.exception("storing %s failed", paper_id)
            self._record_status(paper_id, Status.FAILED, f"chunk/store failed: {exc}")
            return IngestOutcome(
                **base, status=Status.FAILED, reason=f"chunk/store failed: {exc}", title=paper.title
            )
        status: OutcomeStatus = record.status
        if status == Status.NO_FULL_TEXT and not reason:
            reason = NO_BODY
        return IngestOutcome(
            **base,
            status=status,
            reason=reason if status != Status.INGESTED else None,
            title=paper.title,
            chunks=len(chunks),
        )

    def _stored_full_text(self, store: PaperStore, record: PaperRecord) -> str | None:
        """The id of a stored full text that writing `record` would replace: its own id's, or that of its
        copy under its DOI (`_doi_copy`); None when neither holds one."""
        if _holds_full_text(store, record.paper_id):
            return record.paper_id
        doi_copy = self._doi_copy(record.paper_id, record.doi)
        return doi_copy.paper_id if doi_copy is not None and doi_copy.status == Status.INGESTED else None

    # --- local files -------------------------------------------------------------------------------------
    def ingest_files(
        self,
        paths: Sequence[Path | str],
        id_override: str | Sequence[str | None] | None = None,
        progress: Progress | None = None,
    ) -> list[IngestOutcome]:
        """Ingest JATS files, directories (recursive) and .tar.gz packages; one outcome per document.

        `id_override` is one id for a single path, or one per path (None where the file's own id serves).
        Without it the id comes from the article: its PMCID, else its DOI (`pmcqa.core.ids.own_paper_id`).
        """
        overrides = _overrides(paths, id_override)
        outcomes: list[IngestOutcome] = []
        try:
            for path, override in zip(paths, overrides, strict=True):
                for document in _documents(Path(path), self.settings.max_article_bytes):
                    document.override = override
                    for outcome in self._ingest_document(document):
                        outcomes.append(outcome)
                        if progress:
                            progress(outcome)
        except BaseException as exc:
            self._fail_in_flight(exc)
            raise
        return outcomes

    def ingest_bytes(self, data: bytes, label: str, id_override: str | None = None) -> list[IngestOutcome]:
        """Ingest one JATS document held in memory (an upload); `label` names it in the outcomes and as the
        stored paper's source, where a file's path would."""
        if len(data) > self.settings.max_article_bytes:
            reason = _too_large(len(data), self.settings.max_article_bytes)
            return [IngestOutcome(requested=label, status=Status.INVALID, reason=reason)]
        try:
            return self._ingest_document(_Document(label, data=data, override=id_override))
        except BaseException as exc:
            self._fail_in_flight(exc)
            raise

    def _ingest_document(self, document: _Document) -> list[IngestOutcome]:
        if document.error is not None:
            return [document.error]
        label = document.label
        try:
            root = parse_xml(document.data or b"")
            articles = find_articles(root)
        except (JatsError, ValueError) as exc:
            return [
                IngestOutcome(requested=label, status=Status.INVALID, reason=f"not a JATS article: {exc}")
            ]
        if not articles:
            errors = "; ".join(f"{i}: {m}" if i else m for i, m in articleset_errors(root)) or "no <article>"
            return [
                IngestOutcome(
                    requested=label, status=Status.INVALID, reason=f"no JATS article in file ({errors})"
                )
            ]
        if document.override and len(articles) > 1:
            reason = f"one --id given for a file holding {len(articles)} articles"
            return [IngestOutcome(requested=label, status=Status.INVALID, reason=reason)]
        outcomes = []
        for n, article in enumerate(articles):
            requested = label if len(articles) == 1 else f"{label}#{n + 1}"
            paper_id = document.override or own_paper_id(article_pmcid(article), article_doi(article))
            if paper_id is None:
                outcomes.append(IngestOutcome(requested=requested, status=Status.INVALID, reason=NO_OWN_ID))
                continue
            outcomes.append(self._store_article(requested, paper_id, article, label, None))
        return outcomes


# --- helpers for files -------------------------------------------------------------------------------------
def _overrides(
    paths: Sequence[Path | str], id_override: str | Sequence[str | None] | None
) -> list[str | None]:
    if id_override is None:
        return [None] * len(paths)
    if isinstance(id_override, str):
        if len(paths) != 1:
            raise ValueError("one --id needs exactly one path (or give one --id per path)")
        return [given_paper_id(id_override)]  # InvalidPaperId is the ValueError callers report
    if len(id_override) != len(paths):
        raise ValueError(f"{len(id_override)} ids for {len(paths)} paths: give one --id per path")
    return [given_paper_id(value) if value else None for value in id_override]


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _too_large(size: int, max_bytes: int) -> str:
    return f"{size} bytes is over the {max_bytes}-byte limit of one article (PMCQA_MAX_ARTICLE_BYTES)"


def _documents(path: Path, max_bytes: int) -> Iterator[_Document]:
    """The documents of a path; a file or package member over `max_bytes` is refused without reading it."""
    label = str(path)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and (_is_xml(p.name) or _is_tar(p)))
        if not found:
            yield _Document(
                label,
                error=IngestOutcome(
                    requested=label,
                    status=Status.INVALID,
                    reason="no .xml, .nxml or .tar.gz files in directory",
                ),
            )
        for child in found:
            yield from _documents(child, max_bytes)
        return
    if not path.is_file():
        yield _Document(
            label, error=IngestOutcome(requested=label, status=Status.FAILED, reason="no such file")
        )
        return
    if _is_tar(path):
        yield from _tar_documents(path, max_bytes)
        return
    try:
        size = path.stat().st_size
        if size > max_bytes:
            reason = _too_large(size, max_bytes)
            yield _Document(label, error=IngestOutcome(requested=label, status=Status.INVALID, reason=reason))
            return
        yield _Document(label, data=path.read_bytes())
    except OSError as exc:
        yield _Document(
            label, error=IngestOutcome(requested=label, status=Status.FAILED, reason=f"unreadable: {exc}")
        )


def _is_xml(name: str) -> bool:
    return name.lower().endswith(XML_SUFFIXES)


def _unsafe_member(name: str) -> bool:
    pure = PurePosixPath(name.replace("\\", "/"))
    return pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":")


def _tar_documents(path: Path, max_bytes: int) -> Iterator[_Document]:
    """Articles of a package, read in memory (nothing is extracted to disk, so no path can escape), one
    member at a time: each member's declared size is checked before it is read."""
    label = str(path)
    try:
        with tarfile.open(path, "r:*") as archive:
            for count, member in enumerate(archive, start=1):
                if count > MAX_PACKAGE_MEMBERS:
                    reason = f"bad package: more than {MAX_PACKAGE_MEMBERS} members; the rest is not read"
                    outcome = IngestOutcome(requested=label, status=Status.FAILED, reason=reason)
                    yield _Document(label, error=outcome)
                    return
                document = _tar_member(archive, member, f"{path}::{member.name}", max_bytes)
                if document is not None:
                    yield document
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:  # gzip, xz: their own
        yield _Document(
            label, error=IngestOutcome(requested=label, status=Status.FAILED, reason=f"bad package: {exc}")
        )


def _tar_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, label: str, max_bytes: int
) -> _Document | None:
    if member.isdir():
        return None  # structure, not content
    if _unsafe_member(member.name):  # never read, and reported as a problem (not merely skipped)
        reason = "unsafe member path (absolute or '..')"
        return _Document(label, error=IngestOutcome(requested=label, status=Status.INVALID, reason=reason))
    why = _skip_reason(member)
    if why is not None:
        return _Document(
            label, error=IngestOutcome(requested=label, status=Status.INVALID, reason=why, skipped=True)
        )
    if member.size > max_bytes:  # the declared size, from the member's header: nothing is read
        reason = _too_large(member.size, max_bytes)
        return _Document(label, error=IngestOutcome(requested=label, status=Status.INVALID, reason=reason))
    handle = archive.extractfile(member)
    # tarfile reads at most the declared size, so the check above bounds what is held.
    return _Document(label, data=handle.read() if handle is not None else b"")


def _skip_reason(member: tarfile.TarInfo) -> str | None:
    if not member.isreg():
        return "skipped: not a regular file"
    if not _is_xml(member.name):
        return "skipped: not a JATS file (.xml/.nxml)"
    return None
