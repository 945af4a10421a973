"""efetch replies -> per-PMCID outcomes, and the raw XML cache.

Every "no full text" case of `efetch db=pmc` is HTTP 200, so the payload is classified, never the status (the
JATS facts used — article ids, restriction comment, `<body>` — are `pmcqa.ingest.jats`'s):

* `<article>` children are matched to the requested ids by their article ids — both vintages,
  ``pub-id-type="pmc"`` (digits) and ``pmcid``/``pmcid-ver`` (``PMC…``/``PMC….N``) — never by position;
* an `<article>` with the "does not allow downloading" comment, or without `<body>` → ``no-full-text``;
* `<error id=..>` → ``not-found``;
* a truncated/malformed reply (or one that is not a `<pmc-articleset>`) → the batch is fetched again once,
  then split in halves down to single ids, and an id that still breaks ends ``failed`` with the reason;
* a batch NCBI kept refusing (429/5xx after every try, or a 4xx) is split in halves the same way, so one
  refused request does not fail its neighbours; a batch that could not reach NCBI at all (connection refused,
  timeouts) is not split: its halves could not reach it either, and it ends ``failed``;
* a requested id absent from a well-formed reply → ``failed`` ("not in reply").

Each article's XML (the `<article>` element, comments kept) is written whole to the raw store
(`pmcqa.ingest.raw_store`: ``data_dir/raw/PMC….xml`` by default, or an S3 bucket); later ingests read it from
there unless ``refresh=True``. The parsed article
travels in `FetchResult.article`, so nothing is parsed twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from lxml import etree

from pmcqa.core.ids import canonical_pmcid
from pmcqa.core.settings import Settings
from pmcqa.core.status import FetchStatus, Status
from pmcqa.ingest.entrez import EntrezClient, EntrezError, PermanentHTTPError, RetriesExhausted
from pmcqa.ingest.jats import (
    NO_BODY,
    article_pmcids,
    articleset_errors,
    find_articles,
    has_body,
    is_restricted,
    local,
)
from pmcqa.ingest.raw_store import RawStore, open_raw_store
from pmcqa.ingest.xml import JatsError, parse_xml

log = logging.getLogger(__name__)


class MalformedReply(ValueError):
    """The reply is not a usable `<pmc-articleset>` (truncated, malformed, an HTML/JSON error page...)."""


@dataclass
class FetchResult:
    pmcid: str
    status: FetchStatus
    reason: str | None = None
    xml: bytes | None = None  # the <article> element's bytes (ok / no-full-text), what the raw cache keeps
    from_cache: bool = False
    # The parsed <article> (ok / no-full-text), so the pipeline parses each article once. `fetch_many` hands
    # it to `on_result` and then drops it: a long run holds one batch's trees, not all of them.
    article: etree._Element | None = field(default=None, repr=False, compare=False)


# --- classifying -------------------------------------------------------------------------------------------
def _parse_reply(data: bytes) -> etree._Element:
    try:
        return parse_xml(bytes(data))
    except JatsError as exc:
        raise MalformedReply(str(exc) or "malformed XML") from exc


def classify_article(article: etree._Element) -> tuple[FetchStatus, str | None]:
    if is_restricted(article):
        return Status.NO_FULL_TEXT, "the publisher does not allow downloading the full text in XML form"
    if not has_body(article):
        return Status.NO_FULL_TEXT, NO_BODY
    return Status.SUCCESS, None


def classify_articleset(xml_bytes: bytes, requested: Sequence[str]) -> dict[str, FetchResult]:
    """One `FetchResult` per requested PMCID. Raises `MalformedReply` if the reply cannot be read."""
    root = _parse_reply(xml_bytes)
    if local(root) != "pmc-articleset":
        raise MalformedReply(f"expected <pmc-articleset>, got <{local(root) or root.tag}>")
    wanted = {canonical_pmcid(r) or r for r in requested}
    results: dict[str, FetchResult] = {}
    for article in find_articles(root):
        pmcids = article_pmcids(article)
        if not pmcids & wanted:
            log.warning("efetch returned an article for none of the requested ids: %s", pmcids)
            continue
        status, reason = classify_article(article)
        xml = etree.tostring(article, encoding="utf-8")
        for pmcid in pmcids & wanted:
            results[pmcid] = FetchResult(pmcid, status, reason, xml, article=article)
    for error_id, message in articleset_errors(root):
        pmcid = canonical_pmcid(error_id)
        if pmcid in wanted and pmcid not in results:  # an article for the id wins over an error for it
            results[pmcid] = FetchResult(pmcid, Status.NOT_FOUND, f"{pmcid}: {message or 'not available'}")
    for pmcid in wanted:
        results.setdefault(pmcid, FetchResult(pmcid, Status.FAILED, "not in reply"))
    return results


def classify_cached(pmcid: str, data: bytes) -> FetchResult | None:
    """A cached article re-classified; None when the file is unreadable (then it is fetched again)."""
    try:
        article = _parse_reply(data)
    except MalformedReply:
        return None
    if local(article) != "article" or pmcid not in article_pmcids(article):
        return None
    status, reason = classify_article(article)
    return FetchResult(pmcid, status, reason, data, from_cache=True, article=article)


# --- fetching ----------------------------------------------------------------------------------------------
class Fetcher:
    """Fetch PMCIDs in efetch batches (POST), through the raw cache, classifying every id."""

    def __init__(self, settings: Settings, client: EntrezClient, cache: RawStore | None = None) -> None:
        self.settings = settings
        self.client = client
        self.cache = cache or open_raw_store(settings)

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
                results[pmcid] = self._deliver(cached, on_result)
            else:
                to_fetch.append(pmcid)
        size = max(1, self.settings.efetch_batch_size)
        for start in range(0, len(to_fetch), size):
            batch_results = self._fetch_batch(to_fetch[start : start + size], retry=True)
            for pmcid, result in batch_results.items():
                if result.status in (Status.SUCCESS, Status.NO_FULL_TEXT) and result.xml is not None:
                    self.cache.put(result.pmcid, result.xml)
                results[pmcid] = self._deliver(result, on_result)
        return results

    @staticmethod
    def _deliver(result: FetchResult, on_result: Callable[[FetchResult], None] | None) -> FetchResult:
        if on_result is None:
            return result
        on_result(result)
        return replace(result, article=None)  # consumed: let the parsed tree go

    def _from_cache(self, pmcid: str) -> FetchResult | None:
        data = self.cache.get(pmcid)
        return classify_cached(pmcid, data) if data is not None else None

    def _fetch_batch(self, batch: list[str], retry: bool) -> dict[str, FetchResult]:
        try:
            reply = self.client.efetch_pmc(batch)
        except EntrezError as exc:  # the transport already retried what was worth retrying
            if len(batch) > 1 and _ncbi_answered(exc):
                log.warning("efetch of %d ids refused (%s): fetching them in halves", len(batch), exc)
                return self._halves(batch)
            return {pmcid: FetchResult(pmcid, Status.FAILED, f"efetch failed: {exc}") for pmcid in batch}
        try:
            return classify_articleset(reply, batch)
        except MalformedReply as exc:
            log.warning("unusable efetch reply for %d ids: %s", len(batch), exc)
            if retry:
                return self._fetch_batch(batch, retry=False)  # one more try of the same batch
            if len(batch) > 1:  # isolate the id that breaks the reply
                return self._halves(batch)
            return {batch[0]: FetchResult(batch[0], Status.FAILED, f"unusable efetch reply: {exc}")}

    def _halves(self, batch: list[str]) -> dict[str, FetchResult]:
        middle = len(batch) // 2
        first, second = batch[:middle], batch[middle:]
        return {**self._fetch_batch(first, retry=True), **self._fetch_batch(second, retry=True)}


def _ncbi_answered(error: EntrezError) -> bool:
    """NCBI replied (an HTTP status) but refused the request: worth retrying a smaller request. A transport
    that never got a reply (refused connection, timeouts) is not: the halves would not get one either."""
    if isinstance(error, PermanentHTTPError):
        return True
    return isinstance(error, RetriesExhausted) and error.last.status is not None
