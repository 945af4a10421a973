"""The library database below the stores: PostgreSQL connections and the schema version of both backends.

The library lives in SQLite files under `data_dir` (the embedded default) or, when `PMCQA_DATABASE_URL` names
one, in PostgreSQL, so that many hosts share it. This module is what every table owner needs either way:

- **Connections** (PostgreSQL): `connection_pool(settings)` is the process's psycopg pool for the URL, created
  on first use (one per process and URL; a forked child gets its own) and closed at exit. Its connections
  are in autocommit mode: a read is one round trip, a write opens `conn.transaction()`. The paper store, the
  id map and the jobs table share it. psycopg is imported only when a URL is set.
- **Schema versions**: alembic revisions in `pmcqa/core/migrations/versions/`, one chain for both dialects (a
  revision branches on the dialect where they differ). Every store open calls `ensure_sqlite_schema(path)`
  or `ensure_postgres_schema(settings)`: one plain query reads the database's revision; at `SCHEMA_REVISION`
  it returns at once. An older revision, or none (a new database, or a SQLite file written before alembic),
  is upgraded by alembic, imported only then, under a lock (flock beside a SQLite file, an advisory lock in
  PostgreSQL) so concurrent openers migrate once. A newer one is refused (`SchemaTooNew`): a process never
  writes into a schema it does not know.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pmcqa.core.extras import require_extra
from pmcqa.core.settings import Settings

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

# The schema this code reads and writes: revision ids are the version numbers, zero-padded ("0002").
SCHEMA_VERSION = 4
SCHEMA_REVISION = f"{SCHEMA_VERSION:04d}"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_lock key held while a process migrates a PostgreSQL database ("pmcq" in ASCII).
_MIGRATION_LOCK_KEY = 0x706D6371


class DatabaseError(RuntimeError):
    pass


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL could not be reached within `database_connect_timeout_s`."""


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer pmcqa than this one."""

    def __init__(self, where: str, found: str) -> None:
        self.found = found
        super().__init__(
            f"the library database {where} has schema revision {found}, newer than this pmcqa knows "
            f"({SCHEMA_REVISION}); upgrade pmcqa on this host (it never writes a schema it does not know)"
        )


class LibraryNotFound(DatabaseError):
    """A command that only reads was pointed at a library that is not there (a mistyped `PMCQA_DATA_DIR`, a
    PostgreSQL database without pmcqa's tables, or nothing ingested yet): it refuses rather than create an
    empty one. `where` is the missing path, or the database's URL without its password."""

    def __init__(self, where: Path | str, message: str) -> None:
        self.where = where
        super().__init__(message)

    @classmethod
    def at_path(cls, path: Path) -> LibraryNotFound:
        return cls(
            path,
            f"no library at {path}: check PMCQA_DATA_DIR, or ingest papers first (`pmcqa ingest` creates it)",
        )

    @classmethod
    def in_database(cls, url: str) -> LibraryNotFound:
        where = redact(url)
        return cls(
            where,
            f"no library in the PostgreSQL database {where} (it has no pmcqa tables): check "
            "PMCQA_DATABASE_URL, or run `pmcqa ingest` or `pmcqa serve` first (they create them)",
        )


def redact(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def postgres_url(settings: Settings) -> str | None:
    """The PostgreSQL URL of the library, or None for the embedded SQLite library."""
    return settings.database_url.get_secret_value() if settings.database_url else None


def require_existing(settings: Settings, *paths: Path) -> None:
    """For commands that only read: `LibraryNotFound` naming the first of `data_dir` and `paths` (files under
    it) that does not exist, before anything is created. A PostgreSQL library lives in its database (papers,
    jobs, queue): `LibraryNotFound` naming the database where it has no pmcqa schema (opening a store would
    migrate it into one), and a mistyped database URL fails to connect, saying so (`DatabaseUnavailable`).
    What `data_dir` holds beside it on a host (a FAISS copy, model exports) is a cache rebuilt on use, so
    nothing is required there."""
    url = postgres_url(settings)
    if url is not None:
        with connection_pool(settings).connection() as conn:
            if _postgres_revision(conn) is None:
                raise LibraryNotFound.in_database(url)
        return
    for path in (Path(settings.data_dir), *paths):
        if not path.exists():
            raise LibraryNotFound.at_path(path)


# --- PostgreSQL connections ---------------------------------------------------------------------------------

_pools: dict[tuple[int, str], ConnectionPool[Any]] = {}
_pools_lock = threading.Lock()


def connection_pool(settings: Settings) -> ConnectionPool[Any]:
    """The process's connection pool for `settings.database_url` (opened on first use, shared afterwards).

    `DatabaseUnavailable` when no connection could be made within `database_connect_timeout_s`.
    """
    url = postgres_url(settings)
    if url is None:
        raise DatabaseError("connection_pool needs PMCQA_DATABASE_URL (the library is embedded SQLite)")
    key = (os.getpid(), url)  # a forked child must not share its parent's sockets
    with _pools_lock:
        pool = _pools.get(key)
        if pool is not None and not pool.closed:
            return pool
        require_extra("postgres", "a PostgreSQL library (PMCQA_DATABASE_URL)")
        import psycopg  # deferred: only a networked library needs it
        from psycopg_pool import ConnectionPool, PoolTimeout

        try:  # one plain connection first: the pool would only say "timed out", this says why
            psycopg.connect(url, connect_timeout=max(1, round(settings.database_connect_timeout_s))).close()
        except psycopg.OperationalError as exc:
            # All of psycopg's lines: the last is often only a hint ("Is the server running ..."), the cause
            # ("Connection refused") is before it.
            reason = " ".join(line.strip() for line in str(exc).strip().splitlines()) or type(exc).__name__
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {redact(url)}: {reason} (check PMCQA_DATABASE_URL)"
            ) from exc
        pool = ConnectionPool(
            url,
            min_size=1,
            max_size=settings.database_pool_size,
            kwargs={"autocommit": True},
            open=False,
            name=f"pmcqa-{os.getpid()}",
            # A call waits this long for a connection during an outage (psycopg_pool's default is 30 s),
            # and a connection the server dropped (a restart) is replaced, not handed to one request to fail.
            timeout=settings.database_connect_timeout_s,
            check=ConnectionPool.check_connection,
        )
        try:
            pool.open(wait=True, timeout=settings.database_connect_timeout_s)
        except PoolTimeout as exc:
            pool.close()
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {redact(url)} within "
                f"{settings.database_connect_timeout_s:g} s ({exc}); check PMCQA_DATABASE_URL and the server"
            ) from exc
        _pools[key] = pool
        return pool


