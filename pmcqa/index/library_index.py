"""The library-wide FAISS file: built from a SQLite snapshot, read memory-mapped, refreshed when it lags.

`library.faiss` (+ `library.faiss.json`, its sidecar) is an `IndexIDMap2(IndexFlatIP)` over every chunk
vector, ids = chunk rowids. It is disposable: SQLite (`index.store`) is the source of truth and this module
only ever reads vectors through a `VectorSource` (the store). Its lifecycle:

- **build**: `rebuild()` reads every vector in one SQLite read snapshot, so the file matches exactly one
  store generation; one process at a time (an `flock` on `library.faiss.lock`; a second one skips).
- **write**: to a temporary file, fsynced, then `os.replace`d over the old one, the sidecar (generation,
  vector count, build seconds) after it. A reader trusts the file itself (its largest id); the sidecar only
  says how fresh it is. A rebuild killed midway leaves a temporary file that the next rebuild removes.
- **read**: memory-mapped, and reloaded whenever another process replaced the file (inode/size/mtime stamp).
- **lag**: the file may lag SQLite. Readers drop hits on deleted chunks and search chunks newer than the file
  exactly (rowids are AUTOINCREMENT: never reused and assigned in commit order, so "newer" = id above
  `indexed_through()`). Writers call `refresh_if_due()` after each commit: it rebuilds when the file is far
  behind, or behind and old, but never more often than 10x the last build's duration.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

FAISS_NAME = "library.faiss"


@dataclass
class VectorSnapshot:
    """Every stored vector as of one committed generation, in id order, in batches."""

    generation: int
    dimension: int
    batches: Iterator[tuple[np.ndarray, np.ndarray]]  # (int64 ids, (n, dimension) float32 vectors)


class VectorSource(Protocol):
    """What the FAISS file is built from and measured against (SQLite, or PostgreSQL without pgvector)."""

    def generation(self) -> int:
        """Bumped by every committed write."""
        ...

    def library_id(self) -> str:
        """The database's identity, recorded with the file: a file of another database is never used."""
        ...

    def count_vectors_after(self, chunk_row: int) -> int:
        """How many stored vectors have an id above `chunk_row`."""
        ...

    def vector_snapshot(self) -> contextlib.AbstractContextManager[VectorSnapshot]:
        """Every vector, read in one transaction (the snapshot is valid inside the `with` block only)."""
        ...


