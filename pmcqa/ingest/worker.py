"""Queued ingest jobs on huey: enqueue from request handlers, run in `pmcqa worker` processes.

Three queues, chosen by `settings.redis_url` and `settings.database_url`:
- embedded: `SqliteHuey` at `settings.queue_path` (no server; workers on this machine);
- networked on PostgreSQL (a database URL, no Redis URL): `PostgresHuey` named `settings.queue_name` in the
  library database (huey's own `huey_*` tables, created once under a lock; dequeued with
  `FOR UPDATE SKIP LOCKED`, waiting workers woken by `LISTEN/NOTIFY`), beside the jobs tables, so no job
  state lives in a file;
- networked on Redis (`settings.redis_url`, with either library): `RedisHuey` named `settings.queue_name`.

A job's ids are cut into batches of `settings.job_batch_size`; each batch is one task carrying only
``(job_id, batch)``. Progress lives in the jobs table (`ingest.jobs`), which makes tasks idempotent and
re-deliverable: a worker leases the batch, renews the lease while it runs, records each id's outcome once,
and skips ids already finished. Huey removes a task from the queue before running it, so a SIGKILLed worker
loses its task; every worker therefore re-enqueues, at start and periodically, the batches whose lease
lapsed. `store.put_paper` is atomic and replaces a paper's chunks, so re-running an id cannot duplicate it.

Each recorded outcome is one `pmcqa.ingest.outcome` log line (job id, id, status, the request id that created
the job; JSON fields with `PMCQA_LOG_FORMAT=json`), and a worker serves Prometheus metrics on
`settings.worker_metrics_port` (`ingest.metrics`).

The queue itself can lose tasks (a Redis without persistence restarted): the same periodic scan compares the
batches waiting in the jobs table with the queue's contents and re-enqueues the missing ones after a lease's
length (`requeue_stale`); the job's `notice` says so, and says while the queue cannot be reached.

Stopping: SIGTERM lets the running batches finish; a second SIGTERM (or SIGINT) stops at once, and the
batches still held are released for any worker to re-run (`JobStore.release_owned`). The worker `pmcqa serve`
embeds is stopped that way, and on Linux dies with its parent even if that one is SIGKILLed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from huey import Huey, PostgresHuey, RedisHuey, SqliteHuey

from pmcqa.core.db import connection_pool, postgres_url, redact
from pmcqa.core.extras import MissingExtra, require_extra
from pmcqa.core.ids import paper_key
from pmcqa.core.logs import OUTCOME_LOGGER, request_id
from pmcqa.core.settings import Settings
from pmcqa.core.status import FINAL, IngestState, Status
from pmcqa.index.library import LibraryParts, open_library
from pmcqa.index.store import open_store
from pmcqa.ingest.entrez import ncbi_limiter
from pmcqa.ingest.jobs import QUEUE_BACK, QUEUE_DOWN, Claim, Job, JobStore, queue_id, recovery_interval
from pmcqa.ingest.metrics import BATCH_SECONDS, PAPERS_INGESTED, serve_worker_metrics
from pmcqa.ingest.pipeline import Ingestor
from pmcqa.ingest.resolve import IdResolver

log = logging.getLogger("pmcqa.worker")
outcome_log = logging.getLogger(OUTCOME_LOGGER)

TASK_NAME = "pmcqa.ingest_batch"


class BatchIngestor(Protocol):
    def ingest_ids(self, ids: list[str], refresh: bool = False, progress: Any = None) -> list[Any]: ...


# Builds a worker thread's ingestor from (settings, the worker's rate limiter); `default_ingestor` by default.
IngestorFactory = Callable[[Settings, Any], BatchIngestor]


# --- the queue ---------------------------------------------------------------------------------------------
_HUEYS: dict[tuple[str, ...], tuple[Huey, Any]] = {}
_HUEYS_LOCK = threading.Lock()


def get_huey(settings: Settings) -> Huey:
    """The huey instance for these settings, with the ingest task registered (one per queue per process)."""
    return _queue(settings)[0]


def _queue(settings: Settings) -> tuple[Huey, Any]:
    database_url = postgres_url(settings) or ""
    key = (settings.redis_url or "", database_url, settings.queue_name, str(settings.queue_path))
    with _HUEYS_LOCK:
        entry = _HUEYS.get(key)
        if entry is None:
            huey = _make_huey(settings)
            # A fixed name, so enqueuer and consumer agree whatever module path imported this file.
            entry = _HUEYS[key] = (huey, huey.task(name=TASK_NAME)(_ingest_batch_task))
        return entry


def _make_huey(settings: Settings) -> Huey:
    # results=False: outcomes go to the jobs table, not huey's result store.
    if settings.redis_url:
        require_extra("redis", "Redis mode (PMCQA_REDIS_URL)")
        return RedisHuey(name=settings.queue_name, url=settings.redis_url, results=False)
    database_url = postgres_url(settings)
    if database_url is not None:
        require_extra("postgres", "a PostgreSQL library (PMCQA_DATABASE_URL)")
        # Its own connections (one shared, plus a LISTEN one per consumer thread), not the library's pool:
        # a LISTEN connection is held for as long as the thread waits for work.
        huey = PostgresHuey(name=settings.queue_name, dsn=database_url, results=False, create_tables=False)
        _create_huey_tables(settings, huey.storage.ddl)
        return huey
    settings.queue_path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(name=settings.queue_name, filename=str(settings.queue_path), results=False)


# pg_advisory_xact_lock key held while huey's tables are created in a PostgreSQL library ("pmch" in ASCII).
_HUEY_DDL_LOCK_KEY = 0x706D6368


def _create_huey_tables(settings: Settings, ddl: list[str]) -> None:
    """Run huey's own `CREATE … IF NOT EXISTS` statements once at a time across every process: run at once
    on a new database (APIs and workers starting together) they fail with a unique violation in the
    catalogue (7 of 8 racing threads did), so huey is told not to and they run here, under a lock."""
    with connection_pool(settings).connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_HUEY_DDL_LOCK_KEY,))
        for statement in ddl:
            conn.execute(statement)


def _enqueue_batch(settings: Settings, job_id: str, batch: int) -> None:
    _queue(settings)[1](job_id, batch)  # calling a huey task wrapper enqueues it


def enqueue_job(
    settings: Settings, ids: list[str], refresh: bool = False, jobs: JobStore | None = None
) -> Job:
    """Record a job and enqueue its batches; returns at once.

    The papers it asks for are marked `queued` in the store, so the service refuses questions on them (409)
    until a worker has stored them.
    """
    return submit_job(settings, ids, refresh, jobs)[0]


def submit_job(
    settings: Settings,
    ids: list[str],
    refresh: bool = False,
    jobs: JobStore | None = None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """`enqueue_job` with an idempotency key: (job, created). A key seen before returns its job, enqueues
    nothing and gives False; the same key for another request raises `IdempotencyConflict`."""
    jobs = jobs or JobStore.for_settings(settings)
    job, created = jobs.create_once(
        ids,
        refresh,
        settings.job_batch_size,
        idempotency_key=idempotency_key,
        request_id=request_id.get(),
        same_paper=lambda text: paper_key(text, settings.bare_digits),
    )
    if created:
        record_status(settings, ids, Status.QUEUED)
        for batch in jobs.batches(job.job_id):
            try:
                _enqueue_batch(settings, job.job_id, batch)
            except MissingExtra:  # a broken install, not an outage: the caller says what to install
                raise
            except Exception as exc:  # Redis down: the job is recorded; workers enqueue it once it is back
                log.warning("could not enqueue job %s: %s", job.job_id, exc)
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                notice = (
                    f"{stamp}: the {describe_queue(settings)} {QUEUE_DOWN} ({type(exc).__name__}); "
                    "workers queue this job's batches once it is back"
                )
                jobs.set_notice(job.job_id, notice)
                return (jobs.get(job.job_id, items=False) or job), created
    return job, created


def record_status(settings: Settings, ids: list[str], status: IngestState, reason: str | None = None) -> None:
    """Best effort: set the store's ingest status of the papers `ids` name, where known without NCBI.

    PMCIDs name their paper; PMIDs and DOIs only when the id map already holds them (a resolution needs the
    network, which is the worker's job: it marks them `ingesting` once resolved).
    """
    resolutions = IdResolver(settings, None).resolve_many(ids)
    pmcids = list(dict.fromkeys(r.pmcid for r in resolutions.values() if r.ok and r.pmcid))
    if not pmcids:
        return
    try:
        with open_store(settings) as store:  # no embedder: statuses only
            for pmcid in pmcids:
                store.set_status(pmcid, status, reason)
    except Exception as exc:  # the job matters more than the status table; the worker updates it anyway
        log.warning("could not mark %d papers %s: %s", len(pmcids), status, exc)


def requeue_stale(settings: Settings, jobs: JobStore) -> int:
    """Enqueue again the batches whose worker vanished, or whose task the queue no longer holds."""
    # A never-started batch that is still in the queue is only suspicious after a long wait (a busy queue
    # legitimately holds tasks); one that is neither leased nor queued was lost (its worker died between
    # taking the task and leasing the batch), and is re-queued after a lease's length.
    in_queue = queued_batches(settings)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    if in_queue is None:  # say so on the open jobs, which otherwise look merely slow
        jobs.note_queue_down(f"{stamp}: the {describe_queue(settings)} {QUEUE_DOWN}; waiting for it")
    else:
        jobs.note_queue_back(f"{stamp}: it is {QUEUE_BACK}")
    stale = jobs.reclaim_stale(
        requeue_after_s=max(settings.job_lease_s * 10, 600.0),
        in_queue=in_queue,
        lost_after_s=settings.job_lease_s,
    )
    for job_id, batch in stale:
        log.warning("re-enqueueing job %s batch %s (its lease lapsed or its task was lost)", job_id, batch)
        _enqueue_batch(settings, job_id, batch)
    for job_id in dict.fromkeys(job_id for job_id, _ in stale):
        count = sum(1 for stale_job, _ in stale if stale_job == job_id)
        jobs.set_notice(
            job_id, f"{stamp}: re-queued {count} batch(es): a worker vanished, or the queue lost their tasks"
        )
    return len(stale)


def queued_batches(settings: Settings) -> set[tuple[str, int]] | None:
    """(job, batch) of every task waiting in the queue; None when the queue cannot be read."""
    try:
        tasks = get_huey(settings).pending()
    except Exception as exc:  # an unreadable queue must not make every batch look lost
        log.warning("cannot list the queue: %s", exc)
        return None
    return {(str(task.args[0]), int(task.args[1])) for task in tasks if len(task.args) == 2}


# --- running a batch ---------------------------------------------------------------------------------------
@dataclass
class WorkerRuntime:
    """What a worker process builds once at start-up and its task threads share."""

    settings: Settings
    jobs: JobStore
    limiter: Any
    factory: IngestorFactory
    _local: threading.local = field(default_factory=threading.local)

    def ingestor(self) -> BatchIngestor:
        # One ingestor per worker thread (the pipeline is not assumed thread-safe); they share the limiter.
        ingestor = getattr(self._local, "ingestor", None)
        if ingestor is None:
            ingestor = self._local.ingestor = self.factory(self.settings, self.limiter)
        return ingestor

    @property
    def owner(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


_RUNTIME: WorkerRuntime | None = None
_STOPPING = threading.Event()  # set when this worker process stops: leases are released, not renewed


def _ingest_batch_task(job_id: str, batch: int) -> None:
    if _RUNTIME is None:
        raise RuntimeError("ingest task run outside a pmcqa worker (no runtime configured)")
    started = time.perf_counter()
    try:
        run_batch(_RUNTIME, job_id, batch)
    finally:
        BATCH_SECONDS.observe(time.perf_counter() - started)


def run_batch(runtime: WorkerRuntime, job_id: str, batch: int) -> None:
    owner = runtime.owner

    def given_up(ids: list[str], reason: str) -> None:
        # Those papers may still read `queued` / `ingesting` (a worker died on them): they failed.
        record_status(runtime.settings, ids, Status.FAILED, reason)

    claim = runtime.jobs.claim(job_id, batch, owner, runtime.settings.job_lease_s, on_give_up=given_up)
    if claim is None:
        return  # finished already, or running elsewhere: a duplicate delivery
    job = runtime.jobs.get(job_id, items=False)
    # The log lines of this batch carry the request id of the POST /ingest that created the job.
    request_id.set(job.request_id if job is not None else None)
    log.info("job %s batch %s: %d ids (attempt %d)", job_id, batch, len(claim.ids), claim.attempt)
    try:
        with _heartbeat(runtime, claim, owner):
            if claim.ids:
                _ingest_claim(runtime, claim)
    except Exception as exc:  # the batch as a whole failed: let another try pick it up
        log.exception("job %s batch %s failed", job_id, batch)
        runtime.jobs.release(job_id, batch, owner, f"{type(exc).__name__}: {exc}")
        return
    runtime.jobs.finish(job_id, batch, owner)


def _ingest_claim(runtime: WorkerRuntime, claim: Claim) -> None:
    def record(outcome: Any) -> None:
        fields = outcome_fields(outcome)
        if fields is None or fields["requested"] not in claim.ids:
            return
        if not runtime.jobs.record(claim.job_id, **fields):
            return  # recorded before: counted and logged then
        PAPERS_INGESTED.labels(fields["status"]).inc()
        outcome_log.info(
            "job %s: %s %s",
            claim.job_id,
            fields["requested"],
            fields["status"],
            extra={"job_id": claim.job_id, **fields},
        )

    # `progress` records each outcome as it arrives, so a crash mid-batch does not redo finished ids.
    outcomes = runtime.ingestor().ingest_ids(claim.ids, refresh=claim.refresh, progress=record)
    for outcome in outcomes:
        record(outcome)  # no-op for ids already recorded


def outcome_fields(outcome: Any) -> dict[str, Any] | None:
    """`IngestOutcome` (or a dict of its fields) → `JobStore.record` keywords; None if not final."""
    data = outcome.model_dump() if hasattr(outcome, "model_dump") else outcome
    if not isinstance(data, dict) or data.get("requested") is None:
        return None
    if data.get("status") not in FINAL:
        return None
    return {
        "requested": str(data["requested"]),
        "status": data["status"],
        "paper_id": data.get("paper_id"),
        "reason": data.get("reason"),
        "title": data.get("title"),
        "chunks": data.get("chunks"),
    }


@contextmanager
def _heartbeat(runtime: WorkerRuntime, claim: Claim, owner: str) -> Iterator[None]:
    stop = threading.Event()
    interval = max(runtime.settings.job_lease_s / 3, 0.2)

    def beat() -> None:
        while not stop.wait(interval) and not _STOPPING.is_set():  # a stopping worker has released it
            if not runtime.jobs.heartbeat(claim.job_id, claim.batch, owner, runtime.settings.job_lease_s):
                log.warning("lost the lease on job %s batch %s", claim.job_id, claim.batch)
                return

    thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --- building the runtime ----------------------------------------------------------------------------------
def make_limiter(settings: Settings) -> Any:
    """Redis mode: one limit across every process that calls NCBI; embedded: the process's, which its threads
    and the API's id resolver of the same `pmcqa serve` share (`ingest.entrez.ncbi_limiter`)."""
    return ncbi_limiter(settings)


def default_ingestor(settings: Settings, limiter: Any) -> BatchIngestor:
    """The real pipeline; its Entrez client takes its turns from the worker's (shared) limiter."""
    library = _shared_library(settings)
    return Ingestor(settings, store=library.store, encoder=library.embedder, limiter=limiter)


_LIBRARY: LibraryParts | None = None
_LIBRARY_LOCK = threading.Lock()


def _shared_library(settings: Settings) -> LibraryParts:
    # One store (and one embedding model in memory) per worker process, shared by its threads: thread-safe.
    global _LIBRARY
    with _LIBRARY_LOCK:
        if _LIBRARY is None:
            _LIBRARY = open_library(settings, writable=True)
        return _LIBRARY


def build_runtime(settings: Settings, factory: IngestorFactory = default_ingestor) -> WorkerRuntime:
    return WorkerRuntime(
        settings=settings,
        jobs=JobStore.for_settings(settings),
        limiter=make_limiter(settings),
        factory=factory,
    )


PRUNE_EVERY_S = 600.0  # how often a worker deletes jobs past their retention (job_retention_days)


def _recovery_loop(runtime: WorkerRuntime, stop: threading.Event, name: str) -> None:
    queue = queue_id(runtime.settings)
    pruned_at = float("-inf")  # never yet
    while True:
        try:
            runtime.jobs.worker_seen(name, queue)
            requeue_stale(runtime.settings, runtime.jobs)
            retention_s = runtime.settings.job_retention_days * 86_400
            if retention_s > 0 and time.monotonic() - pruned_at >= PRUNE_EVERY_S:
                pruned_at = time.monotonic()
                if pruned := runtime.jobs.prune(retention_s):
                    log.info("deleted %d finished job(s) older than %g days", pruned, retention_s / 86_400)
        except Exception:  # a locked database or a Redis blip must not kill the loop
            log.exception("stale-batch scan failed")
        if stop.wait(recovery_interval(runtime.settings)):
            return


def run_worker(settings: Settings, workers: int = 1, factory: IngestorFactory = default_ingestor) -> None:
    """Consume the queue in this process until SIGINT/SIGTERM (the `pmcqa worker` command).

    `factory` builds each worker thread's ingestor; the default is the real pipeline.
    """
    global _RUNTIME
    _RUNTIME = build_runtime(settings, factory)
    huey = get_huey(settings)
    name = f"{socket.gethostname()}:{os.getpid()}"
    # The recovery loop's first pass, at once, re-queues the batches a killed worker was running before this
    # start; a queue or database that is down then fails that pass only (logged), not the worker.
    stop = threading.Event()
    threading.Thread(target=_recovery_loop, args=(_RUNTIME, stop, name), name="requeue", daemon=True).start()
    consumer = huey.create_consumer(
        workers=workers, worker_type="thread", periodic=False, initial_delay=0.05, max_delay=1.0,
        graceful_signal="TERM",
    )
    log.info("pmcqa worker: %d thread(s) on %s", workers, describe_queue(settings))
    try:
        with serve_worker_metrics(settings, _RUNTIME.jobs):
            consumer.run()
    finally:
        stop.set()
        _STOPPING.set()
        # A graceful stop finished its batches; an interrupted one hands them back for any worker to re-run
        # now, instead of after their leases lapse.
        released = _RUNTIME.jobs.release_owned(f"{name}:", "the worker stopped before finishing this batch")
        if released:
            log.warning("released %d unfinished batch(es)", released)
        _RUNTIME.jobs.worker_gone(name)


def describe_queue(settings: Settings) -> str:
    if settings.redis_url:
        return f"Redis queue {settings.queue_name!r} at {settings.redis_url}"
    database_url = postgres_url(settings)
    if database_url is not None:
        return f"PostgreSQL queue {settings.queue_name!r} at {redact(database_url)}"
    return f"SQLite queue {settings.queue_path}"


# --- an embedded worker for `pmcqa serve` ------------------------------------------------------------------
def settings_env(settings: Settings) -> dict[str, str]:
    """PMCQA_* variables that rebuild `settings` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if name == "data_dir":
            value = Path(value).resolve()  # the child may not share our notion of "."
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, list):
            value = ",".join(str(item) for item in value)
        env[f"PMCQA_{name.upper()}"] = str(value)
    return env


# How long a stopping embedded worker may take to finish its running batch before it is told to stop now.
STOP_GRACE_S = 10.0


@dataclass
class EmbeddedWorker:
    """A `pmcqa worker` child process; a separate process keeps ingest CPU work off the API's GIL."""

    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        """SIGTERM (finish the running batch); after `timeout` a second SIGTERM (stop now, releasing the
        batch); SIGKILL if even that hangs (safe: the batch's lease lapses and any worker re-runs it)."""
        for signum, wait_s in ((signal.SIGTERM, timeout), (signal.SIGTERM, 5.0)):
            if self.process.poll() is not None:
                return
            self.process.send_signal(signum)
            try:
                self.process.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue
        self.process.kill()
        self.process.wait()


def worker_command(workers: int = 1) -> list[str]:
    """The `pmcqa worker` command line, run with this interpreter."""
    return [sys.executable, "-m", "pmcqa.app.cli", "worker", "--workers", str(workers)]


def start_embedded_worker(
    settings: Settings, workers: int = 1, log_path: Path | None = None, command: list[str] | None = None
) -> EmbeddedWorker:
    """Start a worker beside the API (what `pmcqa serve` does on embedded defaults).

    `command` replaces `worker_command(workers)`, e.g. with a worker built around another ingestor.
    """
    env = {**os.environ, **settings_env(settings)}
    command = command or worker_command(workers)
    stream = open(log_path, "ab") if log_path else None  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        command,
        env=env,
        stdout=stream,
        stderr=subprocess.STDOUT if stream else None,
        preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None,
    )
    return EmbeddedWorker(process)


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """For the child, between fork and exec: SIGTERM it when the parent dies, however the parent dies
    (Linux `prctl(PR_SET_PDEATHSIG)`), so a SIGKILLed `pmcqa serve` leaves no worker behind."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)  # loaded before the fork

    def arrange() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return arrange


def wants_embedded_worker(settings: Settings) -> bool:
    """`pmcqa serve` starts its own worker on embedded defaults; networked (Redis, or a PostgreSQL library and
    its queue) workers run as a service."""
    return not (settings.redis_url or postgres_url(settings))


def serve_with_worker(
    settings: Settings, enabled: bool | None, echo: Callable[[str], None], command: list[str] | None = None
) -> EmbeddedWorker | None:
    """What `pmcqa serve` calls before starting uvicorn: maybe start a worker (`command`, default
    `pmcqa worker`), and say so."""
    if not (wants_embedded_worker(settings) if enabled is None else enabled):
        echo(f"No embedded worker: run `pmcqa worker` to consume the {describe_queue(settings)}.")
        return None
    worker = start_embedded_worker(settings, command=command)
    echo(f"Embedded ingest worker (pid {worker.process.pid}) on the {describe_queue(settings)}.")
    return worker
