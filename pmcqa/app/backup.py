"""`pmcqa backup DEST`: a consistent copy of the embedded library, taken while `pmcqa serve` and workers run.

Copying the data dir by hand while it is written tears SQLite files in WAL mode (the database file and its
-wal copied at different moments). Here every SQLite database is copied with SQLite's online backup API, in
one step inside one read transaction: the copy is that transaction's snapshot, whatever writers commit
meanwhile (WAL readers do not block them). A stepwise backup would restart at every commit of another
connection and might never end under a busy worker.

What is copied, in this order, into a hidden sibling of DEST that is renamed to DEST once verified (so an
interrupted backup never leaves something at DEST that looks like a library):

1. raw XML (`data_dir/raw`, when the raw store is a folder in the data dir): a cache of NCBI's replies that
   re-ingests read instead of NCBI; each file whole (the raw store writes by rename).
2. `queue.sqlite3`, `jobs.sqlite3`, `idmap.sqlite3`, before the library: a worker records an id's outcome
   after its paper is committed, so every outcome in the copy has its paper in the copy. An id still pending
   in the copy is re-run after a restore (leases lapse, a lost task is re-queued); re-ingest is idempotent.
3. `index/library.faiss` and its sidecar, before the library database: the file's generation is then at most
   the copy's, so the restored library uses it (chunks newer than it are searched exactly, deleted ones are
   dropped). Copied after, it could be newer than the copy and would be ignored (the sidecar check), leaving
   every library-wide search an exact scan of SQLite until a writer rebuilds the file.
4. `index/pmcqa.sqlite3`, last, with its paper and chunk counts read in the snapshot it copies.
5. `models/answer-scorer`, the answer model `pmcqa train-answerer` made (not rebuilt without its training
   data). The rest of `models/` is ONNX exports, a cache rebuilt on first use: left out, as are lock files.

The copy is then verified: SQLite's integrity check of every database, and of the library's the store's own
check (each paper has its `n_chunks` chunks and well-sized vectors) and the counts of the snapshot. Restore by
pointing `PMCQA_DATA_DIR` at DEST. A PostgreSQL library lives in its database: `pg_dump` backs it up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.filesize import decimal

from pmcqa.app.answering.extractive import ANSWER_MODEL_DIR, ANSWER_MODEL_FILE
from pmcqa.core.db import postgres_url, redact, retry_when_locked
from pmcqa.core.settings import Settings
from pmcqa.index.library_index import FAISS_NAME
from pmcqa.index.store import DB_NAME, require_library, sqlite_integrity_problems
from pmcqa.ingest.raw_store import local_raw_dir

Progress = Callable[[str], None]

# Files SQLite, the FAISS rebuild and the raw store make beside their data, never copied: made again on use.
_TRANSIENT_SUFFIXES = (".lock", "-wal", "-shm", "-journal", ".tmp")


class BackupRefused(ValueError):
    """Nothing was done: the library or DEST is not one a backup may read or write."""


class BackupFailed(RuntimeError):
    """The backup stopped part way; nothing was left at DEST."""


@dataclass(frozen=True)
class Copied:
    """One part of the backup: `path` relative to DEST."""

    path: str
    kind: str  # sqlite | faiss | raw-xml | answer-model
    files: int
    bytes: int


@dataclass(frozen=True)
class LeftOut:
    path: str
    reason: str


@dataclass(frozen=True)
class LibrarySnapshot:
    """The library database as the backup copied it."""

    papers: int
    chunks: int
    generation: int


@dataclass(frozen=True)
class BackupSummary:
    destination: str
    papers: int
    chunks: int
    generation: int
    bytes: int
    seconds: float
    copied: list[Copied]
    left_out: list[LeftOut]


def backup_library(
    settings: Settings, destination: Path, *, raw_xml: bool = True, progress: Progress = lambda _line: None
) -> BackupSummary:
    """Copy the embedded library of `settings` to `destination` (absent or an empty folder), consistently
    while it is being written; `BackupRefused` before anything is written, `BackupFailed` (or the OS error)
    after removing what was written."""
    started = time.perf_counter()
    refuse_postgres(settings)
    require_library(settings)  # core.db.LibraryNotFound: the read-only commands' one-line refusal
    check_destination(destination, settings.data_dir)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    )
    try:
        copied, left_out, snapshot = _copy_library(settings, staging, raw_xml, progress)
        progress("verifying the copy")
        verify_copy(staging, copied, snapshot)
        staging.chmod(Path(settings.data_dir).stat().st_mode & 0o7777)  # mkdtemp's is owner-only
        _fsync_tree(staging)
        _move_into_place(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BackupSummary(
        destination=str(destination),
        papers=snapshot.papers,
        chunks=snapshot.chunks,
        generation=snapshot.generation,
        bytes=sum(item.bytes for item in copied),
        seconds=round(time.perf_counter() - started, 3),
        copied=copied,
        left_out=left_out,
    )


# --- refusals -----------------------------------------------------------------------------------------------


def refuse_postgres(settings: Settings) -> None:
    url = postgres_url(settings)
    if url is None:
        return
    raise BackupRefused(
        f"the library lives in the PostgreSQL database {redact(url)}, not in files: back it up with pg_dump, "
        '`pg_dump --format=custom --file pmcqa.dump "$PMCQA_DATABASE_URL"` (restore into an empty database '
        'with pgvector: `pg_restore --dbname "$PMCQA_DATABASE_URL" pmcqa.dump`)'
    )


def check_destination(destination: Path, data_dir: Path) -> None:
    """DEST must be absent or an empty folder outside the data dir: a backup never overwrites anything."""
    if destination.exists() and not (destination.is_dir() and not any(destination.iterdir())):
        raise BackupRefused(f"{destination} exists and is not an empty folder; a backup never overwrites it")
    if destination.resolve().is_relative_to(Path(data_dir).resolve()):
        raise BackupRefused(f"{destination} is inside the data dir {data_dir}; back up to another folder")


# --- copying ------------------------------------------------------------------------------------------------


def _copy_library(
    settings: Settings, staging: Path, raw_xml: bool, progress: Progress
) -> tuple[list[Copied], list[LeftOut], LibrarySnapshot]:
    """Every part of the library into `staging`, in the order the module docstring explains: what was
    copied, what was left out, and the library database's snapshot."""
    data_dir = Path(settings.data_dir)
    index_dir = Path(settings.index_dir)
    copied: list[Copied] = []
    left_out: list[LeftOut] = []
    raw = _copy_raw_xml(settings, staging, raw_xml, progress)
    if isinstance(raw, Copied):
        copied.append(raw)
    elif raw is not None:
        left_out.append(raw)
    for source in (settings.queue_path, settings.jobs_path, settings.idmap_path):
        if source.exists():
            copied.append(_backup_database(source, staging, source.relative_to(data_dir), progress)[0])
    copied += _copy_faiss(index_dir, staging, index_dir.relative_to(data_dir), progress)
    library, snapshot = _backup_database(
        index_dir / DB_NAME, staging, index_dir.relative_to(data_dir) / DB_NAME, progress
    )
    copied.append(library)
    assert snapshot is not None
    models, exports = _copy_answer_model(settings, staging, progress)
    copied += models
    left_out += exports
    accounted = {item.path for item in copied} | {item.path for item in left_out}
    for folder in (settings.raw_dir, settings.models_dir):
        accounted.add(_inside(folder, data_dir) or folder.as_posix())
    left_out += _unknown_entries(data_dir, accounted)
    return copied, left_out, snapshot


