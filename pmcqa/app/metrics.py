"""Prometheus metrics of the API beyond HTTP and answers: the library's size and the time of its last ingest.

`LibraryCollector` reads them from the store at scrape time (nothing to keep in sync). `serve_metrics` serves
the app's registry on `settings.metrics_port` when that is set (open, for a scraper inside the cluster);
otherwise GET /metrics on the API port serves it, behind the API key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pmcqa.core.settings import Settings

log = logging.getLogger(__name__)


class LibraryCollector(Collector):
    """pmcqa_library_papers, pmcqa_library_chunks, pmcqa_library_last_ingest_timestamp_seconds."""

    def __init__(self, library: Callable[[], Any]) -> None:
        self._library = library  # the app's current Library (None while it starts)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        library = self._library()
        if library is None:
            return []
        try:
            stats = library.stats()
        except Exception as exc:  # a scrape must not fail because the store is busy
            log.warning("library metrics unavailable: %s", exc)
            return []
        families = [
            GaugeMetricFamily("pmcqa_library_papers", "Papers stored in the library.", value=stats.papers),
            GaugeMetricFamily("pmcqa_library_chunks", "Chunks indexed in the library.", value=stats.chunks),
        ]
        if stats.last_ingest is not None:
            families.append(
                GaugeMetricFamily(
                    "pmcqa_library_last_ingest_timestamp_seconds",
                    "Unix time of the last paper stored or re-stored.",
                    value=stats.last_ingest.timestamp(),
                )
            )
        return families


@contextmanager
def serve_metrics(settings: Settings, registry: CollectorRegistry) -> Iterator[None]:
    """Serve `registry` on `settings.metrics_port` while the app runs (nothing when it is unset)."""
    if settings.metrics_port is None:
        yield
        return
    server, thread = start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
