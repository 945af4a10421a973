#!/usr/bin/env python
"""What the jobs table costs a worker, on SQLite (`jobs.sqlite3`) and on PostgreSQL (`PostgresJobStore`).

A worker's job traffic per batch is: claim, one `record` per id, a heartbeat now and then, finish. We run that
cycle for every batch of a job from T threads at once (each thread its own owner, as worker threads are) and
print ids recorded per second and the p50/p95 latency of one `record`. PostgreSQL serializes job writes with
one advisory lock (like SQLite's BEGIN IMMEDIATE), so the table shows what that costs under contention.

    .venv/bin/python bench/bench_jobs.py [--ids 2000] [--batch 25] [--threads 1 4]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]   # a scratch database is made there
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.ingest.jobs import JobStore  # noqa: E402


def drain(jobs: JobStore, n_ids: int, batch: int, threads: int) -> tuple[float, list[float]]:
    job = jobs.create([f"PMC{n}" for n in range(1, n_ids + 1)], batch_size=batch)
    batches = iter(jobs.batches(job.job_id))
    lock = threading.Lock()
    latencies: list[float] = []

    def work(owner: str) -> None:
        mine: list[float] = []
        while True:
            with lock:
                number = next(batches, None)
            if number is None:
                break
            claim = jobs.claim(job.job_id, number, owner, lease_s=60)
            assert claim is not None
            for requested in claim.ids:
                started = time.perf_counter()
                jobs.record(job.job_id, requested, "ingested", paper_id=requested, chunks=3)
                mine.append(time.perf_counter() - started)
            jobs.heartbeat(job.job_id, number, owner, 60)
            jobs.finish(job.job_id, number, owner)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    final = jobs.get(job.job_id, items=False)
    assert final is not None and final.state == "done" and final.counts == {"ingested": n_ids}, final
    return elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    import psycopg

    from pmcqa.core.db import close_pools

    name = f"pmcqa_bench_jobs_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(args.postgres)._replace(path=f"/{name}"))
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            backends = {
                "sqlite": JobStore(Path(tmp) / "jobs.sqlite3"),
                "postgres": JobStore.for_settings(Settings(data_dir=Path(tmp), database_url=url)),
            }
            for backend, jobs in backends.items():
                for threads in args.threads:
                    elapsed, latencies = drain(jobs, args.ids, args.batch, threads)
                    latencies.sort()
                    rows.append((
                        backend, threads, args.ids / elapsed, statistics.median(latencies) * 1000,
                        latencies[int(len(latencies) * 0.95)] * 1000,
                    ))  # fmt: skip
    finally:
        close_pools()
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"{args.ids} ids in batches of {args.batch}; os.cpu_count()={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'backend':<10} {'threads':>7} {'ids/s':>9} {'record p50 ms':>14} {'record p95 ms':>14}")
    for backend, threads, rate, p50, p95 in rows:
        print(f"{backend:<10} {threads:>7} {rate:>9.0f} {p50:>14.2f} {p95:>14.2f}")


if __name__ == "__main__":
    main()
