"""Fixtures for worker tests: a reachable Redis (or skip) and worker subprocesses killed at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from worker_helpers import REDIS_URL, WorkerProcesses

from pmcqa.core.settings import Settings


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
