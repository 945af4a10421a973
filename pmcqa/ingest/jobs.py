"""Ingest jobs and their per-id progress, persisted in SQLite under `data_dir` (survives restarts), or in
the PostgreSQL library when `PMCQA_DATABASE_URL` names one (`PostgresJobStore`: every host shares them).

A job is a list of ids cut into batches; each batch is one queue task. The queue only carries
``(job_id, batch)``: the truth lives here, so a task is idempotent and may be delivered more than once.

- ``claim`` takes a time-limited lease on a batch and returns its still-pending ids (finished ones are
  skipped); a worker renews the lease (``heartbeat``) while it runs.
- ``record`` stores an id's outcome at most once (only a pending id is updated).
- ``reclaim_stale`` finds batches whose worker vanished (lease lapsed; or enqueued long ago and never
  started) so a worker can enqueue them again. That is what makes a SIGKILLed worker harmless: huey deletes a
  task from the queue before running it, so a killed worker loses the task, but not the batch.
- ``create_once`` honours an idempotency key: the same key with the same request returns the job it created,
  with another request it is refused (`IdempotencyConflict`).
- A job's ``notice`` says what recovery happened (batches re-queued) and while the queue cannot be reached
  (``note_queue_down`` / ``note_queue_back``).
- ``release_owned``: a worker that stops hands its unfinished batches back at once instead of letting their
  leases lapse.

Times are stored as Unix seconds and shown as ISO 8601 (UTC) datetimes.

Both backends run the same SQL text (qmark placeholders; `PostgresJobStore` rewrites them, and SQLite's
`instr` as `strpos`), so the job logic exists once: only opening a transaction differs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from pmcqa.core.db import connection_pool, ensure_postgres_schema, postgres_url, retry_when_locked
from pmcqa.core.settings import Settings
from pmcqa.core.status import FINAL, ItemStatus, Status

JobState = Literal["queued", "running", "done", "failed"]

# A batch that crashes its worker this many times is given up (its pending ids fail) instead of looping.
MAX_ATTEMPTS = 5
QUEUE_DOWN = "cannot be reached"  # what a notice says while the queue is down
QUEUE_BACK = "reachable again"  # ... and once it answers again

_SCHEMA = """
create table if not exists jobs (
    id text primary key,
    created real not null,
    updated real not null,
    state text not null,
    refresh integer not null default 0,
    total integer not null,
    error text,
    notice text
);
create table if not exists job_items (
    job_id text not null references jobs(id) on delete cascade,
    position integer not null,
    requested text not null,
    batch integer not null,
    status text not null default 'pending',
    paper_id text,
    reason text,
    title text,
    chunks integer,
    finished real,
    primary key (job_id, position)
);
create index if not exists job_items_batch on job_items(job_id, batch, status);
create table if not exists job_batches (
    job_id text not null references jobs(id) on delete cascade,
    batch integer not null,
    done integer not null default 0,
    enqueued real,
    owner text,
    lease_until real,
    attempts integer not null default 0,
    last_error text,
    primary key (job_id, batch)
);
create index if not exists job_batches_open on job_batches(done, lease_until);
create table if not exists workers (
    name text primary key,
    queue text not null,
    last_seen real not null
);
create index if not exists jobs_created on jobs(created);
"""

# Columns added after the first release: (table, column, declaration), added to older databases at open.
_ADDED_COLUMNS = (
    ("jobs", "idempotency_key", "text"),
    ("jobs", "fingerprint", "text"),
    ("jobs", "request_id", "text"),
    ("jobs", "notice", "text"),
)
_AFTER_MIGRATION = """
create unique index if not exists jobs_idempotency_key on jobs(idempotency_key)
    where idempotency_key is not null;
"""


class _Conn(Protocol):
    """What the job logic needs of a connection: `sqlite3.Connection`, or `_PostgresConn` around psycopg's."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...


class IdempotencyConflict(ValueError):
    """An idempotency key reused for a different request."""


