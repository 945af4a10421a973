"""Prometheus metrics of ingest: NCBI requests (429s and retries), worker batches, papers ingested, jobs.

Counters live on prometheus_client's default registry (one per process). `pmcqa worker` serves them on
`settings.worker_metrics_port` (`serve_worker_metrics`), with `pmcqa_worker_jobs{state}` read from the jobs
table at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pmcqa.core.settings import Settings

log = logging.getLogger(__name__)

NCBI_REQUESTS = Counter(
    "pmcqa_ncbi_requests_total",
    "NCBI requests by endpoint (efetch, elink, idconv) and outcome (ok, throttled = HTTP 429, transient = "
    "5xx / timeout / connection trouble, error).",
    ["endpoint", "outcome"],
)
NCBI_RETRIES = Counter("pmcqa_ncbi_retries_total", "NCBI requests retried after a backoff.", ["endpoint"])
NCBI_THROTTLED = Counter(
    "pmcqa_ncbi_throttled_total", "NCBI replies that said 429 (rate limit).", ["endpoint"]
)
BATCH_SECONDS = Histogram(
    "pmcqa_worker_batch_seconds",
    "Seconds a worker spent on one batch of an ingest job.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
PAPERS_INGESTED = Counter(
    "pmcqa_papers_ingested_total",
    "Ids of ingest jobs finished, by outcome (ingested, failed, ...).",
    ["status"],
)


class JobsCollector(Collector):
    """pmcqa_worker_jobs{state}: ingest jobs per state, from the jobs table."""

    def __init__(self, jobs: Any) -> None:
        self.jobs = jobs

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("pmcqa_worker_jobs", "Ingest jobs by state.", labels=["state"])
        try:
            counts = self.jobs.count_by_state()
        except Exception as exc:  # a locked database must not fail the scrape
            log.warning("job metrics unavailable: %s", exc)
            return []
        for state in ("queued", "running", "done", "failed"):
            family.add_metric([state], counts.get(state, 0))
        return [family]


@contextmanager
def serve_worker_metrics(settings: Settings, jobs: Any) -> Iterator[None]:
    """Serve the process's metrics on `worker_metrics_port` while a worker runs (nothing when it is unset)."""
    if settings.worker_metrics_port is None:
        yield
        return
    collector = JobsCollector(jobs)
    REGISTRY.register(collector)
    server, thread = start_http_server(settings.worker_metrics_port, addr=settings.host)
    log.info("worker metrics on http://%s:%d/metrics", settings.host, settings.worker_metrics_port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        REGISTRY.unregister(collector)  # a later worker in this process registers its own