@atexit.register
def close_pools() -> None:
    """Close this process's pools (at exit; tests call it before dropping a database)."""
    with _pools_lock:
        mine = [key for key in _pools if key[0] == os.getpid()]
        for key in mine:
            with contextlib.suppress(Exception):
                _pools.pop(key).close()


# --- schema versions ----------------------------------------------------------------------------------------


T = TypeVar("T")


def retry_when_locked(operation: Callable[[], T], timeout_s: float = 30.0) -> T:
    """`operation()`, run again while SQLite says the database is locked or busy (for up to `timeout_s`).

    The busy timeout covers most waits but not all: SQLite answers SQLITE_BUSY at once, without calling the
    busy handler, where waiting could deadlock (a statement that reads, then must write after another
    connection committed, in WAL mode) or while another connection recovers the WAL index. Many threads
    opening connections at once meet these on their first statements. `operation` must be idempotent."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if ("locked" not in message and "busy" not in message) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def ensure_sqlite_schema(path: Path) -> None:
    """Bring the SQLite file at `path` (created when absent) to `SCHEMA_REVISION`; `SchemaTooNew` if newer,
    `DatabaseError` naming the file when it cannot be opened (not writable, not a database)."""
    try:
        _ensure_sqlite_schema(path)
    except (sqlite3.Error, PermissionError) as exc:
        text = str(exc)
        hint = (
            " (PMCQA_DATA_DIR must be a writable folder: SQLite writes its -wal and -shm files beside the "
            "database, even to read it)"
            if isinstance(exc, PermissionError) or "readonly" in text or "unable to open" in text
            else ""
        )
        raise DatabaseError(f"cannot use the library database {path}: {text}{hint}") from exc


def _ensure_sqlite_schema(path: Path) -> None:
    where = str(path)
    if _sqlite_revision(path) == SCHEMA_REVISION:
        return
    with _flock(path.with_name(path.name + ".lock")):
        found = _sqlite_revision(path)  # another process may have migrated while we waited
        if found == SCHEMA_REVISION:
            return
        _refuse_newer(where, found)
        _upgrade(path.resolve(), where, found)


def ensure_postgres_schema(settings: Settings) -> None:
    """Bring the PostgreSQL database to `SCHEMA_REVISION`; `SchemaTooNew` if it is newer."""
    url = postgres_url(settings)
    assert url is not None
    where = redact(url)
    with connection_pool(settings).connection() as conn:
        found = _postgres_revision(conn)
    if found == SCHEMA_REVISION:
        return
    _refuse_newer(where, found)
    _upgrade(url, where, found)


def _sqlite_revision(path: Path) -> str | None:
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(path, timeout=60.0)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "alembic_version" in tables:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            return None if row is None else str(row[0])
        if "meta" in tables:  # a file from before alembic: its version lived in meta (1 = the baseline)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and int(row[0]) > 1:
                return f"{int(row[0]):04d}"
    return None


def _postgres_revision(conn: Any) -> str | None:
    exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()[0]
    if not exists:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def _refuse_newer(where: str, found: str | None) -> None:
    """Cheap refusal of a numerically newer revision (alembic checks unknown ones in `_upgrade`)."""
    if found is not None and found.isdigit() and int(found) > SCHEMA_VERSION:
        raise SchemaTooNew(where, found)


def _upgrade(target: Path | str, where: str, found: str | None) -> None:
    """Run alembic's upgrade to head on the SQLite file `target` or the PostgreSQL URL `target` (heavy
    imports happen here, only when a migration is due)."""
    import sqlalchemy
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    scripts = ScriptDirectory.from_config(config)

    def refuse_unknown(revision: str | None) -> None:
        _refuse_newer(where, revision)
        if revision is not None:
            try:
                scripts.get_revision(revision)
            except CommandError as exc:
                raise SchemaTooNew(where, revision) from exc

    refuse_unknown(found)
    if isinstance(target, Path):
        # Built, not parsed: a path holding "?" or "%" is a path (parsed, it opened another file).
        url = sqlalchemy.engine.URL.create("sqlite", database=str(target))
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    else:
        import psycopg

        # psycopg connects, as the pool does: any URL it takes (several hosts, for failover) migrates too.
        engine = sqlalchemy.create_engine(
            "postgresql+psycopg://",
            creator=lambda: psycopg.connect(target),
            poolclass=sqlalchemy.pool.NullPool,
        )
    try:
        # NullPool: closing this connection ends the session, which also releases the advisory lock.
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({_MIGRATION_LOCK_KEY})"))
                exists = conn.execute(sqlalchemy.text("SELECT to_regclass('alembic_version') IS NOT NULL"))
                current = (
                    conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
                    if exists.scalar()
                    else None
                )
                conn.commit()
                if current == SCHEMA_REVISION:  # another host migrated while we waited for the lock
                    return
                refuse_unknown(current)  # ... or a newer pmcqa did
            log.info("migrating the library database %s from %s to %s", where, found or "-", SCHEMA_REVISION)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pgvector_usable(conn: Any) -> bool:
    """Whether the `vector` extension is (or could just now be) created in the database behind `conn`.

    Called by the baseline migration (SQLAlchemy connection, inside its transaction). Creating an extension
    needs a superuser unless a DBA created it beforehand; a failure is logged and answered False.
    """
    import sqlalchemy

    if conn.execute(sqlalchemy.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).scalar():
        return True
    if not conn.execute(
        sqlalchemy.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).scalar():
        log.warning("pgvector is not installed on this PostgreSQL server (scripts/pgvector.sh installs it)")
        return False
    try:
        with conn.begin_nested():
            conn.execute(sqlalchemy.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sqlalchemy.exc.DBAPIError as exc:
        log.warning(
            "could not create the pgvector extension (%s); a superuser can: CREATE EXTENSION vector", exc
        )
        return False
    return True
