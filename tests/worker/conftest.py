"""Fixtures for worker tests: a reachable Redis (or skip), the job machinery on each library backend, and
worker subprocesses killed at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from worker_helpers import REDIS_URL, WorkerProcesses, fake_worker_settings

from pmcqa.core.settings import Settings
from pmcqa.ingest.jobs import JobStore


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A reachable Redis, or skip; the test's queue keys are removed afterwards by `cleanup_redis`."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except Exception as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    yield REDIS_URL
    client.close()


@pytest.fixture
def workers_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcesses]]:
    made: list[WorkerProcesses] = []

    def make(settings: Settings, ingestor: str | None = None, **extra_env: str) -> WorkerProcesses:
        log_dir = tmp_path / "logs"
        log_dir.mkdir(exist_ok=True)
        procs = WorkerProcesses(settings, log_dir, extra_env, ingestor)
        made.append(procs)
        return procs

    yield make
    for procs in made:
        procs.stop_all()


@pytest.fixture(params=["sqlite", "postgres"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Worker settings on each library backend, no Redis: SQLite files under data_dir (jobs.sqlite3,
    queue.sqlite3), or a fresh PostgreSQL database of the test's own holding the library, the jobs tables and
    the PostgresHuey queue (skipped, saying why, where PostgreSQL is absent)."""
    if request.param == "sqlite":
        return fake_worker_settings(tmp_path)
    url = request.getfixturevalue("scratch_postgres_database")("jobs")
    return fake_worker_settings(tmp_path, database_url=SecretStr(url))


@pytest.fixture
def job_store(backend_settings: Settings) -> JobStore:
    """The JobStore of `backend_settings`: `jobs.sqlite3`, or `PostgresJobStore` in the test's database."""
    return JobStore.for_settings(backend_settings)
