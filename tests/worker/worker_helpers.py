"""Helpers for worker tests: settings + environment for worker subprocesses, Redis clean-up, waiting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
import uvicorn

from pmcqa.core.settings import Settings
from pmcqa.ingest.worker import settings_env, worker_command

HERE = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("PMCQA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def fake_worker_command(ingestor: str, workers: int = 1) -> list[str]:
    """A worker process around one of `worker_fakes`' ingestors (see run_fake_worker.py)."""
    script = HERE / "run_fake_worker.py"
    return [sys.executable, str(script), "--ingestor", ingestor, "--workers", str(workers), "--verbose"]


class WorkerProcesses:
    """Starts worker children with the test's settings; kills leftovers at teardown.

    With `ingestor` (a name in run_fake_worker.INGESTORS) a child runs that stand-in; without, it is the real
    `python -m pmcqa.app.cli worker`.
    """

    def __init__(
        self, settings: Settings, log_dir: Path, extra_env: dict[str, str], ingestor: str | None = None
    ) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.extra_env = extra_env
        self.ingestor = ingestor
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        env = {**os.environ, **settings_env(self.settings), **self.extra_env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        return env

    def start(self, workers: int = 1) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        if self.ingestor is None:
            command = [*worker_command(workers), "--verbose"]
        else:
            command = fake_worker_command(self.ingestor, workers)
        proc = subprocess.Popen(command, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fake_worker_settings(tmp_path: Path, redis_url: str | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "eutils_url": "http://127.0.0.1:9/entrez/eutils/",
        "idconv_url": "http://127.0.0.1:9/idconv/",
        "ncbi_email": "tests@example.org",
        "queue_name": f"pmcqa-test-{uuid.uuid4().hex[:10]}",
        "job_batch_size": 5,
        "job_lease_s": 2.0,
        "ncbi_requests_per_second": 1000.0,
        "redis_url": redis_url,
    }
    values.update(overrides)
    return Settings(**values)


def cleanup_redis(url: str, queue_name: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"*{queue_name}*"))
    if keys:
        client.delete(*keys)
    client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """An ASGI app on uvicorn, in a background thread, on a free 127.0.0.1 port (a real socket)."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 60, "uvicorn to start")
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
