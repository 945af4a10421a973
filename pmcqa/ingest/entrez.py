"""NCBI transport: Bio.Entrez (efetch db=pmc, elink) and the PMC ID Converter, behind one rate limiter.

Bio.Entrez 1.88 has no base-URL setting, no timeout, an unlocked per-process limiter and a retry loop that
does not sleep on HTTP errors (eutils-and-jats.md §3). We keep Bio.Entrez for building requests and wrap it:

* **Base URL and timeout** — the supported test seam `Bio.Entrez.urlopen` is replaced (once, process-wide) by
  `_seam_urlopen`, which rewrites the request to `settings.eutils_url` + the same cgi name and calls the real
  `urlopen` with `settings.ncbi_timeout_s`. The per-call context travels in a thread-local, so calls made
  outside `EntrezClient` pass through untouched.
* **POST for efetch batches** — `Bio.Entrez.efetch` has no `post` argument; `_build_request` only POSTs at
  ≥200 ids or >1000 characters of parameters. Rather than calling that private function, the seam turns an
  efetch GET into a POST with the same form-encoded parameters (what `_build_request(post=True)` would build).
* **One limiter** — `RateLimiter.acquire()` is called before every try (efetch, elink, idconv). A client
  built without one takes `ncbi_limiter(settings)`: with `PMCQA_REDIS_URL` the Redis window that every
  process on every host shares (workers, the API's id resolver, `pmcqa ingest --inline`), else this
  process's. Bio.Entrez's own 0.37 s module-global limiter (`_open.previous`) is neutralised: it is reset
  to "long ago" just before each call, inside a gate that is released when the request reaches the seam, so
  concurrent callers never trip it. Bio's retries are disabled (`max_tries = 1`) so the backoff here is the
  only one.
* **Backoff** — full jitter (`uniform(0, min(cap, base·2ⁿ))`), `Retry-After` honoured as a floor, on 429, 5xx,
  timeouts and connection errors, and on a 2xx whose body is NCBI's rate-limit JSON; other 4xx never retry.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

import httpx
from Bio import Entrez

from pmcqa.core.ids import canonical_pmcid
from pmcqa.core.settings import Settings
from pmcqa.ingest.metrics import NCBI_REQUESTS, NCBI_RETRIES, NCBI_THROTTLED
from pmcqa.ingest.shared_ratelimit import PostgresRateLimiter, RedisRateLimiter
from pmcqa.ingest.xml import parse_xml

log = logging.getLogger(__name__)

_email_warned = False


def _quiet_biopython_email_warning() -> None:
    """Biopython warns, in eleven lines, to set `Entrez.email`, which a pmcqa user cannot do: the client says
    it once per process instead, naming the setting (`_warn_without_email`). Idempotent (an identical filter
    replaces itself), and run per client, as a `catch_warnings` block may have dropped an earlier one."""
    warnings.filterwarnings(
        "ignore", message=r"\s*Email address is not specified", category=UserWarning, module=r"Bio\.Entrez"
    )


def _warn_without_email(settings: Settings) -> None:
    global _email_warned
    if settings.ncbi_email or _email_warned:
        return
    _email_warned = True
    log.warning(
        "PMCQA_NCBI_EMAIL is not set: NCBI asks E-utilities users for a contact email; set it to yours"
    )


IDCONV_MAX_IDS = 200  # the ID Converter takes at most 200 ids (of one type) per call
RETRY_AFTER_CAP_S = 300.0  # never sleep longer than this on a server's say-so
RATE_HEADROOM = 0.9  # run at 90% of the allowed rate: arrival jitter must not push a second over the limit

T = TypeVar("T")


# --- errors ------------------------------------------------------------------------------------------------
class EntrezError(Exception):
    """A request to NCBI did not give a usable reply."""


class TransientError(EntrezError):
    """Worth retrying: 429, 5xx, timeout, connection trouble, rate-limit body."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class PermanentHTTPError(EntrezError):
    """A 4xx other than 429: the request itself is wrong; retrying cannot help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RetriesExhausted(EntrezError):
    """Every try failed with a transient error."""

    def __init__(self, message: str, tries: int, last: TransientError) -> None:
        super().__init__(message)
        self.tries = tries
        self.last = last


# --- rate limiting -----------------------------------------------------------------------------------------
class RateLimiter(Protocol):
    """Blocks until the caller may send one request. A Redis-backed one can replace the in-process one."""

    def acquire(self) -> None: ...


class IntervalRateLimiter:
    """Thread-safe minimum-interval limiter (a token bucket of capacity one, i.e. GCRA without burst).

    Each caller reserves the next free slot under a lock and sleeps outside it, so N threads are served one
    slot apart. Without bursts, no 1-second window can hold more than `rate` requests.
    """

    def __init__(
        self,
        rate: float,
        headroom: float = RATE_HEADROOM,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.interval = 1.0 / (rate * headroom)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


_PROCESS_LIMITERS: dict[float, IntervalRateLimiter] = {}
_PROCESS_LIMITERS_LOCK = threading.Lock()


def process_limiter(rate: float) -> IntervalRateLimiter:
    """The process-wide limiter for `rate`: all clients of this process share it (NCBI counts per IP/key)."""
    with _PROCESS_LIMITERS_LOCK:
        limiter = _PROCESS_LIMITERS.get(rate)
        if limiter is None:
            limiter = _PROCESS_LIMITERS[rate] = IntervalRateLimiter(rate)
        return limiter


_SHARED_LIMITERS: dict[tuple[int, str, str, float], RateLimiter] = {}


def ncbi_limiter(settings: Settings) -> RateLimiter:
    """The limiter every NCBI caller of this process uses by default.

    NCBI counts requests per API key / IP, not per process. With `redis_url` (networked mode) that is one
    sliding window in Redis, shared by every process on every host that talks to NCBI: the workers, the
    API's id resolver and `pmcqa ingest --inline` alike. With a PostgreSQL library and no Redis it is a
    shared slot in that database (API replicas on several hosts, each with its embedded worker). One limiter
    per process and target; a forked child makes its own. Without either it is the process-wide limiter:
    the embedded worker and the API's resolver of one `pmcqa serve` share it, as do a worker's threads.
    """
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    if not settings.redis_url and not database_url:
        return process_limiter(settings.ncbi_rate())
    target = settings.redis_url or database_url or ""
    key = (os.getpid(), target, ncbi_rate_key(settings), settings.ncbi_rate())
    with _PROCESS_LIMITERS_LOCK:
        limiter = _SHARED_LIMITERS.get(key)
        if limiter is None:
            if settings.redis_url:
                limiter = RedisRateLimiter.from_url(
                    settings.redis_url, key=ncbi_rate_key(settings), rate=settings.ncbi_rate()
                )
            else:
                limiter = PostgresRateLimiter.for_settings(
                    settings, key=ncbi_rate_key(settings), rate=settings.ncbi_rate()
                )
            _SHARED_LIMITERS[key] = limiter
        return limiter


def ncbi_rate_key(settings: Settings) -> str:
    """The key of the shared NCBI limit (named after the queue, so one deployment shares one)."""
    return f"{settings.queue_name}:ncbi-rate"


# --- the Bio.Entrez seam -----------------------------------------------------------------------------------
@dataclass
class _CallContext:
    base_url: str
    timeout: float
    force_post: bool
    gate_held: bool = False


_LOCAL = threading.local()
_BIO_GATE = threading.Lock()  # covers "reset Bio's limiter" .. "request reaches the seam"
_INSTALL_LOCK = threading.Lock()
_REAL_URLOPEN = urllib.request.urlopen
_installed = False


def _release_gate(ctx: _CallContext) -> None:
    if ctx.gate_held:
        ctx.gate_held = False
        _BIO_GATE.release()


def _seam_urlopen(request: Any, *args: Any, **kwargs: Any) -> Any:
    ctx: _CallContext | None = getattr(_LOCAL, "ctx", None)
    if ctx is None or not isinstance(request, urllib.request.Request):
        return _REAL_URLOPEN(request, *args, **kwargs)  # not ours: leave it alone
    _release_gate(ctx)  # Bio's limiter has run; other threads may enter now
    split = urlsplit(request.full_url)
    cgi = split.path.rsplit("/", 1)[-1]
    url = ctx.base_url.rstrip("/") + "/" + cgi
    if ctx.force_post and request.get_method() == "GET":
        request.data = split.query.encode("utf-8")
        request.method = "POST"
        request.full_url = url
    else:
        request.full_url = url + (f"?{split.query}" if split.query else "")
    return _REAL_URLOPEN(request, timeout=ctx.timeout)


def install_entrez_seam() -> None:
    """Point `Bio.Entrez.urlopen` at our seam and turn off Bio's own retries (idempotent)."""
    global _installed
    with _INSTALL_LOCK:
        if _installed and Entrez.urlopen is _seam_urlopen:
            return
        Entrez.urlopen = _seam_urlopen
        Entrez.max_tries = 1  # our backoff is the only retry loop
        Entrez.sleep_between_tries = 0
        _installed = True


