"""A Redis queue that loses its data (issue 11, finding 11): a Redis without persistence is killed while a job
waits in it. GET /jobs/{id} says the queue cannot be reached, and once Redis is back (empty) the lost batches
are re-queued within seconds, not after the 600 s never-started rule. Real processes: a redis-server of the
test's own on a free port (never the shared 6379), a worker process, the API on a socket."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from worker_fakes import DELAY_ENV
from worker_helpers import LiveServer, fake_worker_settings, free_port, wait_for

from pmcqa.app.main import create_app


class RedisServer:
    """A redis-server that keeps nothing on disk (as in the finding), started and killed by the test."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(answers, 30, "redis-server to start")
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def _stub_library(settings):  # type: ignore[no-untyped-def]
    # /ingest and /jobs never touch the library; a stub keeps the embedding model out of this test.
    return SimpleNamespace(settings=settings, store=None, close=lambda: None)


def test_batches_a_restarted_redis_lost_are_requeued_and_the_job_says_so(
    tmp_path: Path, redis_server: RedisServer, workers_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = fake_worker_settings(tmp_path, redis_url=redis_server.url, job_lease_s=2.0)
    monkeypatch.setenv(DELAY_ENV, "0.5")  # batches of 5: 2.5 s each, one worker thread
    ids = [f"PMC{100 + n}" for n in range(15)]
    with LiveServer(create_app(settings, library_factory=_stub_library)) as api:
        http = httpx.Client(base_url=api.url, timeout=30)
        job_id = http.post("/ingest", json={"ids": ids}).json()["job_id"]
        workers_factory(settings, ingestor="slow").start(workers=1)

        def job() -> dict:
            return http.get(f"/jobs/{job_id}").json()

        wait_for(lambda: job()["state"] == "running", 60, "the worker to start on the job")
        redis_server.kill()  # two batches still waited in Redis: gone with it
        down = wait_for(lambda: "cannot be reached" in (job()["notice"] or "") and job(), 30, "the notice")
        assert down["state"] == "running" and down["counts"].get("pending")

        redis_server.start()  # back, and empty
        back = time.monotonic()
        done = wait_for(lambda: (j := job())["state"] == "done" and j, 90, "the job to finish")
        assert time.monotonic() - back < 60  # it sat 600 s before
        assert done["counts"] == {"ingested": 14, "not-found": 1}
        assert "re-queued" in done["notice"], done["notice"]
        http.close()