class AmbiguousJobId(ValueError):
    """A job id prefix that more than one job starts with."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        super().__init__(f"{prefix!r} starts {len(matches)} job ids ({shown}); give more of the id")
        self.matches = matches


def fingerprint(ids: list[str], refresh: bool) -> str:
    """What makes two ingest requests the same request (for idempotency keys)."""
    canonical = json.dumps({"ids": list(dict.fromkeys(ids)), "refresh": bool(refresh)})
    return hashlib.sha256(canonical.encode()).hexdigest()


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class JobItem(BaseModel):
    id: str = Field(description="The id as requested.")
    status: ItemStatus = Status.PENDING
    paper_id: str | None = None
    reason: str | None = None
    title: str | None = None
    chunks: int | None = None


class Job(BaseModel):
    job_id: str
    created: datetime = Field(description="When the job was created (ISO 8601, UTC).")
    updated: datetime = Field(description="When anything about it last changed (ISO 8601, UTC).")
    state: JobState
    refresh: bool = False
    total: int
    counts: dict[str, int] = Field(default_factory=dict, description="Ids per status (pending included).")
    error: str | None = None
    request_id: str | None = Field(None, description="X-Request-ID of the request that created it.")
    notice: str | None = Field(
        None,
        description="What the service noticed and did about this job, e.g. batches re-queued after the queue "
        "lost them, or that the queue cannot be reached right now.",
    )
    items: list[JobItem] | None = Field(None, description="Per-id outcomes, in request order.")

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


class Claim(BaseModel):
    """What a worker may do with a batch it leased."""

    job_id: str
    batch: int
    ids: list[str]
    refresh: bool
    attempt: int


def split_batches(ids: list[str], size: int) -> list[list[str]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


class JobStore:
    """Thread- and process-safe: one short-lived connection per operation, WAL, immediate transactions."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        retry_when_locked(self._create_schema)  # every statement below is idempotent

    def _create_schema(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("pragma journal_mode=wal")  # persistent: readers never block the writer
            conn.executescript(_SCHEMA)
            for table, column, declaration in _ADDED_COLUMNS:
                present = {row[1] for row in conn.execute(f"pragma table_info({table})")}
                if column not in present:
                    try:
                        conn.execute(f"alter table {table} add column {column} {declaration}")
                    except sqlite3.OperationalError as exc:  # another process added it just now
                        if "duplicate column" not in str(exc):
                            raise
            conn.executescript(_AFTER_MIGRATION)
        finally:
            conn.close()

    @classmethod
    def for_settings(cls, settings: object) -> JobStore:
        """The jobs of these settings' library: PostgreSQL with a database URL, else `jobs.sqlite3`."""
        if getattr(settings, "database_url", None) is not None:
            assert isinstance(settings, Settings)
            return PostgresJobStore(settings)
        return cls(Path(settings.data_dir) / "jobs.sqlite3")  # type: ignore[attr-defined]

    @contextmanager
    def _read(self) -> Iterator[_Conn]:
        # SQLite: reads take the same immediate transaction as writes (one consistent view, as always).
        with self._tx() as conn:
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[_Conn]:
        # isolation_level=None + explicit BEGIN IMMEDIATE: the write lock is taken up front, so two workers
        # claiming the same batch serialize instead of failing with "database is locked" mid-transaction.
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("pragma foreign_keys=on")
            conn.execute("begin immediate")
            try:
                yield conn
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")
        finally:
            conn.close()

    # --- creating and reading ----------------------------------------------------------------------------
    def create(
        self, ids: Iterable[str], refresh: bool = False, batch_size: int = 25, request_id: str | None = None
    ) -> Job:
        return self.create_once(ids, refresh, batch_size, request_id=request_id)[0]

    def create_once(
        self,
        ids: Iterable[str],
        refresh: bool = False,
        batch_size: int = 25,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        same_paper: Callable[[str], str] | None = None,
    ) -> tuple[Job, bool]:
        """(job, created): with `idempotency_key`, a key seen before returns its job and False (nothing is
        created); the same key for other ids or `refresh` raises `IdempotencyConflict`.

        `same_paper` keys the spellings of one paper alike (`core.ids.paper_key`; default: the text itself):
        a paper asked for twice is one item, under its first spelling, and a retry may spell it otherwise."""
        firsts: dict[str, str] = {}
        for text in ids:  # a repeated id is ingested once
            firsts.setdefault(same_paper(text) if same_paper else text, text)
        unique = list(firsts.values())
        if not unique:
            raise ValueError("a job needs at least one id")
        job_id = uuid.uuid4().hex
        batches = split_batches(unique, batch_size)
        request = fingerprint(list(firsts), refresh)
        with self._tx() as conn:  # begin immediate: two requests with one key serialize here
            now = self._now(conn)
            if idempotency_key is not None:
                seen = conn.execute(
                    "select id, fingerprint from jobs where idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if seen is not None:
                    if seen[1] != request:
                        raise IdempotencyConflict(
                            f"Idempotency-Key {idempotency_key!r} was used for another request "
                            f"(job {seen[0]})"
                        )
                    job_id = seen[0]
                    batches = []
            if batches:
                conn.execute(
                    "insert into jobs (id, created, updated, state, refresh, total, idempotency_key, "
                    "fingerprint, request_id) values (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                    (job_id, now, now, int(refresh), len(unique), idempotency_key, request, request_id),
                )
            position = 0
            for number, batch in enumerate(batches):
                conn.execute(
                    "insert into job_batches (job_id, batch, enqueued) values (?, ?, ?)",
                    (job_id, number, now),
                )
                for requested in batch:
                    conn.execute(
                        "insert into job_items (job_id, position, requested, batch) values (?, ?, ?, ?)",
                        (job_id, position, requested, number),
                    )
                    position += 1
        job = self.get(job_id, items=False)
        assert job is not None
        return job, bool(batches)

    def find(self, prefix: str) -> Job | None:
        """The job whose id is `prefix` or the only one that starts with it; `AmbiguousJobId` when several."""
        exact = self.get(prefix)
        if exact is not None or not prefix:
            return exact
        with self._read() as conn:
            matches = [
                row[0]
                for row in conn.execute(
                    "select id from jobs where substr(id, 1, ?) = ? order by created desc limit 20",
                    (len(prefix), prefix),
                )
            ]
        if len(matches) > 1:
            raise AmbiguousJobId(prefix, matches)
        return self.get(matches[0]) if matches else None

    def count_by_state(self) -> dict[str, int]:
        with self._read() as conn:
            return dict(conn.execute("select state, count(*) from jobs group by state").fetchall())

    def batches(self, job_id: str) -> list[int]:
        with self._read() as conn:
            rows = conn.execute("select batch from job_batches where job_id = ? order by batch", (job_id,))
            return [row[0] for row in rows]

    def get(self, job_id: str, items: bool = True) -> Job | None:
        with self._read() as conn:
            row = conn.execute(
                "select id, created, updated, state, refresh, total, error, request_id, notice "
                "from jobs where id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                return None
            counts = dict(
                conn.execute(
                    "select status, count(*) from job_items where job_id = ? group by status", (job_id,)
                ).fetchall()
            )
            job_items = None
            if items:
                job_items = [
                    JobItem(id=r[0], status=r[1], paper_id=r[2], reason=r[3], title=r[4], chunks=r[5])
                    for r in conn.execute(
                        "select requested, status, paper_id, reason, title, chunks from job_items "
                        "where job_id = ? order by position",
                        (job_id,),
                    )
                ]
        return Job(
            job_id=row[0],
            created=_utc(row[1]),
            updated=_utc(row[2]),
            state=row[3],
            refresh=bool(row[4]),
            total=row[5],
            error=row[6],
            request_id=row[7],
            notice=row[8],
            counts=counts,
            items=job_items,
        )

    def list(self, limit: int = 20) -> list[Job]:
        with self._read() as conn:
            ids = [r[0] for r in conn.execute("select id from jobs order by created desc limit ?", (limit,))]
        return [job for job in (self.get(job_id, items=False) for job_id in ids) if job is not None]

    def prune(self, older_than_s: float) -> int:
        """Delete finished jobs (done, failed) last updated more than `older_than_s` ago, with their items
        and batches (and so their idempotency keys): the tables would otherwise grow with every job ever run.
        Returns how many jobs went."""
        with self._tx() as conn:
            cursor = conn.execute(
                "delete from jobs where state in ('done', 'failed') and updated < ?",
                (self._now(conn) - older_than_s,),
            )
            return int(cursor.rowcount or 0)

    # --- the worker's side -------------------------------------------------------------------------------
    def claim(
        self,
        job_id: str,
        batch: int,
        owner: str,
        lease_s: float,
        on_give_up: Callable[[list[str], str], None] | None = None,
    ) -> Claim | None:
        """Lease a batch; None when it is finished, unknown, or leased by a live worker.

        A batch past `MAX_ATTEMPTS` is given up: its pending ids fail, and `on_give_up(ids, reason)` is told
        which (after the commit), so the caller can supersede what it recorded elsewhere about them.
        """
        claim: Claim | None = None
        failed: list[str] | None = None
        reason = ""
        with self._tx() as conn:
            now = self._now(conn)  # the database's clock: hosts' clocks may disagree by more than a lease
            row = conn.execute(
                "select done, owner, lease_until, attempts, last_error from job_batches "
                "where job_id = ? and batch = ?",
                (job_id, batch),
            ).fetchone()
            if row is None or row[0]:
                return None
            _, holder, lease_until, attempts, last_error = row
            if lease_until is not None and lease_until > now and holder != owner:
                return None  # another worker holds it (a duplicate delivery): leave it alone
            attempts += 1
            if attempts > MAX_ATTEMPTS:
                reason = f"gave up after {MAX_ATTEMPTS} attempts: {last_error}"
                failed = self._give_up(conn, job_id, batch, reason)
            else:
                claim = self._lease(conn, job_id, batch, owner, now + lease_s, attempts)
        if failed is not None:
            if on_give_up is not None and failed:
                on_give_up(failed, reason)
            return None
        return claim

    @staticmethod
    def _lease(conn: _Conn, job_id: str, batch: int, owner: str, until: float, attempts: int) -> Claim:
        conn.execute(
            "update job_batches set owner = ?, lease_until = ?, attempts = ? where job_id = ? and batch = ?",
            (owner, until, attempts, job_id, batch),
        )
        conn.execute(
            "update jobs set state = 'running', updated = ? where id = ? and state = 'queued'",
            (time.time(), job_id),
        )
        ids = [
            r[0]
            for r in conn.execute(
                "select requested from job_items where job_id = ? and batch = ? and status = ? "
                "order by position",
                (job_id, batch, Status.PENDING),
            )
        ]
        refresh = bool(conn.execute("select refresh from jobs where id = ?", (job_id,)).fetchone()[0])
        return Claim(job_id=job_id, batch=batch, ids=ids, refresh=refresh, attempt=attempts)

    def heartbeat(self, job_id: str, batch: int, owner: str, lease_s: float) -> bool:
        """Extend a lease; False if it was lost (then another worker may have taken the batch over)."""
        with self._tx() as conn:
            cursor = conn.execute(
                "update job_batches set lease_until = ? "
                "where job_id = ? and batch = ? and owner = ? and done = 0",
                (self._now(conn) + lease_s, job_id, batch, owner),
            )
            return cursor.rowcount == 1

    def record(
        self,
        job_id: str,
        requested: str,
        status: str,
        paper_id: str | None = None,
        reason: str | None = None,
        title: str | None = None,
        chunks: int | None = None,
    ) -> bool:
        """Store one id's outcome; only a pending id changes, so a re-delivered batch cannot overwrite it."""
        if status not in FINAL:
            raise ValueError(f"not a final status: {status}")
        with self._tx() as conn:
            now = self._now(conn)
            cursor = conn.execute(
                "update job_items set status = ?, paper_id = ?, reason = ?, title = ?, chunks = ?, "
                "finished = ? "
                "where job_id = ? and requested = ? and status = ?",
                (status, paper_id, reason, title, chunks, now, job_id, requested, Status.PENDING),
            )
            conn.execute("update jobs set updated = ? where id = ?", (now, job_id))
            return cursor.rowcount == 1

    def finish(self, job_id: str, batch: int, owner: str) -> None:
        """Close a batch if none of its ids is pending, and the job if all its batches are closed."""
        with self._tx() as conn:
            now = self._now(conn)
            pending = conn.execute(
                "select count(*) from job_items where job_id = ? and batch = ? and status = ?",
                (job_id, batch, Status.PENDING),
            ).fetchone()[0]
            if pending:
                # Something was left undone (should not happen): expire the lease so it is re-run.
                conn.execute(
                    "update job_batches set lease_until = 0, last_error = ? where job_id = ? and batch = ? "
                    "and owner = ?",
                    (f"{pending} ids left pending", job_id, batch, owner),
                )
                return
            conn.execute(
                "update job_batches set done = 1, lease_until = null where job_id = ? and batch = ?",
                (job_id, batch),
            )
            self._close_job_if_finished(conn, job_id, now)

    def release(self, job_id: str, batch: int, owner: str, error: str) -> None:
        """A batch failed as a whole (e.g. the network is down): expire the lease so it is retried soon."""
        with self._tx() as conn:
            conn.execute(
                "update job_batches set lease_until = 0, last_error = ? where job_id = ? and batch = ? "
                "and owner = ?",
                (error[:2000], job_id, batch, owner),
            )

    def reclaim_stale(
        self,
        requeue_after_s: float,
        in_queue: set[tuple[str, int]] | None = None,
        lost_after_s: float = 0.0,
    ) -> list[tuple[str, int]]:
        """Batches to enqueue again: lease lapsed; or never started and either queued longer than
        `requeue_after_s` or, when the caller knows the queue's contents (`in_queue`), missing from the queue
        for longer than `lost_after_s` (a worker killed between taking the task and leasing its batch, or a
        queue that lost its data).

        The update marks them re-enqueued in the same transaction, so two workers scanning at once do not
        both enqueue the same batch (and a duplicate would be harmless anyway: `claim` filters it).
        """
        with self._tx() as conn:
            now = self._now(conn)
            stale = conn.execute(
                "select job_id, batch, lease_until from job_batches where done = 0 and ("
                "(lease_until is not null and lease_until < ?) "
                "or (lease_until is null and (enqueued is null or enqueued < ?)))",
                (now, now - requeue_after_s),
            ).fetchall()
            # A never-started batch the queue visibly holds is waiting its turn behind a backlog, not lost:
            # enqueueing it again would only add a copy per scan.
            found = {
                (job_id, batch)
                for job_id, batch, lease_until in stale
                if lease_until is not None or in_queue is None or (job_id, batch) not in in_queue
            }
            if in_queue is not None:
                unleased = conn.execute(
                    "select job_id, batch from job_batches where done = 0 and lease_until is null "
                    "and enqueued < ?",
                    (now - lost_after_s,),
                ).fetchall()
                found.update((row[0], row[1]) for row in unleased if (row[0], row[1]) not in in_queue)
            conn.executemany(
                "update job_batches set owner = null, lease_until = null, enqueued = ? "
                "where job_id = ? and batch = ?",
                [(now, job_id, batch) for job_id, batch in sorted(found)],
            )
        return sorted(found)

    def set_notice(self, job_id: str, notice: str) -> None:
        with self._tx() as conn:
            conn.execute("update jobs set notice = ? where id = ?", (notice, job_id))

    def note_queue_down(self, notice: str) -> None:
        """Set `notice` (which says `QUEUE_DOWN`) on every open job not told so already."""
        with self._tx() as conn:
            conn.execute(
                "update jobs set notice = ? where state in ('queued', 'running') "
                "and (instr(coalesce(notice, ''), ?) = 0 or instr(notice, ?) > 0)",
                (notice, QUEUE_DOWN, QUEUE_BACK),
            )

    def note_queue_back(self, notice: str) -> None:
        """Append `notice` (which says `QUEUE_BACK`) to a `QUEUE_DOWN` notice: the queue answers again."""
        with self._tx() as conn:
            conn.execute(
                "update jobs set notice = notice || '; ' || ? where instr(coalesce(notice, ''), ?) > 0 "
                "and instr(notice, ?) = 0",
                (notice, QUEUE_DOWN, QUEUE_BACK),
            )

    def release_owned(self, owner_prefix: str, error: str) -> int:
        """Expire the leases held by owners starting with `owner_prefix` (a stopping worker process), so
        any worker re-runs those batches at once; returns how many."""
        with self._tx() as conn:
            cursor = conn.execute(
                "update job_batches set lease_until = 0, last_error = ? "
                "where done = 0 and substr(owner, 1, ?) = ? and lease_until > 0",
                (error[:2000], len(owner_prefix), owner_prefix),
            )
            return cursor.rowcount

    # --- worker liveness (so the CLI can say "no worker is running") --------------------------------------
    def worker_seen(self, name: str, queue: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "insert into workers (name, queue, last_seen) values (?, ?, ?) "
                "on conflict(name) do update set queue = excluded.queue, last_seen = excluded.last_seen",
                (name, queue, self._now(conn)),
            )

    def worker_gone(self, name: str) -> None:
        with self._tx() as conn:
            conn.execute("delete from workers where name = ?", (name,))

    def live_workers(self, queue: str, within_s: float) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                "select name from workers where queue = ? and last_seen > ? order by name",
                (queue, self._now(conn) - within_s),
            )
            return [row[0] for row in rows]

    # --- internals ---------------------------------------------------------------------------------------
    def _now(self, conn: _Conn) -> float:
        """The time leases and ages are measured on: this host's clock (one SQLite file, one host)."""
        return time.time()

    def _give_up(self, conn: _Conn, job_id: str, batch: int, reason: str) -> list[str]:
        """Fail the batch's pending ids and close it; returns those ids."""
        now = self._now(conn)
        failed = conn.execute(
            "update job_items set status = ?, reason = ?, finished = ? "
            "where job_id = ? and batch = ? and status = ? returning requested",
            (Status.FAILED, reason, now, job_id, batch, Status.PENDING),
        ).fetchall()
        conn.execute(
            "update job_batches set done = 1, lease_until = null, last_error = ? "
            "where job_id = ? and batch = ?",
            (reason, job_id, batch),
        )
        conn.execute("update jobs set error = ? where id = ?", (reason, job_id))
        self._close_job_if_finished(conn, job_id, now)
        return [row[0] for row in failed]

    @staticmethod
    def _close_job_if_finished(conn: _Conn, job_id: str, now: float) -> None:
        open_batches = conn.execute(
            "select count(*) from job_batches where job_id = ? and done = 0", (job_id,)
        ).fetchone()[0]
        if open_batches:
            return
        # "failed" = the job itself broke (a batch was given up); per-id failures still make a "done" job.
        error = conn.execute("select error from jobs where id = ?", (job_id,)).fetchone()[0]
        state = "failed" if error else "done"
        conn.execute("update jobs set state = ?, updated = ? where id = ?", (state, now, job_id))


# pg_advisory_xact_lock key of the jobs tables ("pmcj" in ASCII): held by every job write until its commit.
_JOBS_LOCK_KEY = 0x706D636A


@lru_cache(maxsize=256)
def _postgres_sql(sql: str) -> str:
    # The job SQL is written for SQLite; none of it contains a literal "?" or "%", so this is exact.
    return sql.replace("?", "%s").replace("instr(", "strpos(")


class _PostgresConn:
    """A psycopg connection inside its transaction, speaking the SQLite-flavoured SQL of `JobStore`."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(_postgres_sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cursor = self._conn.cursor()
        rows = list(rows)
        if rows:
            cursor.executemany(_postgres_sql(sql), rows)
        return cursor


class PostgresJobStore(JobStore):
    """`JobStore` on the PostgreSQL library: the tables of alembic revision 0004, the process's pool.

    Every write transaction first takes one transaction-scoped advisory lock, PostgreSQL's equivalent of the
    SQLite store's `BEGIN IMMEDIATE`: job writes serialize across every host, so a claim, an idempotency-key
    check or a stale-batch scan reads exactly what it then updates. They are a few short statements per
    paper, so one lock costs nothing measurable next to ingesting the paper. Reads take no lock: one
    repeatable-read snapshot each.
    """

    def __init__(self, settings: Settings) -> None:  # noqa: D107 - no SQLite file: the base __init__ is skipped
        if postgres_url(settings) is None:
            raise ValueError("PostgresJobStore needs PMCQA_DATABASE_URL")
        self.settings = settings
        ensure_postgres_schema(settings)  # revision 0004 creates the jobs tables
        self._pool = connection_pool(settings)

    @contextmanager
    def _tx(self) -> Iterator[_Conn]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_JOBS_LOCK_KEY,))
            yield _PostgresConn(conn)

    @contextmanager
    def _read(self) -> Iterator[_Conn]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield _PostgresConn(conn)

    def _now(self, conn: _Conn) -> float:
        # The database server's clock, which every host shares: one whose own clock runs a lease ahead would
        # take live leases for lapsed ones, and two hosts would run one batch.
        return float(conn.execute("SELECT extract(epoch from clock_timestamp())").fetchone()[0])


# --- which workers serve a queue: what workers record, the CLI reads (without the worker's code) -----------
def recovery_interval(settings: Settings) -> float:
    return min(max(settings.job_lease_s / 2, 0.5), 30.0)


def queue_id(settings: Settings) -> str:
    """Which queue a worker serves, as recorded in the workers table."""
    if settings.redis_url:
        return f"redis:{settings.queue_name}"
    return f"postgres:{settings.queue_name}" if postgres_url(settings) else f"sqlite:{settings.queue_name}"


def live_workers(settings: Settings, jobs: JobStore | None = None) -> list[str]:
    if jobs is None:
        if postgres_url(settings) is None and not settings.jobs_path.exists():
            return []  # no worker ever ran here; do not create the database just to ask
        jobs = JobStore.for_settings(settings)
    return jobs.live_workers(queue_id(settings), within_s=recovery_interval(settings) * 3 + 5)

