"""`pmcqa worker --check` (the compose worker's healthcheck); Redis mode without its extra (CLI and API)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from worker_helpers import fake_worker_settings, wait_for

from pmcqa.core.settings import Settings
from pmcqa.ingest.jobs import JobStore, queue_id
from pmcqa.ingest.worker import settings_env


def check(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pmcqa.app.cli", "worker", "--check"],
        env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_check_follows_a_real_worker_of_this_host(tmp_path: Path, workers_factory) -> None:  # type: ignore[no-untyped-def]
    settings = fake_worker_settings(tmp_path)
    before = check(settings)
    assert before.returncode == 1 and "no live worker" in before.stderr  # no worker ever ran here

    workers = workers_factory(settings, PMCQA_INGESTOR_FACTORY="worker_fakes:factory")
    proc = workers.start()
    wait_for(lambda: check(settings).returncode == 0, 60, "the worker to report in")
    alive = check(settings)
    assert f"{socket.gethostname()}:{proc.pid}" in alive.stdout

    workers.stop_all()  # SIGTERM: a graceful stop deregisters the worker
    assert proc.returncode == 0, workers.logs()
    assert check(settings).returncode == 1


def test_a_worker_of_another_host_does_not_count(backend_settings: Settings) -> None:
    settings = backend_settings  # the worker registry in jobs.sqlite3, or in the PostgreSQL library
    JobStore.for_settings(settings).worker_seen("some-other-container:7", queue_id(settings))
    assert check(settings).returncode == 1
    JobStore.for_settings(settings).worker_seen(f"{socket.gethostname()}:7", queue_id(settings))
    assert check(settings).returncode == 0


def test_redis_mode_without_the_extra_names_it(tmp_path: Path) -> None:
    """`pmcqa worker` with PMCQA_REDIS_URL where redis is not importable: one line naming pmcqa[redis]."""
    settings = fake_worker_settings(tmp_path, redis_url="redis://127.0.0.1:9/0")
    # sys.modules[name] = None is how Python itself marks a module as not importable
    code = "import sys; sys.modules['redis'] = None; from pmcqa.app.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "worker"],
        env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "(PMCQA_REDIS_URL) needs" in result.stderr and "pip install 'pmcqa[redis]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_ingest_in_redis_mode_without_the_extra_answers_503_naming_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from pmcqa.app.main import create_app

    monkeypatch.setitem(sys.modules, "redis", None)
    settings = fake_worker_settings(tmp_path, redis_url="redis://127.0.0.1:9/0")
    with TestClient(create_app(settings, library_factory=lambda _settings: object())) as client:
        response = client.post("/ingest", json={"ids": ["PMC11"]})
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "missing_extra" and "pip install 'pmcqa[redis]'" in body["detail"]
