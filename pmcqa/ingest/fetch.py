"""efetch replies -> per-PMCID outcomes, and the raw XML cache.

Every "no full text" case of `efetch db=pmc` is HTTP 200, so the payload is classified, never the status:

* `<article>` children are matched to the requested ids by their article ids — both vintages,
  ``pub-id-type="pmc"`` (digits) and ``pmcid``/``pmcid-ver`` (``PMC…``/``PMC….N``) — never by position;
* an `<article>` with the "does not allow downloading" comment, or without `<body>` → ``no-full-text``;
* `<error id=..>` → ``not-found``;
* a truncated/malformed reply (or one that is not a `<pmc-articleset>`) → the batch is fetched again once,
  then split in halves down to single ids, and an id that still breaks ends ``failed`` with the reason;
* a requested id absent from a well-formed reply → ``failed`` ("not in reply").

Each article's XML (the `<article>` element, comments kept) is written to ``settings.raw_dir/PMC….xml``
atomically (temp file + rename); later ingests read it from there unless ``refresh=True``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lxml import etree

from pmcqa.core.settings import Settings
from pmcqa.ingest.entrez import EntrezClient, EntrezError
from pmcqa.ingest.xml import JatsError, parse_xml

log = logging.getLogger(__name__)

FetchStatus = Literal["ok", "no-full-text", "not-found", "failed"]
RESTRICTED_MARK = "does not allow downloading"
_PMC_RE = re.compile(r"^(?:PMC)?(\d+)(?:\.\d+)?$", re.IGNORECASE)


class MalformedReply(ValueError):
    """The reply is not a usable `<pmc-articleset>` (truncated, malformed, an HTML/JSON error page...)."""


@dataclass
class FetchResult:
    pmcid: str
    status: FetchStatus
    reason: str | None = None
    xml: bytes | None = None  # the <article> element's bytes (ok / no-full-text)
    from_cache: bool = False


# --- parsing -----------------------------------------------------------------------------------------------
def parse_xml_bytes(data: bytes) -> etree._Element:
    """Safe parse (no network, DTD or entities; comments kept); raises `MalformedReply`."""
    try:
        return parse_xml(bytes(data))
    except JatsError as exc:
        raise MalformedReply(str(exc) or "malformed XML") from exc


def canonical_pmcid(value: str | None) -> str | None:
    """'PMC123', '123', 'PMC123.2' -> 'PMC123'; anything else -> None."""
    if not value:
        return None
    m = _PMC_RE.match(value.strip())
    return f"PMC{int(m.group(1))}" if m else None


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname if isinstance(element.tag, str) else ""


def article_pmcids(article: etree._Element) -> set[str]:
    """Every PMCID an `<article>` names for itself (both id vintages), canonical form."""
    found: set[str] = set()
    meta = next((el for el in article.iter("{*}article-meta")), None)
    if meta is None:
        return found
    for el in meta.iterchildren("{*}article-id"):
        kind = (el.get("pub-id-type") or "").lower()
        if kind in ("pmc", "pmcid", "pmcid-ver") and (pmcid := canonical_pmcid(el.text)):
            found.add(pmcid)
    return found


def article_doi(article: etree._Element) -> str | None:
    meta = next((el for el in article.iter("{*}article-meta")), None)
    if meta is None:
        return None
    for el in meta.iterchildren("{*}article-id"):
        if (el.get("pub-id-type") or "").lower() == "doi" and el.text and el.text.strip():
            return el.text.strip()
    return None


def is_restricted(article: etree._Element) -> bool:
    return any(
        isinstance(node, etree._Comment) and RESTRICTED_MARK in (node.text or "")
        for node in article.iterchildren()
    )


def has_body(article: etree._Element) -> bool:
    return any(_local(child) == "body" for child in article.iterchildren())


def classify_article(article: etree._Element) -> tuple[FetchStatus, str | None]:
    if is_restricted(article):
        return "no-full-text", "the publisher does not allow downloading the full text in XML form"
    if not has_body(article):
        return "no-full-text", "no <body> in the article (front matter only)"
    return "ok", None


def classify_articleset(xml_bytes: bytes, requested: Sequence[str]) -> dict[str, FetchResult]:
    """One `FetchResult` per requested PMCID. Raises `MalformedReply` if the reply cannot be read."""
    root = parse_xml_bytes(xml_bytes)
    if _local(root) != "pmc-articleset":
        raise MalformedReply(f"expected <pmc-articleset>, got <{_local(root) or root.tag}>")
    wanted = {canonical_pmcid(r) or r: r for r in requested}
    results: dict[str, FetchResult] = {}
    for child in root.iterchildren():
        name = _local(child)
        if name == "article":
            matches = article_pmcids(child) & wanted.keys()
            if not matches:
                log.warning(
                    "efetch returned an article for none of the requested ids: %s", article_pmcids(child)
                )
            for pmcid in matches:
                status, reason = classify_article(child)
                results[pmcid] = FetchResult(pmcid, status, reason, etree.tostring(child, encoding="utf-8"))
        elif name == "error":
            pmcid = canonical_pmcid(child.get("id"))
            if pmcid in wanted and pmcid not in results:
                text = (child.text or "").strip() or "not available"
                results[pmcid] = FetchResult(pmcid, "not-found", f"{pmcid}: {text}")
    for pmcid in wanted:
        results.setdefault(pmcid, FetchResult(pmcid, "failed", "not in reply"))
    return results


# --- raw cache ---------------------------------------------------------------------------------------------
class RawCache:
    """One file per PMCID under `raw_dir`, written atomically so a crash never leaves half a file."""

    def __init__(self, raw_dir: Path) -> None:
        self.raw_dir = raw_dir

    def path(self, pmcid: str) -> Path:
        return self.raw_dir / f"{pmcid}.xml"

    def get(self, pmcid: str) -> bytes | None:
        try:
            return self.path(pmcid).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, pmcid: str, data: bytes) -> Path:
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        target = self.path(pmcid)
        fd, tmp = tempfile.mkstemp(dir=self.raw_dir, prefix=f".{pmcid}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)  # atomic on POSIX: readers see the old file or the new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def delete(self, pmcid: str) -> None:
        self.path(pmcid).unlink(missing_ok=True)


def classify_cached(pmcid: str, data: bytes) -> FetchResult | None:
    """A cached article re-classified; None when the file is unreadable (then it is fetched again)."""
    try:
        article = parse_xml_bytes(data)
    except MalformedReply:
        return None
    if _local(article) != "article" or pmcid not in article_pmcids(article):
        return None
    status, reason = classify_article(article)
    return FetchResult(pmcid, status, reason, data, from_cache=True)


# --- fetching ----------------------------------------------------------------------------------------------
class Fetcher:
    """Fetch PMCIDs in efetch batches (POST), through the raw cache, classifying every id."""

    def __init__(self, settings: Settings, client: EntrezClient, cache: RawCache | None = None) -> None:
        self.settings = settings
        self.client = client
        self.cache = cache or RawCache(settings.raw_dir)

    def fetch_many(
        self,
        pmcids: Iterable[str],
        refresh: bool = False,
        on_result: Callable[[FetchResult], None] | None = None,
    ) -> dict[str, FetchResult]:
        results: dict[str, FetchResult] = {}
        to_fetch: list[str] = []
        for pmcid in dict.fromkeys(pmcids):
            cached = None if refresh else self._from_cache(pmcid)
            if cached is not None:
                results[pmcid] = cached
                if on_result:
                    on_result(cached)
            else:
                to_fetch.append(pmcid)
        size = max(1, self.settings.efetch_batch_size)
        for start in range(0, len(to_fetch), size):
            batch_results = self._fetch_batch(to_fetch[start : start + size], retry=True)
            for result in batch_results.values():
                if result.status in ("ok", "no-full-text") and result.xml is not None:
                    self.cache.put(result.pmcid, result.xml)
                if on_result:
                    on_result(result)
            results.update(batch_results)
        return results

    def _from_cache(self, pmcid: str) -> FetchResult | None:
        data = self.cache.get(pmcid)
        return classify_cached(pmcid, data) if data is not None else None

    def _fetch_batch(self, batch: list[str], retry: bool) -> dict[str, FetchResult]:
        try:
            reply = self.client.efetch_pmc(batch)
        except EntrezError as exc:  # the transport already retried what was worth retrying
            return {pmcid: FetchResult(pmcid, "failed", f"efetch failed: {exc}") for pmcid in batch}
        try:
            return classify_articleset(reply, batch)
        except MalformedReply as exc:
            log.warning("unusable efetch reply for %d ids: %s", len(batch), exc)
            if retry:
                return self._fetch_batch(batch, retry=False)  # one more try of the same batch
            if len(batch) > 1:  # isolate the id that breaks the reply
                middle = len(batch) // 2
                return {
                    **self._fetch_batch(batch[:middle], retry=True),
                    **self._fetch_batch(batch[middle:], retry=True),
                }
            return {batch[0]: FetchResult(batch[0], "failed", f"unusable efetch reply: {exc}")}
