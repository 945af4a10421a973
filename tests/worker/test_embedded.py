"""The embedded worker `pmcqa serve` starts, and the `pmcqa jobs` command following a job to its end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from worker_helpers import fake_worker_command, fake_worker_settings, wait_for

from pmcqa.ingest.jobs import JobStore, live_workers
from pmcqa.ingest.worker import enqueue_job, serve_with_worker, settings_env


def test_embedded_worker_drains_the_sqlite_queue(tmp_path: Path) -> None:
    settings = fake_worker_settings(tmp_path)
    said: list[str] = []
    # embedded defaults → a worker starts (around the stand-in ingestor)
    worker = serve_with_worker(settings, None, said.append, command=fake_worker_command("slow"))
    assert worker is not None and "SQLite queue" in said[0]
    try:
        jobs = JobStore.for_settings(settings)
        job = enqueue_job(settings, ["PMC11", "PMC12", "PMC13"])
        wait_for(lambda: (j := jobs.get(job.job_id)) and j.finished, 60, "the job to finish")
        assert jobs.get(job.job_id).counts == {"ingested": 3}
        assert live_workers(settings)  # it reports itself alive, so the CLI can tell
        result = subprocess.run(
            [sys.executable, "-m", "pmcqa.app.cli", "jobs", job.job_id, "--wait", "--json"],
            env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"] == "done"

        # `pmcqa ingest` sees the live worker, so it queues a job and follows it (exit 1: one not-found).
        ingest = subprocess.run(
            [sys.executable, "-m", "pmcqa.app.cli", "ingest", "PMC21", "PMC29", "--json"],
            env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=60,
        )
        assert ingest.returncode == 1, ingest.stderr
        outcomes = json.loads(ingest.stdout)
        pairs = [(o["requested"], o["status"]) for o in outcomes]
        assert pairs == [("PMC21", "ingested"), ("PMC29", "not-found")]
        assert [job.total for job in jobs.list()] == [2, 3]  # it went through the queue, not inline
        detached = subprocess.run(
            [sys.executable, "-m", "pmcqa.app.cli", "ingest", "PMC31", "--no-wait", "--json"],
            env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=60,
        )
        assert detached.returncode == 0 and jobs.get(json.loads(detached.stdout)["job_id"]) is not None
    finally:
        worker.stop()
    assert worker.process.returncode is not None
    assert not live_workers(settings)  # a graceful stop deregisters it


def test_redis_mode_starts_no_embedded_worker(tmp_path: Path) -> None:
    settings = fake_worker_settings(tmp_path, redis_url="redis://127.0.0.1:6379/0")
    said: list[str] = []
    assert serve_with_worker(settings, None, said.append) is None
    assert "pmcqa worker" in said[0]


def test_a_postgres_library_starts_no_embedded_worker(tmp_path: Path) -> None:
    """A PostgreSQL library queues in PostgreSQL (PostgresHuey): networked, so workers run as a service."""
    settings = fake_worker_settings(tmp_path, database_url="postgresql://pmcqa:secret@db.invalid:5432/pmcqa")
    said: list[str] = []
    assert serve_with_worker(settings, None, said.append) is None
    assert "pmcqa worker" in said[0] and "PostgreSQL queue 'pmcqa-test-" in said[0]
    assert "secret" not in said[0]  # the password is not printed