# --- error classification ----------------------------------------------------------------------------------
def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_rate_limit_body(body: bytes) -> bool:
    """NCBI's `{"error":"API rate limit exceeded",...}`, which some clients have seen with a 2xx status."""
    head = body[:4096].lstrip()
    return head.startswith(b"{") and b"rate limit" in head.lower()


def _classify_status(status: int, retry_after: str | None, what: str) -> EntrezError:
    if status == 429 or status >= 500:
        return TransientError(f"{what}: HTTP {status}", parse_retry_after(retry_after), status)
    return PermanentHTTPError(f"{what}: HTTP {status}", status)


def _classify_urllib(exc: BaseException, what: str) -> EntrezError | None:
    if isinstance(exc, HTTPError):
        return _classify_status(exc.code, exc.headers.get("Retry-After") if exc.headers else None, what)
    if isinstance(exc, URLError):
        return TransientError(f"{what}: {exc.reason}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return TransientError(f"{what}: timed out")
    if isinstance(exc, ConnectionError | http.client.HTTPException):
        return TransientError(f"{what}: {type(exc).__name__}: {exc}")
    return None


def _classify_httpx(exc: BaseException, what: str) -> EntrezError | None:
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{what}: timed out")
    if isinstance(exc, httpx.TransportError):
        return TransientError(f"{what}: {type(exc).__name__}: {exc}")
    return None


# --- the client --------------------------------------------------------------------------------------------
class EntrezClient:
    """Rate-limited, retrying access to efetch (db=pmc), elink (pubmed_pmc) and the ID Converter."""

    def __init__(
        self,
        settings: Settings,
        limiter: RateLimiter | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.limiter = limiter or ncbi_limiter(settings)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._http = httpx.Client(timeout=settings.ncbi_timeout_s, follow_redirects=True)
        install_entrez_seam()
        _quiet_biopython_email_warning()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EntrezClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- etiquette ------------------------------------------------------------------------------------------
    def _identity(self, with_key: bool = True) -> dict[str, str]:
        params = {"tool": self.settings.ncbi_tool}
        if self.settings.ncbi_email:
            params["email"] = self.settings.ncbi_email
        if with_key and self.settings.ncbi_api_key is not None:
            params["api_key"] = self.settings.ncbi_api_key.get_secret_value()
        return params

    # --- retry loop -----------------------------------------------------------------------------------------
    def backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform(0, min(cap, base * 2**(attempt-1))); a Retry-After is a floor."""
        ceiling = min(self.settings.ncbi_backoff_max_s, self.settings.ncbi_backoff_s * 2 ** (attempt - 1))
        delay = self._rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP_S))
        return delay

    def _with_retries(self, what: str, once: Callable[[], T]) -> T:
        tries = max(1, self.settings.ncbi_max_tries)
        endpoint = what.split(" ", 1)[0]  # efetch, elink, idconv
        _warn_without_email(self.settings)
        for attempt in range(1, tries + 1):
            self.limiter.acquire()
            try:
                result = once()
            except TransientError as exc:
                throttled = exc.status == 429
                NCBI_REQUESTS.labels(endpoint, "throttled" if throttled else "transient").inc()
                if throttled:
                    NCBI_THROTTLED.labels(endpoint).inc()
                if attempt == tries:
                    raise RetriesExhausted(f"{exc} (gave up after {tries} tries)", tries, exc) from exc
                NCBI_RETRIES.labels(endpoint).inc()
                delay = self.backoff_delay(attempt, exc.retry_after)
                log.warning("%s; retry %d/%d in %.2fs", exc, attempt, tries - 1, delay)
                self._sleep(delay)
                continue
            except Exception:
                NCBI_REQUESTS.labels(endpoint, "error").inc()
                raise
            NCBI_REQUESTS.labels(endpoint, "ok").inc()
            return result
        raise AssertionError("unreachable")

    def _entrez_once(self, what: str, call: Callable[[], Any], force_post: bool) -> bytes:
        ctx = _CallContext(self.settings.eutils_url, self.settings.ncbi_timeout_s, force_post)
        _BIO_GATE.acquire()
        ctx.gate_held = True
        _LOCAL.ctx = ctx
        try:
            Entrez._open.previous = float("-inf")  # our limiter already spaced this request
            handle = call()
            try:
                data = handle.read()
            finally:
                handle.close()
        except EntrezError:
            raise
        except Exception as exc:  # urllib/http.client/socket errors, while opening or reading
            classified = _classify_urllib(exc, what)
            if classified is None:
                raise
            raise classified from exc
        finally:
            _release_gate(ctx)
            _LOCAL.ctx = None
        body = data.encode("utf-8") if isinstance(data, str) else data
        if is_rate_limit_body(body):
            raise TransientError(f"{what}: rate-limit reply with a 2xx status", status=429)
        return body

    # --- endpoints ------------------------------------------------------------------------------------------
    def efetch_pmc(self, pmcids: Sequence[str]) -> bytes:
        """Raw `<pmc-articleset>` bytes for these PMCIDs (sent as digits, always by POST)."""
        digits = [pmcid.upper().removeprefix("PMC") for pmcid in pmcids]
        what = f"efetch db=pmc ({len(digits)} ids)"

        def call() -> Any:
            return Entrez.efetch(db="pmc", id=",".join(digits), retmode="xml", **self._identity())

        return self._with_retries(what, lambda: self._entrez_once(what, call, force_post=True))

    def elink_pubmed_pmc(self, pmids: Sequence[str]) -> dict[str, list[str]]:
        """PMID -> PMCIDs through `elink dbfrom=pubmed db=pmc linkname=pubmed_pmc` (one LinkSet per PMID)."""
        if not pmids:
            return {}
        what = f"elink pubmed_pmc ({len(pmids)} ids)"

        def call() -> Any:
            return Entrez.elink(
                dbfrom="pubmed", db="pmc", linkname="pubmed_pmc", id=list(pmids), **self._identity()
            )

        body = self._with_retries(what, lambda: self._entrez_once(what, call, force_post=False))
        return parse_elink(body)

    def idconv(self, ids: Sequence[str], idtype: str) -> list[dict[str, Any]]:
        """ID Converter records for ids of one type (`pmid`, `doi`, `pmcid`), 200 per request."""
        records: list[dict[str, Any]] = []
        for start in range(0, len(ids), IDCONV_MAX_IDS):
            batch = list(ids[start : start + IDCONV_MAX_IDS])
            what = f"idconv {idtype} ({len(batch)} ids)"
            records.extend(self._with_retries(what, lambda b=batch, w=what: self._idconv_once(b, idtype, w)))
        return records

    def _idconv_once(self, batch: list[str], idtype: str, what: str) -> list[dict[str, Any]]:
        params = {
            "ids": ",".join(batch),
            "idtype": idtype,
            "format": "json",
            **self._identity(with_key=False),
        }
        try:
            response = self._http.get(self.settings.idconv_url, params=params)
        except httpx.HTTPError as exc:
            classified = _classify_httpx(exc, what)
            if classified is None:
                raise
            raise classified from exc
        if response.status_code >= 400:
            raise _classify_status(response.status_code, response.headers.get("Retry-After"), what)
        if is_rate_limit_body(response.content) and b'"records"' not in response.content:
            raise TransientError(f"{what}: rate-limit reply with a 2xx status", status=429)
        try:
            doc = response.json()
        except ValueError as exc:
            raise TransientError(f"{what}: unreadable JSON reply") from exc
        records = doc.get("records") if isinstance(doc, dict) else None
        if not isinstance(records, list):
            raise EntrezError(f"{what}: reply has no records ({str(doc)[:200]})")
        return [record for record in records if isinstance(record, dict)]


def parse_elink(body: bytes) -> dict[str, list[str]]:
    """`{pmid: [PMC…]}` from an elink reply (XML eLinkResult or retmode=json); only `pubmed_pmc` links."""
    text = body.lstrip()
    if text.startswith(b"{"):
        return _parse_elink_json(text)
    root = parse_xml(body)
    out: dict[str, list[str]] = {}
    for linkset in root.iter("LinkSet"):
        from_ids = [el.text.strip() for el in linkset.findall("IdList/Id") if el.text]
        links: list[str] = []
        for linksetdb in linkset.findall("LinkSetDb"):
            if (linksetdb.findtext("LinkName") or "").strip() != "pubmed_pmc":
                continue
            pmcids = (canonical_pmcid(el.text) for el in linksetdb.findall("Link/Id"))
            links.extend(pmcid for pmcid in pmcids if pmcid)
        for pmid in from_ids:
            out.setdefault(pmid, []).extend(links)
    return out


def _parse_elink_json(text: bytes) -> dict[str, list[str]]:
    doc = json.loads(text)
    out: dict[str, list[str]] = {}
    for linkset in doc.get("linksets", []):
        pmcids = (
            canonical_pmcid(link)
            for db in linkset.get("linksetdbs", [])
            if db.get("linkname") == "pubmed_pmc"
            for link in db.get("links", [])
        )
        links = [pmcid for pmcid in pmcids if pmcid]
        for pmid in linkset.get("ids", []):
            out.setdefault(str(pmid), []).extend(links)
    return out