def _backup_database(
    source: Path, staging: Path, relative: Path, progress: Progress
) -> tuple[Copied, LibrarySnapshot | None]:
    """Copy the SQLite database `source` to `staging / relative` with the online backup API. For the
    library database, also its counts, read in the very snapshot the backup copies."""
    progress(f"backing up {source} ({_size(source)})")
    target = staging / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    is_library = source.name == DB_NAME

    def attempt() -> LibrarySnapshot | None:
        # mode=rw: never create a database that vanished since it was found.
        uri = source.resolve().as_uri() + "?mode=rw"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)) as src:
            src.execute("BEGIN")  # one read transaction: the counts and the backup see one snapshot
            try:
                snapshot = _library_snapshot(src) if is_library else None
                with contextlib.closing(sqlite3.connect(target)) as dst:
                    copy_database(src, dst)
            finally:
                src.execute("COMMIT")
        return snapshot

    # Busy answers that the busy timeout does not cover (WAL recovery by another opener) are retried.
    snapshot = retry_when_locked(attempt)
    return Copied(relative.as_posix(), "sqlite", 1, target.stat().st_size), snapshot


def copy_database(source: sqlite3.Connection, target: sqlite3.Connection) -> None:
    """The whole database in one backup step (pages=-1): see the module docstring for why not stepwise."""
    source.backup(target, pages=-1)


