"""Two worker processes drain one job together; the fake NCBI server never sees more than the limit/s."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

from fakes.eutils_server import run_fake_eutils
from worker_fakes import fake_db
from worker_helpers import cleanup_redis, fake_worker_settings, wait_for

from pmcqa.ingest.jobs import JobStore
from pmcqa.ingest.shared_ratelimit import RedisRateLimiter, window_for
from pmcqa.ingest.worker import enqueue_job

RATE = 5.0


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_window_for_fractional_rates() -> None:
    assert window_for(5.0, slack_s=0.0) == (5, 1.0)
    assert window_for(2.5, slack_s=0.0) == (2, 0.8)
    assert window_for(0.5, slack_s=0.0) == (1, 2.0)


def test_limiter_threads_share_one_redis_window(redis_url: str) -> None:
    key = f"pmcqa-test-{uuid.uuid4().hex}:rate"
    stamps: list[float] = []
    lock = threading.Lock()

    def hammer() -> None:
        limiter = RedisRateLimiter.from_url(redis_url, key=key, rate=RATE)  # one client per "process"
        for _ in range(4):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        cleanup_redis(redis_url, key)
    assert len(stamps) == 16
    assert max_in_any_window(stamps) <= RATE
    assert max(stamps) - min(stamps) >= 2.0  # 16 at 5 per 1.1 s cannot take less


def test_two_workers_share_the_ncbi_limit(tmp_path: Path, workers_factory, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    with run_fake_eutils() as fake:
        ids = [f"PMC{2000 + n}" for n in range(30)]
        for pmcid in ids[:-3]:
            fake.add_article(pmcid, f"<article><front><article-meta><title-group><article-title>{pmcid}"
                                    "</article-title></title-group></article-meta></front></article>".encode())
        settings = fake_worker_settings(
            tmp_path, redis_url=redis_url, job_batch_size=2, job_lease_s=10.0, ncbi_requests_per_second=RATE,
            ncbi_backoff_s=0.01, ncbi_backoff_max_s=0.05, **fake.settings_overrides(),
        )
        try:
            procs = workers_factory(settings, ingestor="efetch")
            procs.start(workers=2)
            procs.start(workers=2)
            jobs = JobStore.for_settings(settings)
            job = enqueue_job(settings, ids)
            done = wait_for(lambda: (j := jobs.get(job.job_id)) and j.finished and j, 90, "the job to finish")
        finally:
            cleanup_redis(redis_url, settings.queue_name)
        assert done.state == "done", procs.logs()
        assert done.counts == {"ingested": 27, "not-found": 3}
        arrivals = [r.time for r in fake.requests_to("efetch")]
    assert len(arrivals) == len(ids)
    assert max_in_any_window(arrivals) <= RATE, sorted(arrivals)
    with sqlite3.connect(fake_db(settings.data_dir)) as conn:
        per_worker = dict(conn.execute("select pid, count(*) from requests group by pid").fetchall())
    assert len(per_worker) >= 2, per_worker  # both processes (4 threads) really shared the job
