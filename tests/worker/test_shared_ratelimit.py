"""Two worker processes drain one job together; the fake NCBI server never sees more than the limit/s."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from fakes.eutils_server import run_fake_eutils
from worker_fakes import fake_db
from worker_helpers import cleanup_redis, fake_worker_settings, wait_for

from pmcqa.ingest.jobs import JobStore
from pmcqa.ingest.shared_ratelimit import PostgresRateLimiter, RedisRateLimiter, window_for
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
        fetches = fake.requests_to("efetch")
        arrivals = [r.time for r in fetches]
    fetched = [pmcid for r in fetches for pmcid in r.ids()]
    repeated = sorted({pmcid for pmcid in fetched if fetched.count(pmcid) > 1})
    assert len(arrivals) == len(ids), (repeated, [(r.time, r.ids()) for r in fetches])
    assert max_in_any_window(arrivals) <= RATE, sorted(arrivals)
    with sqlite3.connect(fake_db(settings.data_dir)) as conn:
        per_worker = dict(conn.execute("select pid, count(*) from requests group by pid").fetchall())
    assert len(per_worker) >= 2, per_worker  # both processes (4 threads) really shared the job


# --- every NCBI caller, not only workers ------------------------------------------------------------------
# One process of each kind that calls NCBI outside a worker: the API's id resolver (the service's `Library`)
# and `pmcqa ingest --inline` (an `Ingestor` built without a limiter). Each prints "ready", waits for `go`,
# then sends its requests one by one.
_CALLER = r"""
import hashlib, sys, time
from pathlib import Path
import numpy as np
from pmcqa.core.settings import Settings

role, go, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
settings = Settings()
if role == "api-resolver":
    from pmcqa.app.service import Library
    from pmcqa.core.ids import parse_id
    resolver = Library.for_papers(settings).id_resolver  # the API's RequestResolver
    print("ready", type(resolver.client.limiter).__name__, flush=True)
    while not go.exists():
        time.sleep(0.01)
    for i in range(n):
        assert resolver.pmcid(parse_id(f"pmid:{7000 + i}")) == f"PMC{3000 + i}"
else:
    from pmcqa.index.store import open_store
    from pmcqa.ingest.pipeline import Ingestor

    class Encoder:
        model_name, dimension, document_prefix = "test-hash-encoder", 16, ""
        def embed_documents(self, texts):
            rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:16], dtype=np.uint8) for t in texts]
            vectors = np.array(rows, dtype=np.float32).reshape(len(texts), 16) + 1.0
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    ingestor = Ingestor(settings, store=open_store(settings), encoder=Encoder())  # as `ingest --inline` does
    print("ready", type(ingestor.client.limiter).__name__, flush=True)
    while not go.exists():
        time.sleep(0.01)
    for i in range(n):  # one efetch per call
        (outcome,) = ingestor.ingest_ids([f"PMC{3100 + i}"])
        assert outcome.status == "not-found", outcome
print("done", flush=True)
"""


@pytest.mark.parametrize("shared_by", ["redis", "postgres"])
def test_api_resolver_and_inline_ingest_share_one_limit(
    tmp_path: Path, shared_by: str, request: pytest.FixtureRequest
) -> None:
    """Processes that call NCBI outside a worker take their turns from the deployment's shared limit (Redis,
    or the PostgreSQL library without Redis), so together they never exceed it (measured where requests
    arrive)."""
    import os
    import subprocess
    import sys

    from pydantic import SecretStr

    from pmcqa.ingest.entrez import EntrezClient, ncbi_rate_key
    from pmcqa.ingest.worker import make_limiter, settings_env

    per_process = 8
    if shared_by == "redis":
        redis_url, database_url, expected = request.getfixturevalue("redis_url"), None, RedisRateLimiter
    else:
        redis_url, expected = None, PostgresRateLimiter
        database_url = SecretStr(request.getfixturevalue("scratch_postgres_database")("ratelimit"))
    with run_fake_eutils() as fake:
        for i in range(per_process):
            fake.add_idmap(f"PMC{3000 + i}", pmid=str(7000 + i))
        settings = fake_worker_settings(tmp_path, redis_url=redis_url, database_url=database_url,
                                        ncbi_requests_per_second=RATE, efetch_batch_size=1,
                                        **fake.settings_overrides())
        # In this process too: the worker's limiter and a client built without one are the same.
        worker_limiter, client = make_limiter(settings), EntrezClient(settings)
        assert isinstance(worker_limiter, expected) and client.limiter is worker_limiter
        assert worker_limiter.key == ncbi_rate_key(settings)
        client.close()

        go = tmp_path / "go"
        procs = []
        try:
            for role in ("api-resolver", "inline-ingest"):
                env = {**os.environ, **settings_env(settings), "PMCQA_DATA_DIR": str(tmp_path / role)}
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", _CALLER, role, str(go), str(per_process)],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                ))
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                assert line.split() == ["ready", expected.__name__], line + proc.stdout.read()
            go.touch()
            outputs = [proc.communicate(timeout=120)[0] for proc in procs]
        finally:
            for proc in procs:
                proc.kill()
            if redis_url:
                cleanup_redis(redis_url, settings.queue_name)
        for proc, out in zip(procs, outputs, strict=True):
            assert proc.returncode == 0 and "done" in out, out
        idconv = [r.time for r in fake.requests_to("idconv")]
        efetch = [r.time for r in fake.requests_to("efetch")]
    assert len(idconv) == len(efetch) == per_process
    # The two processes really ran at once, and together kept to the limit.
    assert min(efetch) < max(idconv) and min(idconv) < max(efetch)
    assert max_in_any_window(idconv + efetch) <= RATE, sorted(idconv + efetch)


def test_postgres_limiter_spaces_threads_of_several_processes(scratch_postgres_database) -> None:
    """Limiters on separate pools (as separate processes have) reserve slots from one row: every slot one
    interval (at 90% of the rate) after the previous one, whoever took it, on the server's clock."""
    from psycopg_pool import ConnectionPool

    from pmcqa.core.db import ensure_postgres_schema
    from pmcqa.core.settings import Settings

    url = scratch_postgres_database("slots")
    ensure_postgres_schema(Settings(database_url=url))
    pools = [ConnectionPool(url, min_size=1, max_size=2, kwargs={"autocommit": True}) for _ in range(3)]
    slots: list[float] = []
    lock = threading.Lock()

    def hammer(pool: ConnectionPool) -> None:
        limiter = PostgresRateLimiter(pool, key="test:ncbi-rate", rate=RATE)
        for _ in range(5):
            slot, _now = limiter.reserve()
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=hammer, args=(pool,)) for pool in pools for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for pool in pools:
            pool.close()
    slots.sort()
    gaps = np.diff(slots)
    assert len(slots) == 30 and gaps.min() >= 1 / (RATE * 0.9) - 1e-6, gaps
    assert max_in_any_window(slots) <= RATE
