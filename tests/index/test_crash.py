"""Crash safety: a writer process SIGKILLed at random points never leaves a half-stored paper behind.

Runs on both backends (`store_settings`): SQLite + FAISS file, and PostgreSQL (the server rolls back the
killed client's transaction)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pmcqa.core.settings import Settings
from pmcqa.index.models import Chunk, PaperRecord
from pmcqa.index.store import open_store

# The writer re-ingests (with changed text), deletes and rebuilds the FAISS file while it is being killed.
# Its embedder is a deterministic stand-in with a little latency, so kills also land while "embedding".
WRITER = r"""
import hashlib, random, sys, time
import numpy as np
from pmcqa.index.models import Chunk, PaperRecord
from pmcqa.index.store import open_store
from pmcqa.core.settings import Settings

class Embedder:
    model_name, dimension, document_prefix = "crash-model", 32, ""
    def embed_documents(self, texts):
        time.sleep(0.0005 * len(texts))
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(32).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)

def paper(pid, n, salt):
    texts = [f"{pid} chunk {i} version {salt} " + "word " * (i % 7) for i in range(n)]
    chunks, offset = [], 0
    for i, t in enumerate(texts):
        chunks.append(Chunk(chunk_id=f"{pid}-{i}", paper_id=pid, ordinal=i, kind="paragraph", text=t,
                            start=offset, end=offset + len(t)))
        offset += len(t) + 2
    return PaperRecord(paper_id=pid, pmid=pid[3:], text="\n\n".join(texts)), chunks

rng = random.Random(int(sys.argv[2]))
settings = Settings(data_dir=sys.argv[1], database_url=sys.argv[3] or None)
store = open_store(settings, library_refresh_s=0.05, library_tail_max=200)
embedder = Embedder()
print("ready", flush=True)
while True:
    pid = f"PMC{rng.randrange(60)}"
    roll = rng.random()
    if roll < 0.1:
        store.delete_paper(pid)
    elif roll < 0.2:
        batch = [paper(f"PMC{rng.randrange(60)}", rng.randrange(1, 30), rng.random()) for _ in range(3)]
        store.put_papers([(r, c, None) for r, c in batch], embedder)
    else:
        store.put_paper(*paper(pid, rng.randrange(0, 40), rng.random()), embedder)
"""


class _Check:
    model_name, dimension, document_prefix = "crash-model", 32, ""


class _Embedder(_Check):
    def embed_documents(self, texts: list[str]) -> np.ndarray:
        vectors = np.ones((len(texts), 32), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _one_paper() -> tuple[PaperRecord, list[Chunk]]:
    text = "after the crash"
    chunk = Chunk(
        chunk_id="PMC999-0", paper_id="PMC999", ordinal=0, kind="paragraph", text=text, start=0, end=len(text)
    )
    return PaperRecord(paper_id="PMC999", text=text), [chunk]


def _run_and_kill(script: Path, settings: Settings, seed: int, after_s: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    url = settings.database_url.get_secret_value() if settings.database_url else ""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(settings.data_dir), str(seed), url], stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(after_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # it was still writing when killed


def _assert_sound(settings: Settings) -> int:
    store = open_store(settings)  # opens cleanly (WAL recovery) without a model
    try:
        assert store.integrity_check() == []
        for paper_id in store.paper_ids():
            record = store.get_paper(paper_id)
            chunks = store.get_chunks(paper_id)
            chunk_ids, matrix = store.get_vectors(paper_id)
            assert record is not None and record.paper_id == paper_id
            assert [c.ordinal for c in chunks] == list(range(len(chunks)))
            assert chunk_ids == [c.chunk_id for c in chunks] and matrix.shape == (len(chunks), 32)
            assert all(record.text[c.start : c.end] == c.text for c in chunks)
            # Every chunk of one paper comes from the same write ("version <salt>"), never a mix.
            assert len({c.text.split(" version ")[1].split()[0] for c in chunks}) <= 1
            assert store.resolve_alias(paper_id[3:]) == paper_id
        query = np.ones(32, dtype=np.float32) / np.sqrt(32)
        hits = store.search_library(query, k=5)  # the FAISS file (if any) loads and agrees with SQLite
        assert all(store.get_paper(chunk.paper_id) is not None for chunk, _ in hits)
        return store.count_papers()
    finally:
        store.close()


def test_sigkill_never_leaves_partial_papers(tmp_path: Path, store_settings: Settings) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(1234)
    papers = 0
    for round_ in range(8):
        _run_and_kill(script, store_settings, seed=round_, after_s=rng.uniform(0.2, 1.0))
        papers = _assert_sound(store_settings)
    assert papers > 0  # the writer really wrote
    # A writer with the recorded model reopens the killed store, brings its library index up, and keeps going.
    with open_store(store_settings) as store:
        store.check_model(_Check())  # type: ignore[arg-type]
        if store.library_index is not None:  # SQLite: the FAISS file
            assert store.library_index.rebuild() == store.count_chunks()
            assert store.library_index.lag() == 0
        else:  # PostgreSQL: the HNSW index is transactional; integrity_check also checks it is valid
            assert store.integrity_check() == []
        store.put_paper(*_one_paper(), _Embedder())  # type: ignore[arg-type]
        assert store.get_chunks("PMC999")[0].text == "after the crash"
