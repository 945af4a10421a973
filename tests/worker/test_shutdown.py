"""Stopping `pmcqa serve` and its worker (issue 11, finding 6): SIGTERM or SIGINT stops the API and the worker
within a grace period, the worker finishes (or, told twice, releases) its batch, and a worker never outlives
the `pmcqa serve` that started it, even a SIGKILLed one. Real processes throughout."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from worker_fakes import DELAY_ENV
from worker_helpers import fake_worker_command, fake_worker_settings, free_port, wait_for

from pmcqa.ingest.jobs import JobStore
from pmcqa.ingest.worker import EmbeddedWorker, enqueue_job, settings_env, start_embedded_worker

GRACE_S = 40.0  # generous: API drain (10 s at most) + worker stop, on a busy machine


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_api_and_embedded_worker(tmp_path: Path, signum: int) -> None:
    settings = fake_worker_settings(tmp_path, port=free_port())
    env = {**os.environ, **settings_env(settings)}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    serve = subprocess.Popen(
        [sys.executable, "-m", "pmcqa.app.cli", "serve", "--port", str(settings.port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    children: list[int] = []
    try:
        url = f"http://127.0.0.1:{settings.port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return serve.poll() is not None  # stop waiting if it died

        wait_for(healthy, 180, "pmcqa serve to answer /healthz")
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()
        children += [child.pid for child in psutil.Process(serve.pid).children(recursive=True)]
        assert children, "no embedded worker was started"
        started = time.monotonic()
        serve.send_signal(signum)
        serve.wait(GRACE_S)
        wait_for(lambda: not _alive(children), GRACE_S, "the embedded worker to exit")
        assert time.monotonic() - started < GRACE_S
        assert serve.returncode != 0 or signum == signal.SIGINT  # SIGTERM: exit 143
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for pid in _alive(children):
            os.kill(pid, signal.SIGKILL)
        log.close()


def _batch_row(settings, job_id: str) -> tuple:  # type: ignore[no-untyped-def]
    with sqlite3.connect(settings.data_dir / "jobs.sqlite3") as conn:
        return conn.execute(
            "select done, owner, lease_until, last_error from job_batches where job_id = ?", (job_id,)
        ).fetchone()


def test_sigterm_lets_the_running_batch_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fake_worker_settings(tmp_path, job_lease_s=30.0)
    monkeypatch.setenv(DELAY_ENV, "0.6")  # 5 ids: a 3 s batch
    worker = start_embedded_worker(settings, command=fake_worker_command("slow"))
    try:
        jobs = JobStore.for_settings(settings)
        job = enqueue_job(settings, [f"PMC{n}" for n in range(1, 6)])
        wait_for(lambda: _batch_row(settings, job.job_id)[1], 60, "the worker to take the batch")
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(30)
        finished = jobs.get(job.job_id)
        assert finished is not None and finished.state == "done" and finished.counts == {"ingested": 5}
    finally:
        worker.stop()


def test_a_worker_told_twice_releases_its_batch_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = fake_worker_settings(tmp_path, job_lease_s=600.0)  # a lapse would take 10 minutes
    monkeypatch.setenv(DELAY_ENV, "5")  # 5 ids: a 25 s batch
    worker = start_embedded_worker(settings, command=fake_worker_command("slow"))
    jobs = JobStore.for_settings(settings)
    job = enqueue_job(settings, [f"PMC{n}" for n in range(1, 6)])
    wait_for(lambda: _batch_row(settings, job.job_id)[1], 60, "the worker to take the batch")
    started = time.monotonic()
    EmbeddedWorker(worker.process).stop(timeout=1.0)  # SIGTERM, then after 1 s SIGTERM again
    assert time.monotonic() - started < 15
    done, _owner, lease_until, last_error = _batch_row(settings, job.job_id)
    assert not done and lease_until == 0 and "stopped" in last_error  # released, not left to lapse
    monkeypatch.setenv(DELAY_ENV, "0.05")
    again = start_embedded_worker(settings, command=fake_worker_command("slow"))
    try:  # any worker takes a released batch over at once (no 600 s lease to wait out)
        wait_for(lambda: (j := jobs.get(job.job_id)) and j.state == "done", 60, "the job to finish")
    finally:
        again.stop()


def test_the_embedded_worker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    settings = fake_worker_settings(tmp_path)
    script = (
        "import sys, time\n"
        "from pmcqa.core.settings import Settings\n"
        "from pmcqa.ingest.worker import start_embedded_worker\n"
        f"worker = start_embedded_worker(Settings(), command={fake_worker_command('slow')!r})\n"
        "print(worker.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, **settings_env(settings)}, stdout=subprocess.PIPE, text=True,
    )
    children: list[int] = []
    try:
        assert parent.stdout is not None
        children.append(int(parent.stdout.readline()))
        time.sleep(1.0)  # let the worker get going
        assert _alive(children)
        parent.kill()  # SIGKILL: no clean-up of its own can run
        parent.wait()
        wait_for(lambda: not _alive(children), 30, "the orphaned worker to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in _alive(children):
            os.kill(pid, signal.SIGKILL)