def _library_snapshot(conn: sqlite3.Connection) -> LibrarySnapshot:
    generation = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return LibrarySnapshot(
        papers=int(conn.execute("SELECT COUNT(*) FROM papers").fetchone()[0]),
        chunks=int(conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]),
        generation=int(generation[0]) if generation else 0,
    )


def _copy_faiss(index_dir: Path, staging: Path, relative: Path, progress: Progress) -> list[Copied]:
    """The FAISS file and its sidecar, sidecar first: a rebuild between the two copies pairs a newer file with
    an older generation, which only makes the restored library rebuild the file sooner."""
    copied = []
    for name in (FAISS_NAME + ".json", FAISS_NAME):
        source = index_dir / name
        if not source.exists():
            continue
        progress(f"copying {source} ({_size(source)})")
        target = staging / relative / name
        target.parent.mkdir(parents=True, exist_ok=True)
        # One open of the source: a rebuild replaces the file by rename, so this reads one whole version.
        shutil.copyfile(source, target)
        copied.append(Copied((relative / name).as_posix(), "faiss", 1, target.stat().st_size))
    return copied


def _copy_raw_xml(
    settings: Settings, staging: Path, wanted: bool, progress: Progress
) -> Copied | LeftOut | None:
    """The raw store's files when it is a folder inside the data dir; else what was left out (None when
    there is nothing to copy)."""
    raw_dir = local_raw_dir(settings)
    relative = None if raw_dir is None else _inside(raw_dir, Path(settings.data_dir))
    if raw_dir is None or relative is None:
        where = settings.raw_store or str(raw_dir)
        return LeftOut(where, "raw XML kept outside the data dir (PMCQA_RAW_STORE): not copied")
    if not raw_dir.is_dir():
        return None
    if not wanted:
        return LeftOut(relative, "--no-raw: a cache of NCBI's replies, fetched again when needed")
    files = [path for path in raw_dir.glob("*.xml") if not path.name.startswith(".")]  # not a write's temp
    progress(f"copying {len(files)} raw XML files from {raw_dir}")
    target = staging / relative
    target.mkdir(parents=True, exist_ok=True)
    count = total = 0
    for path in files:
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: it was a cache entry
            shutil.copyfile(path, target / path.name)
            count, total = count + 1, total + (target / path.name).stat().st_size
    return Copied(relative, "raw-xml", count, total)


