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

The collaborators (`ingest.jats`, `ingest.chunking`, `index.store`, `index.embedding`) are imported lazily, so
resolving and fetching work without them and `pmcqa --help` stays light.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from pmcqa.core.settings import Settings
from pmcqa.ingest.entrez import EntrezClient, RateLimiter
from pmcqa.ingest.fetch import Fetcher, FetchResult, article_doi, article_pmcids
from pmcqa.ingest.ids import IdResolver, InvalidPaperId, Resolution, not_found_hint, parse_id

if TYPE_CHECKING:
    from lxml import etree

log = logging.getLogger(__name__)

OutcomeStatus = Literal["ingested", "no-full-text", "not-found", "failed", "invalid"]
OK_STATUSES: frozenset[str] = frozenset({"ingested", "no-full-text"})
XML_SUFFIXES = (".xml", ".nxml")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Members a package may hold: PMC packages hold tens; a crafted one of millions of empty members would cost
# an outcome (and a TarInfo) each.
MAX_PACKAGE_MEMBERS = 10_000

Progress = Callable[["IngestOutcome"], None]


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
        return self.status in OK_STATUSES or self.skipped


@dataclass
class _Document:
    label: str
    data: bytes | None = None
    error: IngestOutcome | None = None
    override: str | None = None


class Ingestor:
    """Runs ingests inline. One instance per thread; its `client` (and `client.limiter`) may be shared."""

    def __init__(
        self,
        settings: Settings,
        store: Any = None,
        client: EntrezClient | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.client = client or EntrezClient(settings, limiter=limiter)
        self.resolver = IdResolver(settings, self.client)
        self.fetcher = Fetcher(settings, self.client)
        self._store = store
        self._status_store: Any = None
        self._chunker: tuple[Any, Any] | None = None
        self._stored: dict[str, IngestOutcome] = {}  # pmcid -> outcome of this call: asked twice, stored once

    # --- collaborators, built on first use ---------------------------------------------------------------
    @property
    def store(self) -> Any:
        if self._store is None:
            from pmcqa.index.embedding import Embedder
            from pmcqa.index.store import Store

            self._store = Store(self.settings, Embedder(self.settings))
        return self._store

    def _record_status(self, paper_id: str, status: str, reason: str | None) -> None:
        """Best effort: note a failed/not-found id in the store's ingest status (no model load needed)."""
        try:
            if self._store is not None:
                self._store.set_status(paper_id, status, reason)
                return
            if self._status_store is None:
                from pmcqa.index.store import Store

                self._status_store = Store(self.settings, None)
            self._status_store.set_status(paper_id, status, reason)
        except Exception as exc:  # the outcome is what matters; the status table is a convenience
            log.warning("could not record status of %s: %s", paper_id, exc)

    def _chunking(self) -> tuple[Any, Any]:
        if self._chunker is None:
            from pmcqa.ingest.chunking import chunking_params, load_token_counter

            self._chunker = (load_token_counter(self.settings), chunking_params(self.settings))
        return self._chunker

    def close(self) -> None:
        self.client.close()
        for store in (self._store, self._status_store):
            close = getattr(store, "close", None)
            if close is not None:
                close()

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
                done[resolution.requested] = self._fetched(resolution, result)
                if progress:
                    progress(done[resolution.requested])

        self._stored = {}
        self.fetcher.fetch_many(list(by_pmcid), refresh=refresh, on_result=on_result)
        outcomes = []
        for text in requested:
            outcome = done.get(text)
            if outcome is None:  # defensive: the fetcher answers every id, but nothing may vanish
                outcome = IngestOutcome(requested=text, status="failed", reason="no fetch result")
            outcomes.append(outcome.model_copy(update={"requested": text}))
        return outcomes

    def _unresolved(self, resolution: Resolution) -> IngestOutcome:
        status = "failed" if resolution.status == "ok" else resolution.status  # ok without a pmcid: defensive
        return IngestOutcome(requested=resolution.requested, status=status, reason=resolution.error)

    def _fetched(self, resolution: Resolution, result: FetchResult) -> IngestOutcome:
        pmcid = result.pmcid
        if pmcid in self._stored:
            return self._stored[pmcid].model_copy(update={"requested": resolution.requested})
        base = {"requested": resolution.requested, "paper_id": pmcid}
        if result.status == "not-found":
            reason = result.reason or f"{pmcid} is not in PMC"
            if resolution.paper_id is not None and (hint := not_found_hint(resolution.paper_id)):
                reason = f"{reason} ({hint})"
            outcome = IngestOutcome(**base, status="not-found", reason=reason)
            self._record_status(pmcid, "not-found", reason)
        elif result.status == "failed" or result.xml is None:
            outcome = IngestOutcome(**base, status="failed", reason=result.reason or "fetch failed")
            self._record_status(pmcid, "failed", outcome.reason)
        else:
            source = "cache" if result.from_cache else "efetch"
            outcome = self._store_article(resolution.requested, pmcid, result.xml, source, result.reason)
        self._stored[pmcid] = outcome
        return outcome

    # --- one article -------------------------------------------------------------------------------------
    def _store_article(
        self, requested: str, paper_id: str, xml: bytes | etree._Element, source: str, reason: str | None
    ) -> IngestOutcome:
        base = {"requested": requested, "paper_id": paper_id, "source": source}
        try:
            from pmcqa.ingest.jats import parse_article
            from pmcqa.ingest.xml import parse_xml

            article = parse_xml(xml) if isinstance(xml, bytes) else xml
            paper = parse_article(article)
        except Exception as exc:
            log.exception("parsing %s failed", paper_id)
            self._record_status(paper_id, "failed", f"parse failed: {exc}")
            return IngestOutcome(**base, status="failed", reason=f"parse failed: {exc}")
        try:
            from pmcqa.ingest.chunking import chunk_paper, to_record

            counter, params = self._chunking()
            chunks = chunk_paper(paper, paper_id, counter, params)
            record = to_record(paper, paper_id, params, source="efetch" if source == "cache" else source)
            self.store.put_paper(record, chunks)
        except Exception as exc:
            log.exception("storing %s failed", paper_id)
            self._record_status(paper_id, "failed", f"chunk/store failed: {exc}")
            return IngestOutcome(
                **base, status="failed", reason=f"chunk/store failed: {exc}", title=paper.title
            )
        status: OutcomeStatus = "ingested" if record.status == "ingested" else "no-full-text"
        if status == "no-full-text" and not reason:
            reason = "the article has no body text (front matter only)"
        return IngestOutcome(
            **base,
            status=status,
            reason=reason if status != "ingested" else None,
            title=paper.title,
            chunks=len(chunks),
        )

    # --- local files -------------------------------------------------------------------------------------
    def ingest_files(
        self,
        paths: Sequence[Path | str],
        id_override: str | Sequence[str | None] | None = None,
        progress: Progress | None = None,
    ) -> list[IngestOutcome]:
        """Ingest JATS files, directories (recursive) and .tar.gz packages; one outcome per document.

        `id_override` is one id for a single path, or one per path (None where the file's own id serves).
        Without it the id comes from the article (pmcid, pmc, else DOI).
        """
        overrides = _overrides(paths, id_override)
        outcomes: list[IngestOutcome] = []
        for path, override in zip(paths, overrides, strict=True):
            for document in _documents(Path(path), self.settings.max_article_bytes):
                document.override = override
                for outcome in self._ingest_document(document):
                    outcomes.append(outcome)
                    if progress:
                        progress(outcome)
        return outcomes

    def _ingest_document(self, document: _Document) -> list[IngestOutcome]:
        if document.error is not None:
            return [document.error]
        from pmcqa.ingest.jats import JatsError, articleset_errors, find_articles
        from pmcqa.ingest.xml import parse_xml

        label = document.label
        try:
            root = parse_xml(document.data or b"")
            articles = find_articles(root)
        except (JatsError, ValueError) as exc:
            return [IngestOutcome(requested=label, status="invalid", reason=f"not a JATS article: {exc}")]
        if not articles:
            errors = "; ".join(f"{i}: {m}" if i else m for i, m in articleset_errors(root)) or "no <article>"
            return [
                IngestOutcome(requested=label, status="invalid", reason=f"no JATS article in file ({errors})")
            ]
        if document.override and len(articles) > 1:
            reason = f"one --id given for a file holding {len(articles)} articles"
            return [IngestOutcome(requested=label, status="invalid", reason=reason)]
        outcomes = []
        for n, article in enumerate(articles):
            requested = label if len(articles) == 1 else f"{label}#{n + 1}"
            paper_id = document.override or _file_paper_id(article)
            if paper_id is None:
                reason = "the file carries no PMCID or DOI; give one with --id"
                outcomes.append(IngestOutcome(requested=requested, status="invalid", reason=reason))
                continue
            outcomes.append(self._store_article(requested, paper_id, article, label, None))
        return outcomes


# --- helpers for files -------------------------------------------------------------------------------------
def _file_paper_id(article: etree._Element) -> str | None:
    pmcids = sorted(article_pmcids(article))
    return pmcids[0] if pmcids else article_doi(article)


def _canonical_override(value: str) -> str:
    try:
        pid = parse_id(value)
    except InvalidPaperId as exc:
        raise ValueError(f"--id {value!r}: {exc}") from exc
    if pid.kind == "pmid":
        raise ValueError(f"--id {value!r}: a paper id must be a PMCID or DOI, not a PMID")
    return pid.value


def _overrides(
    paths: Sequence[Path | str], id_override: str | Sequence[str | None] | None
) -> list[str | None]:
    if id_override is None:
        return [None] * len(paths)
    if isinstance(id_override, str):
        if len(paths) != 1:
            raise ValueError("one --id needs exactly one path (or give one --id per path)")
        return [_canonical_override(id_override)]
    if len(id_override) != len(paths):
        raise ValueError(f"{len(id_override)} ids for {len(paths)} paths: give one --id per path")
    return [_canonical_override(value) if value else None for value in id_override]


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
                    requested=label, status="invalid", reason="no .xml, .nxml or .tar.gz files in directory"
                ),
            )
        for child in found:
            yield from _documents(child, max_bytes)
        return
    if not path.is_file():
        yield _Document(label, error=IngestOutcome(requested=label, status="failed", reason="no such file"))
        return
    if _is_tar(path):
        yield from _tar_documents(path, max_bytes)
        return
    try:
        size = path.stat().st_size
        if size > max_bytes:
            reason = _too_large(size, max_bytes)
            yield _Document(label, error=IngestOutcome(requested=label, status="invalid", reason=reason))
            return
        yield _Document(label, data=path.read_bytes())
    except OSError as exc:
        yield _Document(
            label, error=IngestOutcome(requested=label, status="failed", reason=f"unreadable: {exc}")
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
                    outcome = IngestOutcome(requested=label, status="failed", reason=reason)
                    yield _Document(label, error=outcome)
                    return
                document = _tar_member(archive, member, f"{path}::{member.name}", max_bytes)
                if document is not None:
                    yield document
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield _Document(
            label, error=IngestOutcome(requested=label, status="failed", reason=f"bad package: {exc}")
        )


def _tar_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, label: str, max_bytes: int
) -> _Document | None:
    if member.isdir():
        return None  # structure, not content
    if _unsafe_member(member.name):  # never read, and reported as a problem (not merely skipped)
        reason = "unsafe member path (absolute or '..')"
        return _Document(label, error=IngestOutcome(requested=label, status="invalid", reason=reason))
    why = _skip_reason(member)
    if why is not None:
        return _Document(
            label, error=IngestOutcome(requested=label, status="invalid", reason=why, skipped=True)
        )
    if member.size > max_bytes:  # the declared size, from the member's header: nothing is read
        reason = _too_large(member.size, max_bytes)
        return _Document(label, error=IngestOutcome(requested=label, status="invalid", reason=reason))
    handle = archive.extractfile(member)
    # tarfile reads at most the declared size, so the check above bounds what is held.
    return _Document(label, data=handle.read() if handle is not None else b"")


def _skip_reason(member: tarfile.TarInfo) -> str | None:
    if not member.isreg():
        return "skipped: not a regular file"
    if not _is_xml(member.name):
        return "skipped: not a JATS file (.xml/.nxml)"
    return None
