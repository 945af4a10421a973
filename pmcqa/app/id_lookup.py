"""Resolving a PMID or DOI the library does not know, inside a request: bounded in time, threads and traffic.

A question about ``pmid:…`` the store has no alias for needs NCBI's ID Converter. Ingest may wait minutes for
NCBI (6 tries, 30 s timeouts); a request must not, or a burst of such questions with NCBI unreachable holds
every server thread for half a minute each. So `RequestResolver`:

* has an `EntrezClient` of its own with one try and a timeout no longer than the deadline;
* runs lookups on a small pool of its own threads; the caller waits at most `resolve_timeout_s`, then gets
  `UpstreamTimeout` (504) and its lookup is cancelled if it has not started; async handlers wait with
  `pmcid_async`, holding no server thread meanwhile;
* shares one lookup among concurrent requests for the same id;
* remembers definite misses ("not in PMC") for `MISS_TTL_S` (a negative cache; hits are cached on disk by
  `IdMapCache`);
* after a failure to reach NCBI (or a timeout) answers `UpstreamUnavailable` (503) at once for
  `UNREACHABLE_S`, instead of trying again per request (a circuit breaker).

A network failure is therefore a 503/504 that says NCBI could not be reached, never a 404.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable

from cachetools import TTLCache

from pmcqa.app.errors import UpstreamTimeout, UpstreamUnavailable
from pmcqa.core.ids import PaperId
from pmcqa.core.settings import Settings
from pmcqa.core.status import Status
from pmcqa.ingest.entrez import EntrezClient
from pmcqa.ingest.resolve import IdResolver, Resolution

log = logging.getLogger(__name__)

LOOKUP_THREADS = 4  # concurrent NCBI lookups of one API process (NCBI allows 3-10 requests/s anyway)
MISS_TTL_S = 600.0  # how long "not in PMC" is believed without asking again
UNREACHABLE_S = 15.0  # after a failed or timed-out lookup, NCBI counts as unreachable this long
MAX_MISSES = 10_000


class RequestResolver:
    """PMID/DOI → PMCID for request handlers; see the module docstring for the bounds."""

    def __init__(
        self,
        settings: Settings,
        resolver: IdResolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deadline_s = settings.resolve_timeout_s
        quick = settings.model_copy(
            update={"ncbi_max_tries": 1, "ncbi_timeout_s": min(settings.ncbi_timeout_s, self.deadline_s)}
        )
        self.client: EntrezClient | None = None
        if resolver is None:
            self.client = EntrezClient(quick)
            resolver = IdResolver(quick, self.client)
        self.resolver = resolver
        self._clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="pmcqa-resolve")
        self._lock = threading.RLock()  # a done-callback may run inside `pmcid`'s locked block
        self._in_flight: dict[str, concurrent.futures.Future[Resolution]] = {}
        self._misses: TTLCache[str, str] = TTLCache(MAX_MISSES, MISS_TTL_S, timer=clock)
        self._unreachable_until = 0.0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            self.client.close()

    def pmcid(self, paper_id: PaperId) -> str | None:
        """The PMCID of a PMID/DOI; None when NCBI says it has none (the caller's 404).

        Raises `UpstreamUnavailable` when NCBI could not be reached, `UpstreamTimeout` past the deadline.
        """
        key, future = self._start(paper_id)
        if future is None:
            return None
        try:
            resolution = future.result(timeout=self.deadline_s)
        except concurrent.futures.TimeoutError:
            future.cancel()  # not started yet: it never will be; running: it finishes in the background
            raise self._timed_out(paper_id) from None
        except concurrent.futures.CancelledError:  # another request's deadline cancelled the shared lookup
            raise self._unavailable(paper_id) from None
        return self._finish(paper_id, key, resolution)

    async def pmcid_async(self, paper_id: PaperId) -> str | None:
        """`pmcid` for async handlers: the wait is the request's own, it holds no server thread."""
        key, future = self._start(paper_id)
        if future is None:
            return None
        try:
            # shield: a timed-out wait must not cancel a lookup other requests share (wait_for would)
            resolution = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.deadline_s)
        except TimeoutError:
            future.cancel()
            raise self._timed_out(paper_id) from None
        except asyncio.CancelledError:
            if not future.cancelled():
                raise  # this request itself was cancelled (client gone, shutdown)
            raise self._unavailable(paper_id) from None
        return self._finish(paper_id, key, resolution)

    def _start(self, paper_id: PaperId) -> tuple[str, concurrent.futures.Future[Resolution] | None]:
        """The lookup's key and its (shared) future; None for a remembered miss. Raises while NCBI counts
        as unreachable."""
        key = f"{paper_id.kind}:{paper_id.value.lower()}"
        with self._lock:
            if key in self._misses:
                return key, None
            if self._clock() < self._unreachable_until:
                raise self._unavailable(paper_id)
            future = self._in_flight.get(key)
            if future is None:
                future = self._pool.submit(self._lookup, paper_id.raw)
                self._in_flight[key] = future
                future.add_done_callback(lambda _done, key=key: self._forget(key))
        return key, future

    def _finish(self, paper_id: PaperId, key: str, resolution: Resolution) -> str | None:
        if resolution.ok and resolution.pmcid:
            return resolution.pmcid
        if resolution.status == Status.FAILED:
            why = resolution.error or "lookup failed"
            self._mark_unreachable()
            raise self._unavailable(paper_id, why)
        with self._lock:
            self._misses[key] = resolution.error or "not in PMC"
        return None

    def _timed_out(self, paper_id: PaperId) -> UpstreamTimeout:
        self._mark_unreachable()
        return UpstreamTimeout(
            f"NCBI did not answer the lookup of {paper_id} within {self.deadline_s:g}s "
            "(PMCQA_RESOLVE_TIMEOUT_S); retry later, or ask by PMCID."
        )

    def _lookup(self, text: str) -> Resolution:
        try:
            return self.resolver.resolve_many([text])[text]
        except Exception as exc:  # anything unexpected from the transport counts as "could not reach"
            log.warning("id lookup of %s failed: %s", text, exc)
            return Resolution(requested=text, status=Status.FAILED, error=f"{type(exc).__name__}: {exc}")

    def _forget(self, key: str) -> None:
        with self._lock:
            self._in_flight.pop(key, None)

    def _mark_unreachable(self) -> None:
        with self._lock:
            self._unreachable_until = self._clock() + UNREACHABLE_S

    def _unavailable(self, paper_id: PaperId, why: str | None = None) -> UpstreamUnavailable:
        """The 503 of this request. `why` is this lookup's own failure; during an outage another request
        found, the reason is generic (that request's error names its id, which is not this client's)."""
        left = max(1, math.ceil(self._unreachable_until - self._clock()))
        reason = why or f"a lookup failed moments ago; NCBI counts as unreachable for {left}s more"
        return UpstreamUnavailable(
            f"NCBI could not be reached to resolve {paper_id} ({reason}); retry later, or ask by PMCID.",
            retry_after_s=left,
        )
