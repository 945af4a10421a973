"""SIGKILL a real worker process mid-job, restart it: the job still finishes, every id exactly once."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest
from worker_fakes import DELAY_ENV, fake_db
from worker_helpers import cleanup_redis, fake_worker_settings, free_port, wait_for

from pmcqa.core.settings import Settings
from pmcqa.index.store import open_store
from pmcqa.ingest.jobs import MAX_ATTEMPTS, JobStore, PostgresJobStore
from pmcqa.ingest.worker import build_runtime, enqueue_job, run_batch

IDS = [f"PMC{1000 + n}" for n in range(30)]


def _finished_ids(jobs: JobStore, job_id: str) -> int:
    job = jobs.get(job_id, items=False)
    assert job is not None
    return job.total - job.counts.get("pending", 0)


def _kill_mid_job_and_recover(settings, workers_factory) -> None:  # type: ignore[no-untyped-def]
    jobs = JobStore.for_settings(settings)
    job = enqueue_job(settings, IDS)
    procs = workers_factory(settings, ingestor="slow", **{DELAY_ENV: "0.08"})

    first = procs.start(workers=2)
    wait_for(lambda: _finished_ids(jobs, job.job_id) >= 8, 60, "the first ids to finish")
    first.send_signal(signal.SIGKILL)  # no cleanup: the running batches' tasks are gone from the queue
    first.wait()
    killed_at = _finished_ids(jobs, job.job_id)
    assert killed_at < len(IDS), "the job finished before the kill; slow the fake ingestor down"
    assert jobs.get(job.job_id).state == "running"

    procs.start(workers=2)  # re-enqueues the batches whose lease lapses, then drains the queue
    done = wait_for(lambda: (j := jobs.get(job.job_id)) and j.finished and j, 90, "the job to finish")
    assert done.state == "done", procs.logs()
    assert "re-enqueueing job" in procs.logs()  # recovered by the lease scan, not by luck
    assert done.counts == {"ingested": 27, "not-found": 3}
    by_id = {item.id: item for item in done.items}
    assert list(by_id) == IDS
    assert by_id["PMC1009"].status == "not-found" and by_id["PMC1009"].reason == "no such id"
    assert all(item.chunks == 3 for item in done.items if item.status == "ingested")

    with sqlite3.connect(fake_db(settings.data_dir)) as conn:
        stored = [row[0] for row in conn.execute("select paper_id from papers order by paper_id")]
        writes = dict(conn.execute("select paper_id, count(*) from writes group by paper_id").fetchall())
    assert stored == sorted(i for i in IDS if not i.endswith("9"))  # every paper exactly once
    # At most the ids in flight at the kill were written twice (replace-on-write keeps one copy).
    assert sum(writes.values()) - len(writes) <= 2


def test_sigkill_mid_job_embedded(tmp_path: Path, workers_factory) -> None:  # type: ignore[no-untyped-def]
    settings = fake_worker_settings(tmp_path)
    _kill_mid_job_and_recover(settings, workers_factory)
    assert settings.queue_path.exists()  # the SQLite queue, no server


def test_sigkill_mid_job_redis(tmp_path: Path, workers_factory, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = fake_worker_settings(tmp_path, redis_url=redis_url)
    try:
        _kill_mid_job_and_recover(settings, workers_factory)
        assert not settings.queue_path.exists()  # the queue lived in Redis
    finally:
        cleanup_redis(redis_url, settings.queue_name)


def test_sigkill_mid_job_postgres(tmp_path: Path, workers_factory, scratch_postgres_database) -> None:  # type: ignore[no-untyped-def]
    """A PostgreSQL library without Redis: jobs, leases, the worker registry and the queue (PostgresHuey) all
    live in the database, none in a file under data_dir."""
    from pydantic import SecretStr

    url = scratch_postgres_database("sigkill")
    settings = fake_worker_settings(tmp_path, database_url=SecretStr(url))
    _kill_mid_job_and_recover(settings, workers_factory)
    for name in ("jobs.sqlite3", "queue.sqlite3", "idmap.sqlite3"):
        assert not (settings.data_dir / name).exists(), name
    with psycopg.connect(url) as conn:  # the queue was huey's table in the library database, drained now
        assert conn.execute("select count(*) from huey_task").fetchone() == (0,)


@pytest.mark.parametrize("attempts", [1])
def test_duplicate_delivery_is_skipped(job_store: JobStore, attempts: int) -> None:
    """A batch leased by a live worker is not run by a second delivery; a finished batch never again."""
    jobs = job_store
    job = jobs.create(["PMC1", "PMC2", "PMC3"], batch_size=2)
    claim = jobs.claim(job.job_id, 0, "a", lease_s=30)
    assert claim is not None and claim.ids == ["PMC1", "PMC2"] and claim.attempt == attempts
    assert jobs.claim(job.job_id, 0, "b", lease_s=30) is None
    assert jobs.record(job.job_id, "PMC1", "ingested", paper_id="PMC1")
    assert not jobs.record(job.job_id, "PMC1", "failed", reason="late duplicate")
    jobs.record(job.job_id, "PMC2", "not-found")
    jobs.finish(job.job_id, 0, "a")
    assert jobs.claim(job.job_id, 0, "b", lease_s=30) is None
    assert jobs.get(job.job_id).state == "running"
    claim = jobs.claim(job.job_id, 1, "b", lease_s=30)
    jobs.record(job.job_id, "PMC3", "ingested")
    jobs.finish(job.job_id, 1, "b")
    final = jobs.get(job.job_id)
    assert final.state == "done" and final.counts == {"ingested": 2, "not-found": 1}
    assert [i.status for i in final.items] == ["ingested", "not-found", "ingested"]


def test_lapsed_lease_is_reclaimed_once(job_store: JobStore) -> None:
    jobs = job_store
    job = jobs.create(["PMC1", "PMC2"], batch_size=1)
    jobs.claim(job.job_id, 0, "dead", lease_s=0.01)
    jobs.claim(job.job_id, 1, "alive", lease_s=60)
    time.sleep(0.05)
    assert jobs.reclaim_stale(requeue_after_s=600) == [(job.job_id, 0)]
    assert jobs.reclaim_stale(requeue_after_s=600) == []  # a second scanner does not enqueue it again
    assert jobs.claim(job.job_id, 0, "new", lease_s=60).attempt == 2


def test_a_batch_missing_from_the_queue_is_reclaimed_after_a_lease(job_store: JobStore) -> None:
    """A worker killed between taking a task and leasing its batch leaves the batch neither queued nor leased:
    it is re-queued once it has been missing for `lost_after_s`, not after the 600 s never-started rule."""
    jobs = job_store
    job = jobs.create(["PMC1", "PMC2"], batch_size=1)
    queued = {(job.job_id, 1)}  # batch 0's task was taken off the queue; its worker died before claiming
    assert jobs.reclaim_stale(requeue_after_s=600, in_queue=queued, lost_after_s=60) == []  # not yet
    assert jobs.reclaim_stale(requeue_after_s=600, in_queue=queued, lost_after_s=0) == [(job.job_id, 0)]
    jobs.claim(job.job_id, 1, "alive", lease_s=60)
    # A leased batch is never "lost", whatever the queue holds; nor is one the queue still holds.
    assert jobs.reclaim_stale(requeue_after_s=600, in_queue=set(), lost_after_s=10) == []
    assert jobs.reclaim_stale(requeue_after_s=600, in_queue=None, lost_after_s=0) == []


def test_a_backlog_the_queue_holds_is_never_enqueued_again(job_store: JobStore) -> None:
    """Batches behind a long backlog pass the never-started age, but a scan that sees them in the queue
    leaves them there (it re-enqueued all of them at every scan: the queue grew by the backlog each time)."""
    jobs = job_store
    job = jobs.create(["PMC1", "PMC2"], batch_size=1)
    queued = {(job.job_id, 0), (job.job_id, 1)}
    assert jobs.reclaim_stale(requeue_after_s=0, in_queue=queued, lost_after_s=0) == []
    assert jobs.reclaim_stale(requeue_after_s=0, in_queue=queued - {(job.job_id, 1)}) == [(job.job_id, 1)]
    assert jobs.reclaim_stale(requeue_after_s=0, in_queue=None) == [(job.job_id, 0), (job.job_id, 1)]


def test_a_worker_started_while_redis_is_down_waits_for_it(tmp_path: Path, workers_factory) -> None:  # type: ignore[no-untyped-def]
    """A lapsed lease to re-queue at start, and Redis unreachable: the worker says so and stays up (it exited
    1, so a supervised worker restart-looped for the whole outage)."""
    settings = fake_worker_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    jobs = JobStore.for_settings(settings)
    job = jobs.create(["PMC11", "PMC12"], batch_size=5)
    jobs.claim(job.job_id, 0, "ghost:1:1", lease_s=0.01)  # a worker that died holding the batch
    time.sleep(0.05)
    procs = workers_factory(settings, ingestor="slow")
    worker = procs.start()
    wait_for(lambda: "stale-batch scan failed" in procs.logs() or worker.poll() is not None, 60,
             "the worker to try its start-up scan")
    assert worker.poll() is None, procs.logs()


def test_finished_jobs_past_their_retention_are_pruned(job_store: JobStore) -> None:
    jobs = job_store
    old, running = jobs.create(["PMC1"], batch_size=1), jobs.create(["PMC2"], batch_size=1)
    jobs.claim(old.job_id, 0, "w", lease_s=60)
    jobs.record(old.job_id, "PMC1", "ingested")
    jobs.finish(old.job_id, 0, "w")
    time.sleep(0.05)
    assert jobs.prune(older_than_s=60) == 0  # finished, but recently
    assert jobs.prune(older_than_s=0.01) == 1  # finished long enough ago: gone, with its items
    assert jobs.get(old.job_id) is None and jobs.get(running.job_id) is not None  # unfinished ones stay


def test_leases_are_timed_on_the_database_clock(job_store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts sharing a PostgreSQL library: one whose clock runs two minutes ahead took a live 60 s lease for a
    lapsed one, and two hosts ran the same batch."""
    import pmcqa.ingest.jobs as jobs_module

    if not isinstance(job_store, PostgresJobStore):
        pytest.skip("one SQLite file is used by one host, on one clock")
    job = job_store.create(["PMC1"], batch_size=1)
    assert job_store.claim(job.job_id, 0, "host-a", lease_s=60) is not None

    class AheadBy120s:  # host B's clock
        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

        def time(self) -> float:
            return time.time() + 120

    monkeypatch.setattr(jobs_module, "time", AheadBy120s())
    assert job_store.reclaim_stale(requeue_after_s=600) == []  # host A's lease is live
    assert job_store.claim(job.job_id, 0, "host-b", lease_s=60) is None
    assert job_store.heartbeat(job.job_id, 0, "host-a", lease_s=60)  # and still host A's


