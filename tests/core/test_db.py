"""Schema versions (`pmcqa.core.db`, alembic) on SQLite and PostgreSQL: a new database is created at the head,
an older one is migrated on open, a newer one is refused, concurrent openers migrate once; plus the settings
and connection errors of the networked library."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from pmcqa.core import db
from pmcqa.core.settings import Settings


def _alembic_upgrade(url: str, revision: str) -> None:
    """Bring a database to `revision` with alembic itself (what an older pmcqa left behind)."""
    import sqlalchemy
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    if url.startswith("postgresql://"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        conn.commit()
    engine.dispose()


def test_schema_version_is_the_head_of_the_alembic_chain() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(config)
    assert script.get_heads() == [db.SCHEMA_REVISION]
    chain = [rev.revision for rev in script.walk_revisions()]  # head first
    assert chain == [f"{n:04d}" for n in range(db.SCHEMA_VERSION, 0, -1)]


# --- SQLite -------------------------------------------------------------------------------------------------


def _sqlite_revision(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def _sqlite_indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_a_sqlite_file_from_before_alembic_is_adopted_and_migrated(settings: Settings) -> None:
    from pmcqa.core.migrations.versions.r0001_baseline import _SQLITE  # the DDL the store used to run itself
    from pmcqa.index.store import DB_NAME, Store

    path = settings.index_dir / DB_NAME
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(_SQLITE)
        conn.execute(
            "INSERT INTO papers(paper_id, status, n_chunks, embedding_model, record_json, created_at,"
            " updated_at) VALUES ('PMC1', 'ingested', 0, 'm', ?, 1, 1)",
            ('{"paper_id": "PMC1", "title": "Old"}',),
        )
    assert "papers_by_updated" not in _sqlite_indexes(path)
    with Store(settings) as store:
        old = store.get_paper("PMC1")
        assert old is not None and old.title == "Old"  # the data survived
    assert _sqlite_revision(path) == db.SCHEMA_REVISION
    assert "papers_by_updated" in _sqlite_indexes(path)


def test_an_older_sqlite_schema_is_migrated_and_a_newer_one_refused(settings: Settings) -> None:
    from pmcqa.index.store import DB_NAME, Store

    path = settings.index_dir / DB_NAME
    path.parent.mkdir(parents=True)
    _alembic_upgrade(f"sqlite:///{path}", "0001")
    assert _sqlite_revision(path) == "0001"
    Store(settings).close()
    assert _sqlite_revision(path) == db.SCHEMA_REVISION

    for newer in ("0099", "f00dfeed"):  # a later version number, or a revision this code has never seen
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE alembic_version SET version_num = ?", (newer,))
        with pytest.raises(db.SchemaTooNew, match=f"schema revision {newer}, newer than this pmcqa knows"):
            Store(settings)
        assert _sqlite_revision(path) == newer  # untouched


def test_concurrent_first_opens_of_a_sqlite_file_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite3"
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_it() -> None:
        try:
            start.wait()
            db.ensure_sqlite_schema(path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(db.SCHEMA_REVISION,)]


# --- PostgreSQL ---------------------------------------------------------------------------------------------


def _pg_settings(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"database_url": SecretStr(url)})


def _pg_query(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    with db.connection_pool(settings).connection() as conn:
        return list(conn.execute(sql).fetchall())


def test_an_older_postgres_schema_is_migrated_and_a_newer_one_refused(
    settings: Settings, scratch_postgres_database: Callable[[str], str]
) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")
    from pmcqa.index.pg_store import PostgresStore

    url = scratch_postgres_database("migrate")
    pg = _pg_settings(settings, url)
    _alembic_upgrade(url, "0001")
    assert _pg_query(pg, "SELECT version_num FROM alembic_version") == [("0001",)]
    assert _pg_query(pg, "SELECT to_regclass('papers_by_updated') IS NULL") == [(True,)]
    PostgresStore(pg).close()
    assert _pg_query(pg, "SELECT version_num FROM alembic_version") == [(db.SCHEMA_REVISION,)]
    assert _pg_query(pg, "SELECT to_regclass('papers_by_updated') IS NULL") == [(False,)]
    assert ("vector_storage", "pgvector") in _pg_query(pg, "SELECT key, value FROM meta")

    _pg_query(pg, "UPDATE alembic_version SET version_num = '0099' RETURNING 1")
    with pytest.raises(db.SchemaTooNew, match="schema revision 0099"):
        PostgresStore(pg)


def test_a_newer_postgres_schema_seen_only_under_the_migration_lock_is_refused(
    settings: Settings, scratch_postgres_database: Callable[[str], str]
) -> None:
    """A host reads an older revision, then waits for the migration lock while a newer pmcqa migrates: once
    it holds the lock it must refuse the newer revision (SchemaTooNew), not hand it to alembic."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")
    url = scratch_postgres_database("late")
    _alembic_upgrade(url, "0001")
    pg = _pg_settings(settings, url)
    raised: list[BaseException] = []

    def open_it() -> None:
        try:
            db.ensure_postgres_schema(pg)
        except BaseException as exc:
            raised.append(exc)

    with psycopg.connect(url, autocommit=True) as newer:  # the newer pmcqa, migrating
        newer.execute("SELECT pg_advisory_lock(%s)", (db._MIGRATION_LOCK_KEY,))
        opener = threading.Thread(target=open_it)
        opener.start()
        waiting = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        deadline = time.monotonic() + 30
        while not newer.execute(waiting, (db._MIGRATION_LOCK_KEY,)).fetchone()[0]:
            assert opener.is_alive() and time.monotonic() < deadline, raised or "never waited for the lock"
            time.sleep(0.02)
        # The opener read 0001 before the lock (its cheap check passed); the newer pmcqa now finishes.
        newer.execute("UPDATE alembic_version SET version_num = '0099'")
        newer.execute("SELECT pg_advisory_unlock(%s)", (db._MIGRATION_LOCK_KEY,))
        opener.join(30)
    assert len(raised) == 1 and isinstance(raised[0], db.SchemaTooNew), raised
    assert raised[0].found == "0099"
    assert _pg_query(pg, "SELECT version_num FROM alembic_version") == [("0099",)]  # untouched


