"""JobStore under contention, on each backend (`jobs.sqlite3`, PostgreSQL): racing claims lease a batch once,
racing requests with one idempotency key create one job, racing stale-batch scans re-queue a batch once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pmcqa.core.settings import Settings
from pmcqa.ingest.jobs import IdempotencyConflict, JobStore

RACERS = 8


def _race(action: Callable[[int], Any]) -> list[Any]:
    """Run `action(n)` in RACERS threads released at once; their results (or exceptions), in order."""
    start = threading.Barrier(RACERS)
    results: list[Any] = [None] * RACERS

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = action(n)
        except Exception as exc:  # collected: the test says which outcome is allowed
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_racing_claims_lease_a_batch_once(backend_settings: Settings) -> None:
    jobs = JobStore.for_settings(backend_settings)
    job = jobs.create(["PMC1", "PMC2"], batch_size=2)
    claims = _race(lambda n: JobStore.for_settings(backend_settings).claim(job.job_id, 0, f"w{n}", 60))
    won = [claim for claim in claims if claim is not None]
    assert len(won) == 1 and won[0].ids == ["PMC1", "PMC2"] and won[0].attempt == 1, claims


def test_racing_requests_with_one_key_create_one_job(backend_settings: Settings) -> None:
    def create(n: int) -> tuple[str, bool]:
        ids = ["PMC1", "PMC2"] if n % 2 == 0 else ["PMC1", "PMC2", "PMC1"]  # the same request
        job, created = JobStore.for_settings(backend_settings).create_once(ids, idempotency_key="k")
        return job.job_id, created

    results = _race(create)
    assert all(isinstance(result, tuple) for result in results), results
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    jobs = JobStore.for_settings(backend_settings)
    assert len(jobs.list()) == 1
    try:
        jobs.create_once(["PMC3"], idempotency_key="k")
    except IdempotencyConflict:
        pass
    else:
        raise AssertionError("the key was accepted for another request")


def test_racing_stale_scans_requeue_a_batch_once(backend_settings: Settings) -> None:
    jobs = JobStore.for_settings(backend_settings)
    job = jobs.create(["PMC1", "PMC2", "PMC3"], batch_size=1)
    for batch in range(3):
        jobs.claim(job.job_id, batch, "dead", lease_s=0.01)
    time.sleep(0.05)
    scans = _race(lambda n: JobStore.for_settings(backend_settings).reclaim_stale(requeue_after_s=600))
    requeued = [pair for scan in scans for pair in scan]
    assert sorted(requeued) == [(job.job_id, batch) for batch in range(3)], scans