def test_poison_batch_gives_up(job_store: JobStore) -> None:
    jobs = job_store
    job = jobs.create(["PMC1"], batch_size=1)
    for _ in range(MAX_ATTEMPTS):
        assert jobs.claim(job.job_id, 0, "w", lease_s=60) is not None
        jobs.release(job.job_id, 0, "w", "RuntimeError: boom")
    assert jobs.claim(job.job_id, 0, "w", lease_s=60) is None
    final = jobs.get(job.job_id)
    assert final.state == "failed" and final.items[0].status == "failed"
    assert "boom" in final.items[0].reason


class _CrashingIngestor:
    """Breaks the whole batch every time, like a worker dying on it (the batch is released and retried)."""

    def __init__(self, settings: object, limiter: object) -> None:
        pass

    def ingest_ids(self, ids: list[str], refresh: bool = False, progress: object = None) -> list[object]:
        raise RuntimeError("worker died")


def test_a_given_up_batch_marks_its_queued_papers_failed(backend_settings: Settings) -> None:
    """The service reads `queued` as busy (409): a job that is given up must not leave it so forever."""
    settings = backend_settings
    job = enqueue_job(settings, ["PMC5", "PMC6.2", "pmid:77"])
    with open_store(settings) as store:
        assert [store.get_status(p).status for p in ("PMC5", "PMC6")] == ["queued", "queued"]
    runtime = build_runtime(settings, _CrashingIngestor)
    for _ in range(MAX_ATTEMPTS + 1):
        run_batch(runtime, job.job_id, 0)
    final = JobStore.for_settings(settings).get(job.job_id)
    assert final.state == "failed" and {item.status for item in final.items} == {"failed"}
    with open_store(settings) as store:
        for paper_id in ("PMC5", "PMC6"):
            status = store.get_status(paper_id)
            assert status.status == "failed" and "gave up after" in status.reason