def test_concurrent_first_opens_of_a_postgres_database_migrate_once(
    settings: Settings, scratch_postgres_database: Callable[[str], str]
) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")
    pg = _pg_settings(settings, scratch_postgres_database("race"))
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def open_it() -> None:
        try:
            start.wait()
            db.ensure_postgres_schema(pg)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _pg_query(pg, "SELECT version_num FROM alembic_version") == [(db.SCHEMA_REVISION,)]


def test_a_multi_host_url_migrates_as_it_connects(
    settings: Settings, scratch_postgres_database: Callable[[str], str]
) -> None:
    """libpq's failover form (several host:port pairs) connects; its migration ran into SQLAlchemy's URL
    parser, which cannot read it."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")
    url = scratch_postgres_database("hosts")
    server, database = url.rsplit("/", 1)
    failover = _pg_settings(settings, f"{server},{server.rsplit('@', 1)[1]}/{database}")
    db.ensure_postgres_schema(failover)
    assert _pg_query(failover, "SELECT version_num FROM alembic_version") == [(db.SCHEMA_REVISION,)]


def test_a_data_dir_whose_name_holds_url_characters_is_a_path(tmp_path: Path) -> None:
    for name in ("dq?x=1", "d%41", "d#1"):
        path = tmp_path / name / "index" / "pmcqa.sqlite3"
        path.parent.mkdir(parents=True)
        db.ensure_sqlite_schema(path)
        assert _sqlite_revision(path) == db.SCHEMA_REVISION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d#1", "d%41", "dq?x=1"]  # no stray database


def test_a_library_file_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    not_a_file = tmp_path / "pmcqa.sqlite3"
    not_a_file.mkdir()  # as a folder where the database should be: SQLite cannot open it
    with pytest.raises(db.DatabaseError, match=f"cannot use the library database {not_a_file}"):
        db.ensure_sqlite_schema(not_a_file)


def test_require_existing_names_what_is_missing_and_needs_no_files_with_postgres(tmp_path: Path) -> None:
    missing = tmp_path / "dtaa"
    embedded = Settings(data_dir=missing)
    with pytest.raises(db.LibraryNotFound, match=f"no library at {missing}: check PMCQA_DATA_DIR"):
        db.require_existing(embedded, missing / "index" / "pmcqa.sqlite3")  # the dir is named first
    missing.mkdir()
    with pytest.raises(db.LibraryNotFound) as raised:
        db.require_existing(embedded, missing / "jobs.sqlite3")
    assert raised.value.where == missing / "jobs.sqlite3"
    db.require_existing(embedded)
    # The library is the database: data_dir holds only this host's caches, so no file there is required; the
    # database is asked for pmcqa's tables (tests/app/test_postgres_library.py), and one that cannot be
    # reached says so. Nothing is created either way.
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")
    shared = Settings(data_dir=tmp_path / "nowhere", database_url="postgresql://pmcqa@127.0.0.1:9/pmcqa")
    with pytest.raises(db.DatabaseUnavailable, match="127.0.0.1:9"):
        db.require_existing(shared, tmp_path / "nowhere" / "index" / "pmcqa.sqlite3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dtaa"]


def test_an_unreachable_database_is_a_clear_error(settings: Settings) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    unreachable = _pg_settings(settings, "postgresql://pmcqa:secret@127.0.0.1:9/pmcqa")
    with pytest.raises(db.DatabaseUnavailable) as raised:
        db.connection_pool(unreachable)
    message = str(raised.value)
    assert "127.0.0.1:9" in message and "secret" not in message and "PMCQA_DATABASE_URL" in message


def test_database_url_must_be_postgres() -> None:
    with pytest.raises(ValidationError, match="must be a postgresql:// URL"):
        Settings(database_url="mysql://user@host/db")
    assert Settings(database_url="").database_url is None  # empty = the embedded library
    assert Settings(database_url="postgres://u@h/db").database_url is not None
    spaced = Settings(database_url=" postgresql://u@h/db\n").database_url  # a secret file's newline, say
    assert spaced is not None and spaced.get_secret_value() == "postgresql://u@h/db"
    assert db.redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"


def test_retry_when_locked_retries_only_lock_errors_and_only_until_the_deadline() -> None:
    import sqlite3

    from pmcqa.core.db import retry_when_locked

    calls: list[int] = []

    def locked_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    assert retry_when_locked(locked_twice) == "done" and len(calls) == 3

    def broken() -> None:
        raise sqlite3.OperationalError("no such table: jobs")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_when_locked(broken)

    def always_locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_when_locked(always_locked, timeout_s=0.05)