def _copy_answer_model(
    settings: Settings, staging: Path, progress: Progress
) -> tuple[list[Copied], list[LeftOut]]:
    """The trained answer model (if any) of `models_dir` when that is inside the data dir; its other folders
    (ONNX exports) are listed as left out."""
    models_dir = settings.models_dir
    relative = _inside(models_dir, Path(settings.data_dir))
    if relative is None and (models_dir / ANSWER_MODEL_DIR / ANSWER_MODEL_FILE).is_file():
        reason = "the answer model lies outside the data dir (PMCQA_EMBEDDING_EXPORT_DIR): not copied"
        return [], [LeftOut(str(models_dir / ANSWER_MODEL_DIR), reason)]
    if relative is None or not models_dir.is_dir():
        return [], []
    copied: list[Copied] = []
    left_out: list[LeftOut] = []
    for entry in sorted(models_dir.iterdir()):
        path = f"{relative}/{entry.name}"
        if entry.name == ANSWER_MODEL_DIR and (entry / ANSWER_MODEL_FILE).is_file():
            copied.append(_copy_model_folder(entry, staging, path, progress))
        elif not entry.name.startswith("."):
            left_out.append(LeftOut(path, "an ONNX export: a cache, made again on first use"))
    return copied, left_out


def _copy_model_folder(source: Path, staging: Path, relative: str, progress: Progress) -> Copied:
    progress(f"copying the answer model {source}")
    target = staging / relative
    try:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.tmp"))
    except (FileNotFoundError, shutil.Error) as exc:
        raise BackupFailed(
            f"the answer model {source} changed during the backup (`pmcqa train-answerer` replacing it?); "
            f"run the backup again ({exc})"
        ) from exc
    if not (target / ANSWER_MODEL_FILE).is_file():
        raise BackupFailed(f"the answer model {source} changed during the backup; run the backup again")
    files = [path for path in target.rglob("*") if path.is_file()]
    return Copied(relative, "answer-model", len(files), sum(path.stat().st_size for path in files))


def _unknown_entries(data_dir: Path, accounted: set[str]) -> list[LeftOut]:
    """What else lies in the data dir and its index folder (not pmcqa's layout): listed, not copied."""
    found = []
    for folder in (data_dir, data_dir / "index"):
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            relative = entry.relative_to(data_dir).as_posix()
            if entry.name.endswith(_TRANSIENT_SUFFIXES) or entry.name.startswith(f".{FAISS_NAME}."):
                continue
            if any(path == relative or path.startswith(relative + "/") for path in accounted):
                continue
            found.append(LeftOut(relative, "not part of pmcqa's library layout: not copied"))
    return found


def _inside(path: Path, data_dir: Path) -> str | None:
    """`path` relative to the data dir (POSIX), or None when it lies outside it."""
    resolved, root = path.resolve(), data_dir.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else None


# --- verifying and finishing --------------------------------------------------------------------------------


def verify_copy(staging: Path, copied: list[Copied], snapshot: LibrarySnapshot) -> None:
    """`BackupFailed` unless every copied database passes SQLite's integrity check and the library's holds
    what the snapshot counted, each paper whole."""
    for item in copied:
        if item.kind != "sqlite":
            continue
        path = staging / item.path
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            if path.name == DB_NAME:
                problems = sqlite_integrity_problems(conn)
                found = _library_snapshot(conn)
                if found != snapshot:
                    problems.append(f"the copy holds {found}, the library held {snapshot}")
            else:
                problems = [row[0] for row in conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
        if problems:
            shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
            raise BackupFailed(f"the copy of {item.path} failed verification: {shown}")


def _fsync_tree(root: Path) -> None:
    """Everything written, on disk before the rename makes it the backup."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with open(Path(folder) / name, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(staging: Path, destination: Path) -> None:
    """Rename the finished copy to DEST; rename replaces an empty folder but never a non-empty one."""
    try:
        os.rename(staging, destination)
    except OSError as exc:
        raise BackupFailed(
            f"could not rename the copy to {destination} ({exc}): it changed during the backup?"
        ) from exc
    _fsync_dir(destination.parent)


def _size(path: Path) -> str:
    return decimal(path.stat().st_size)