class LibraryIndex:
    """The FAISS file of one store directory. Thread-safe; any number of processes may read it."""

    def __init__(self, directory: Path, source: VectorSource, *, refresh_s: float, tail_max: int) -> None:
        self.path = directory / FAISS_NAME
        self.source = source
        # A writer rebuilds the file once it is this old and behind, or this many chunks behind.
        self.refresh_s = refresh_s
        self.tail_max = tail_max
        self._sidecar_path = directory / (FAISS_NAME + ".json")
        self._lock_path = directory / (FAISS_NAME + ".lock")
        self._lock = threading.Lock()  # guards the loaded index and FAISS calls on it
        self._index: Any = None
        self._stamp: tuple[int, int, int] | None = None
        self._max_id = 0
        self._library_id: str | None = None

    def close(self) -> None:
        """Forget the loaded index (unmaps it); the next search loads the file again."""
        with self._lock:
            self._index, self._stamp, self._max_id = None, None, 0

    # --- reading ---------------------------------------------------------------------------------------

    def indexed_through(self) -> int:
        """The largest chunk id in the current file (0 when there is none): every larger id is newer."""
        self._load()
        return self._max_id

    def search(
        self, query: np.ndarray, want: int, exclude: Iterable[int]
    ) -> tuple[list[tuple[int, float]], bool]:
        """Up to `want` (chunk id, score) hits not in `exclude`, and whether the whole file was searched."""
        index = self._load()
        if index is None or index.ntotal == 0:
            return [], True
        skip = set(exclude)
        want = min(index.ntotal, want)
        with self._lock:
            scores, ids = index.search(query.reshape(1, -1), want)
        hits = [
            (int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0 and i not in skip
        ]
        return hits, want >= index.ntotal

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _load(self) -> Any:
        """The FAISS index, memory-mapped and reloaded whenever another process replaced the file."""
        stamp = self._file_stamp()
        if stamp is not None and self._built_generation(self.source.generation()) is None:
            stamp = None  # as if there were no file: every search is exact until a writer rebuilds it
        with self._lock:
            if stamp == self._stamp:
                return self._index
            if stamp is None:
                self._index, self._stamp, self._max_id = None, None, 0
                return None
            import faiss  # heavy native library: loaded by the first library-wide search or rebuild only

            try:
                index = faiss.read_index(str(self.path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:  # a build without mmap support for this index type
                index = faiss.read_index(str(self.path))
            ids = faiss.vector_to_array(faiss.downcast_index(index).id_map) if index.ntotal else np.zeros(1)
            self._index, self._stamp, self._max_id = index, stamp, int(ids.max())
            return index

    # --- freshness -------------------------------------------------------------------------------------

    def lag(self) -> int:
        """How many committed writes the file is behind the store (0 = current); a file that does not match
        the store (`_built_generation`) counts as none."""
        current = self.source.generation()
        built = self._built_generation(current) if self._file_stamp() else None
        return current - (-1 if built is None else built)

    def _built_generation(self, current: int) -> int | None:
        """The generation the file was built from (-1 when its sidecar does not say), or None when it was not
        built from this database at a state it has reached (`current`). Chunk ids are only unique within one
        database's history: the file of a database since recreated, or of a later state than a restored
        backup holds, maps ids that are (or will be) reused to other chunks' vectors."""
        sidecar = self._sidecar()
        if self._library_id is None:  # fixed for a database's life: read once
            self._library_id = self.source.library_id()
        if sidecar.get("library_id") not in (None, self._library_id):
            return None
        built = int(sidecar.get("generation", -1))
        return built if built <= current else None

    def _sidecar(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._sidecar_path.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def refresh_if_due(self) -> None:
        """After a write: rebuild the file when it is far behind, or behind and old.

        A rebuild re-reads every vector (O(library)), so it waits at least 10x the last rebuild's duration:
        rebuilding then costs a busy writer at most ~10% of its time. Readers stay exact meanwhile (tail).
        """
        if self.lag() <= 0:
            return
        tail = self.source.count_vectors_after(self.indexed_through())
        stamp = self._file_stamp()
        age = time.time() - stamp[2] / 1e9 if stamp else float("inf")
        due = tail >= self.tail_max or age >= self.refresh_s
        if due and age >= 10 * float(self._sidecar().get("build_s", 0.0)):
            self.rebuild()

    # --- building --------------------------------------------------------------------------------------

    def rebuild(self) -> int:
        """Rebuild the file from a snapshot of the source (atomically replaced). Returns the vectors indexed.

        Skips (returning -1) when another process holds the rebuild lock; its file will be as fresh.
        """
        import faiss  # heavy native library: loaded by the first library-wide search or rebuild only

        with open(self._lock_path, "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return -1
            for stale in self.path.parent.glob(f".{FAISS_NAME}.*tmp"):  # left by a rebuild that was killed
                stale.unlink(missing_ok=True)
            started = time.perf_counter()
            with self.source.vector_snapshot() as snapshot:
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(snapshot.dimension))
                for ids, vectors in snapshot.batches:
                    index.add_with_ids(vectors, ids)
            self._write(index, snapshot.generation, time.perf_counter() - started, self.source.library_id())
            return int(index.ntotal)

    def _write(self, index: Any, generation: int, build_s: float, library_id: str) -> None:
        import faiss  # heavy native library (see rebuild)

        tmp = self.path.with_name(f".{FAISS_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
        faiss.write_index(index, str(tmp))
        _fsync(tmp)
        sidecar_tmp = tmp.with_name(tmp.name + ".json.tmp")
        sidecar_tmp.write_text(
            json.dumps(
                {
                    "generation": generation,
                    "library_id": library_id,
                    "ntotal": int(index.ntotal),
                    "build_s": build_s,
                }
            )
        )
        # The index first: a reader trusts the file itself (its largest id), the sidecar only says how fresh.
        os.replace(tmp, self.path)
        os.replace(sidecar_tmp, self._sidecar_path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
