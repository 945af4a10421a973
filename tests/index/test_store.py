"""The store contract on both backends (SQLite + FAISS, PostgreSQL + pgvector): round trips, replacement
without re-embedding, model checks, readers; then what only the SQLite FAISS file does (lag, rebuilds)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pmcqa.core.status import Status
from pmcqa.index.store import EmbeddingModelMismatch, PaperStore, ReindexUnfinished, Store, StoreError

FakeEmbedder = Any  # the conftest double (tests/ is not a package, so it comes through fixtures)

OpenStore = Callable[..., PaperStore]  # either backend (`open_store`)
OpenSqliteStore = Callable[..., Store]  # SQLite + FAISS only (`open_sqlite_store`)


def test_round_trip(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store()
    record, chunks = paper("PMC100", texts("PMC100", 5), pmid="12345", doi="10.1000/ABC.1")
    store.put_paper(record, chunks, fake)

    assert store.get_paper("PMC100") == record
    assert store.get_chunks("PMC100") == chunks
    chunk_ids, matrix = store.get_vectors("PMC100")
    assert chunk_ids == [c.chunk_id for c in chunks]
    assert matrix.dtype == np.float32 and matrix.shape == (5, 16)
    np.testing.assert_allclose(matrix[2], fake.vector(chunks[2].text), rtol=1e-6)
    assert store.get_paper("PMC999") is None and store.get_chunks("PMC999") == []
    assert store.get_vectors("PMC999")[1].shape == (0, 16)


def test_listing_aliases_and_status(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store()
    assert store.last_update() is None
    before = datetime.now(UTC)
    for n in range(3):
        store.put_paper(*paper(f"PMC{n}", texts(f"PMC{n}", 2), pmid=f"90{n}", doi=f"10.1/X{n}"), fake)
    assert store.count_papers() == 3
    last = store.last_update()
    assert last is not None and before <= last <= datetime.now(UTC)
    page = store.list_papers(offset=1, limit=10)
    assert len(page) == 2 and all(p.text == "" and p.title.startswith("Synthetic") for p in page)
    assert {p.paper_id for p in store.list_papers(0, 10)} == {"PMC0", "PMC1", "PMC2"}

    for spelling in ("901", "pmid:901", "10.1/x1", "doi:10.1/X1", "https://doi.org/10.1/X1", "pmc1"):
        assert store.resolve_alias(spelling) == "PMC1", spelling
    assert store.resolve_alias("404") is None

    status = store.get_status("PMC1")
    assert status is not None and status.status is Status.INGESTED and status.reason is None
    store.set_status("PMC77", "queued")
    store.set_status("PMC77", "failed", reason="efetch timed out")
    failed = store.get_status("PMC77")
    assert failed is not None and (failed.status, failed.reason) == ("failed", "efetch timed out")
    assert failed.updated_at >= failed.created_at
    assert store.get_status("PMC404") is None


def test_a_shared_pmid_or_doi_never_strands_a_paper(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store()
    doi = "10.1371/journal.pbio.2002399"
    store.put_paper(*paper(doi, texts(doi, 2), pmid="555", doi=doi), fake)  # stored under its DOI
    store.put_paper(*paper("10.1/other", texts("other", 2), pmid="555", doi=doi), fake)  # --id 10.1/other
    assert store.resolve_alias(doi) == doi  # its own id is never taken over
    assert store.resolve_alias("pmid:555") == "10.1/other"  # a shared PMID: the newest copy answers
    assert store.delete_paper("10.1/other")
    assert store.resolve_alias(doi) == doi and store.resolve_alias("pmid:555") == doi  # reachable still

    store.put_paper(*paper("PMC6", texts("PMC6", 2), pmid="777"), fake)
    store.put_paper(*paper("PMC7", texts("PMC7", 2), pmid="777"), fake)
    assert store.delete_paper("PMC7") and store.resolve_alias("777") == "PMC6"
    assert store.delete_paper("PMC6") and store.resolve_alias("777") is None


def test_a_paper_stored_under_its_pmcid_replaces_its_copy_stored_under_its_doi(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store()
    doi = "10.1371/journal.pbio.2002399"
    store.put_paper(*paper(doi, texts(doi, 2), pmid="555", doi=doi), fake)  # a file without PMCID
    store.set_status("PMC5", "ingesting")
    store.put_paper(*paper("PMC5", texts("PMC5", 3), pmid="555", doi=doi.upper()), fake)  # fetched from PMC
    assert store.paper_ids() == ["PMC5"] and store.count_chunks() == 3  # one paper, one record
    assert store.get_paper(doi) is None and store.get_chunks(doi) == [] and store.get_status(doi) is None
    for spelling in (doi, doi.upper(), "pmid:555", "PMC5"):
        assert store.resolve_alias(spelling) == "PMC5", spelling
    assert store.integrity_check() == []

    other = "10.1/unrelated"  # a paper whose DOI no stored PMCID carries stays as it is
    store.put_paper(*paper(other, texts(other, 2), doi=other), fake)
    store.put_paper(*paper("PMC6", texts("PMC6", 2), doi="10.1/another"), fake)
    assert store.paper_ids() == ["10.1/unrelated", "PMC5", "PMC6"]
    assert store.delete_paper("PMC5") and store.resolve_alias(doi) is None


def test_reingest_replaces_chunks_and_embeds_only_changed_text(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store()
    texts = texts("PMC1", 6)
    store.put_paper(*paper("PMC1", texts), fake)
    assert len(fake.encoded) == 6

    fake.encoded.clear()
    store.put_paper(*paper("PMC1", texts), fake)  # identical: nothing to embed
    assert fake.encoded == []

    changed = texts[:2] + ["a rewritten paragraph"] + texts[3:] + ["a new closing paragraph"]
    record, chunks = paper("PMC1", changed)
    store.put_paper(record, chunks, fake)
    assert sorted(fake.encoded) == ["a new closing paragraph", "a rewritten paragraph"]
    assert store.get_chunks("PMC1") == chunks
    chunk_ids, matrix = store.get_vectors("PMC1")
    assert len(chunk_ids) == 7 and matrix.shape == (7, 16)
    np.testing.assert_allclose(matrix[2], fake.vector("a rewritten paragraph"), rtol=1e-6)
    assert store.integrity_check() == []


def test_a_batch_is_embedded_in_one_call_without_duplicates(
    open_store: OpenStore, fake: FakeEmbedder, paper: Callable[..., Any]
) -> None:
    store = open_store()
    shared = "A methods paragraph reused verbatim by two papers."
    store.put_papers(
        [(*paper("PMC1", ["first", shared]), None), (*paper("PMC2", [shared, "second", "third"]), None)],
        fake,
    )
    assert fake.calls == 1 and sorted(fake.encoded) == sorted([shared, "first", "second", "third"])
    np.testing.assert_array_equal(store.get_vectors("PMC1")[1][1], store.get_vectors("PMC2")[1][0])
    assert store.count_chunks() == 5


def test_delete_paper(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store(library_refresh_s=0)
    store.put_paper(*paper("PMC1", texts("PMC1", 3), pmid="11"), fake)
    store.put_paper(*paper("PMC2", texts("PMC2", 3)), fake)
    assert store.delete_paper("PMC1") is True
    assert store.delete_paper("PMC1") is False
    assert store.get_paper("PMC1") is None and store.get_chunks("PMC1") == []
    assert store.resolve_alias("11") is None and store.get_status("PMC1") is None
    query = fake.vector(texts("PMC1", 3)[0])
    assert all(chunk.paper_id == "PMC2" for chunk, _ in store.search_library(query, k=10))


def test_invalid_input_is_refused_and_nothing_is_written(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store()
    record, chunks = paper("PMC1", texts("PMC1", 3))
    bad = [chunks[0], chunks[1].model_copy(update={"text": "not in the record"}), chunks[2]]
    with pytest.raises(ValueError, match="not record.text"):
        store.put_paper(record, bad, fake)
    with pytest.raises(ValueError, match="belongs to"):
        store.put_paper(record, [c.model_copy(update={"paper_id": "PMC2"}) for c in chunks], fake)
    assert store.count_papers() == 0


def test_failure_inside_the_transaction_keeps_the_old_version(
    open_store: OpenStore,
    fake: FakeEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store()
    old_record, old_chunks = paper("PMC1", texts("PMC1", 4))
    store.put_paper(old_record, old_chunks, fake)

    def explode(*_: object) -> None:
        raise RuntimeError("disk full")

    # runs after chunks are inserted
    monkeypatch.setattr(type(store), "_write_aliases", staticmethod(explode))
    with pytest.raises(RuntimeError, match="disk full"):
        store.put_paper(*paper("PMC1", texts("PMC1", 9)), fake)
    assert store.get_chunks("PMC1") == old_chunks and store.get_paper("PMC1") == old_record
    assert store.integrity_check() == []


def test_model_mismatch_names_both_models(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
    make_fake: Callable[..., Any],
) -> None:
    open_store().put_paper(*paper("PMC1", texts("PMC1", 2)), fake)
    with pytest.raises(EmbeddingModelMismatch) as raised:
        open_store().check_model(make_fake("other-model", dimension=32))
    message = str(raised.value)
    assert "'fake-model' (16-d)" in message and "'other-model' (32-d)" in message
    assert "pmcqa reindex" in message
    with pytest.raises(EmbeddingModelMismatch, match="document prefix"):
        open_store().check_model(make_fake(document_prefix="passage: "))
    reader = open_store()  # readers need no model
    assert reader.embedding_info() is not None and reader.embedding_info().model_name == "fake-model"  # type: ignore[union-attr]
    assert len(reader.get_chunks("PMC1")) == 2


def test_a_write_with_another_model_is_refused_before_embedding(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
    make_fake: Callable[..., Any],
) -> None:
    store = open_store()
    assert store.embedding_info() is None
    store.check_model(make_fake("any-model"))  # an empty store accepts any model...
    store.put_paper(*paper("PMC1", texts("PMC1", 2)), fake)  # ...and the first write records its own
    info = store.embedding_info()
    assert info is not None and (info.model_name, info.dimension) == ("fake-model", 16)
    other = make_fake("other-model", dimension=16)
    with pytest.raises(StoreError) as raised:
        store.put_paper(*paper("PMC2", texts("PMC2", 3)), other)
    assert isinstance(raised.value, EmbeddingModelMismatch)
    assert other.encoded == [] and store.paper_ids() == ["PMC1"]


def test_reindex_reembeds_every_paper(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
    make_fake: Callable[..., Any],
) -> None:
    store = open_store()
    for n in range(3):
        store.put_paper(*paper(f"PMC{n}", texts(f"PMC{n}", 4)), fake)
    other = make_fake("other-model", dimension=8)
    seen: list[tuple[int, int]] = []
    assert open_store().reindex(other, progress=lambda done, total: seen.append((done, total))) == 3
    assert seen[-1] == (3, 3) and len(other.encoded) == 12

    reopened = open_store()
    reopened.check_model(other)  # no mismatch any more
    _, matrix = reopened.get_vectors("PMC1")
    np.testing.assert_allclose(matrix[0], other.vector(texts("PMC1", 4)[0]), rtol=1e-6)
    hits = reopened.search_library(other.vector(texts("PMC2", 4)[3]), k=1)
    assert hits[0][0].chunk_id == reopened.get_chunks("PMC2")[3].chunk_id
    assert reopened.integrity_check() == []
    with pytest.raises(EmbeddingModelMismatch):
        open_store().check_model(fake)


class _DiesOnSecondCall:
    """An encoder that re-embeds one paper, then fails (a crash, Ctrl-C, OOM part way through a reindex)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder, self.calls = encoder, 0
        self.model_name, self.dimension = encoder.model_name, encoder.dimension
        self.document_prefix = encoder.document_prefix

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.encoder.embed_documents(texts)


def test_an_unfinished_reindex_refuses_every_use_but_a_reindex(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
    make_fake: Callable[..., Any],
) -> None:
    store = open_store()
    for n in range(3):
        store.put_paper(*paper(f"PMC{n}", texts(f"PMC{n}", 4)), fake)
    other = make_fake("other-model", dimension=8)
    with pytest.raises(KeyboardInterrupt):
        open_store().reindex(_DiesOnSecondCall(other))
    for encoder in (fake, other):  # two models' vectors now: neither may search nor write
        with pytest.raises(ReindexUnfinished, match="pmcqa reindex` again with PMCQA_EMBEDDING_MODEL='other"):
            open_store().check_model(encoder)
        with pytest.raises(ReindexUnfinished):
            open_store().put_paper(*paper("PMC9", texts("PMC9", 2)), encoder)
    assert open_store().reindex(other) == 3  # run again, it finishes
    finished = open_store()
    finished.check_model(other)
    assert finished.integrity_check() == [] and finished.paper_ids() == ["PMC0", "PMC1", "PMC2"]


def test_a_write_that_began_before_a_reindex_is_refused_at_commit(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    """The model is checked before embedding (seconds to minutes); a reindex starting meanwhile must stop
    the commit (it went through: old-model vectors in a library the reindex had switched)."""
    store = open_store()
    store.put_paper(*paper("PMC1", texts("PMC1", 2)), fake)
    other = open_store()

    class ReindexBeginsWhileEmbedding:
        model_name, dimension, document_prefix = fake.model_name, fake.dimension, fake.document_prefix

        def embed_documents(self, batch: list[str]) -> np.ndarray:
            with other._transaction() as conn:  # another process runs `pmcqa reindex`
                if isinstance(other, Store):
                    other._set_meta(conn, "reindex_target", "new-model")
                else:
                    conn.execute("INSERT INTO meta(key, value) VALUES ('reindex_target', 'new-model')")
            return fake.embed_documents(batch)

    with pytest.raises(ReindexUnfinished):
        store.put_paper(*paper("PMC2", texts("PMC2", 2)), ReindexBeginsWhileEmbedding())
    assert store.paper_ids() == ["PMC1"]


def _own_chunk_found(store: Store, paper_id: str) -> bool:
    _, vectors = store.get_vectors(paper_id)
    chunks = store.get_chunks(paper_id)
    found = [store.search_library(vector, k=1)[0][0].chunk_id for vector in vectors]
    return found == [chunk.chunk_id for chunk in chunks]


def test_a_faiss_file_of_another_database_state_is_never_used(
    open_sqlite_store: OpenSqliteStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_sqlite_store()
    store.put_paper(*paper("PMC1", texts("PMC1", 4)), fake)
    backup = store.db_path.with_name("backup.sqlite3")
    with sqlite3.connect(backup) as copy:  # a nightly backup, taken here
        sqlite3.connect(store.db_path).backup(copy)
    for n in (2, 3):
        store.put_paper(*paper(f"PMC{n}", texts(f"PMC{n}", 4)), fake)
    assert store.library_index.rebuild() == 12
    store.close()

    for suffix in ("", "-wal", "-shm"):  # the backup restored (service stopped), the FAISS file kept
        Path(f"{store.db_path}{suffix}").unlink(missing_ok=True)
    backup.rename(store.db_path)
    restored = open_sqlite_store()
    restored.put_paper(*paper("PMC4", texts("PMC4", 4)), fake)  # its chunk ids were PMC2's in the file
    assert _own_chunk_found(restored, "PMC4") and _own_chunk_found(restored, "PMC1")
    restored.close()
    reopened = open_sqlite_store()
    assert reopened.library_index.lag() == 0 and _own_chunk_found(reopened, "PMC4")  # rebuilt on close

    reopened.close()
    for suffix in ("", "-wal", "-shm"):  # the database deleted (a reset), the FAISS file kept
        Path(f"{reopened.db_path}{suffix}").unlink(missing_ok=True)
    fresh = open_sqlite_store()
    fresh.put_paper(*paper("PMC9", texts("PMC9", 4)), fake)
    assert _own_chunk_found(fresh, "PMC9") and fresh.count_chunks() == 4


def test_a_paper_search_racing_a_restore_pairs_scores_with_their_own_text(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store()
    store.put_paper(*paper("PMC1", texts("PMC1", 4)), fake)
    other_version = [f"revised {text}" for text in texts("PMC1", 3)]  # another text, fewer chunks
    read_vectors = store.get_vectors

    def vectors_then_a_restore(paper_id: str) -> Any:
        found = read_vectors(paper_id)
        store.put_paper(*paper("PMC1", other_version), fake)  # commits between the two reads
        return found

    store.get_vectors = vectors_then_a_restore  # type: ignore[method-assign]
    query = fake.vector(texts("PMC1", 4)[2])
    hits = store.search_library(query, k=10, paper_ids=["PMC1"])
    for chunk, score in hits:  # each score is its chunk's own (versions were zipped together)
        assert score == pytest.approx(float(fake.vector(chunk.text) @ query), abs=1e-5)


def test_reader_sees_writer_without_restart(
    open_sqlite_store: OpenSqliteStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    reader = open_sqlite_store()
    writer = open_sqlite_store(library_refresh_s=3600)
    assert reader.count_papers() == 0 and reader.search_library(np.ones(16, np.float32), k=3) == []

    writer.put_paper(*paper("PMC1", texts("PMC1", 4)), fake)  # first write builds the FAISS file
    writer.put_paper(*paper("PMC2", texts("PMC2", 4)), fake)  # this one only lives in SQLite so far
    assert reader.count_papers() == 2 and len(reader.get_chunks("PMC2")) == 4
    target = texts("PMC2", 4)[1]
    assert writer.library_index.lag() == 1
    top, _ = reader.search_library(fake.vector(target), k=1)[0]
    assert top.text == target  # found through the exact "tail" search of chunks newer than the file

    before = reader.library_index._stamp
    assert writer.library_index.rebuild() == 8 and writer.library_index.lag() == 0
    assert reader.search_library(fake.vector(target), k=1)[0][0].text == target
    # The reader reloaded the new file.
    assert reader.library_index._stamp != before and reader.library_index._max_id > 0


def test_only_a_store_that_wrote_brings_the_faiss_file_up_to_date_on_close(
    open_sqlite_store: OpenSqliteStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    writer = open_sqlite_store(library_refresh_s=3600)
    writer.put_paper(*paper("PMC1", texts("PMC1", 3)), fake)  # first write builds the FAISS file
    writer.put_paper(*paper("PMC2", texts("PMC2", 3)), fake)
    reader = open_sqlite_store()
    assert reader.search_library(fake.vector(texts("PMC2", 3)[0]), k=1)[0][0].paper_id == "PMC2"
    reader.close()
    assert reader.library_index.lag() == 1  # a reader leaves the file as it found it
    writer.close()
    assert reader.library_index.lag() == 0 and reader.library_index.indexed_through() > 0


def test_library_search_filters_and_rebuilds(
    open_sqlite_store: OpenSqliteStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_sqlite_store(library_refresh_s=3600, library_tail_max=10)
    for n in range(4):
        store.put_paper(*paper(f"PMC{n}", texts(f"PMC{n}", 5)), fake)
    assert store.library_index.lag() <= 1  # the tail limit triggered a rebuild along the way

    query = fake.vector(texts("PMC3", 5)[2])
    hits = store.search_library(query, k=5)
    assert hits[0][0].paper_id == "PMC3" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)
    only = store.search_library(query, k=20, paper_ids=["PMC0", "PMC1"])
    assert len(only) == 10 and {c.paper_id for c, _ in only} == {"PMC0", "PMC1"}

    store.library_index.rebuild()
    store.delete_paper("PMC3")  # the FAISS file still holds its vectors; SQLite says they are gone
    assert all(c.paper_id != "PMC3" for c, _ in store.search_library(query, k=15))
    assert len(store.search_library(query, k=15)) == 15

    store.library_index.path.unlink()  # the file is disposable: rebuilt from SQLite
    assert store.library_index.rebuild() == 15
    assert len(store.search_library(query, k=3)) == 3


def _vm_steps(store: Store, paper_id: str) -> int:
    """SQLite virtual-machine instructions spent by get_vectors: a measure of work, free of timing noise."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn: sqlite3.Connection = store._conn()
    conn.set_progress_handler(count, 1)
    try:
        store.get_vectors(paper_id)
    finally:
        conn.set_progress_handler(None, 1)
    return steps


def test_per_paper_reads_do_not_scan_the_library(
    open_sqlite_store: OpenSqliteStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_sqlite_store(library_refresh_s=3600, library_tail_max=10**9)
    store.put_paper(*paper("PMC1", texts("PMC1", 20)), fake)
    small = _vm_steps(store, "PMC1")

    # Grow the library 500-fold with bulk inserts of precomputed vectors.
    rng = np.random.default_rng(0)
    batch = []
    for n in range(500):
        record, chunks = paper(f"PMCX{n}", texts(f"PMCX{n}", 20))
        batch.append((record, chunks, rng.standard_normal((20, 16)).astype(np.float32)))
    store.put_papers(batch, fake)
    assert store.count_chunks() == 10_020
    large = _vm_steps(store, "PMC1")
    assert large <= small * 1.2, (small, large)
    plan = " ".join(
        row[3]
        for row in store._conn().execute(
            "EXPLAIN QUERY PLAN SELECT chunk_id, vector FROM chunks WHERE paper_id = ? ORDER BY ordinal",
            ("x",),
        )
    )
    assert "USING INDEX" in plan and "SCAN" not in plan


def test_threads_share_a_store(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store()

    def work(n: int) -> int:
        store.put_paper(*paper(f"PMC{n}", texts(f"PMC{n}", 3)), fake)
        return len(store.get_vectors(f"PMC{n}")[0]) + store.count_papers() * 0

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(work, range(24))) == [3] * 24
    assert store.count_papers() == 24 and store.integrity_check() == []


def test_library_search_looks_past_many_deleted_hits(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    store = open_store(library_refresh_s=3600)
    rng = np.random.default_rng(7)
    query = fake.vector("query")
    near = query + 0.05 * rng.standard_normal((40, 16)).astype(np.float32)
    store.put_papers(
        [(*paper("PMC1", texts("PMC1", 40)), near / np.linalg.norm(near, axis=1, keepdims=True))], fake
    )
    store.put_paper(*paper("PMC2", texts("PMC2", 10)), fake)
    if store.library_index is not None:
        store.library_index.rebuild()
    # Its 40 vectors, the best matches, stay in the FAISS file (SQLite) or as dead rows in the HNSW graph.
    store.delete_paper("PMC1")
    hits = store.search_library(query, k=3)
    assert len(hits) == 3 and {chunk.paper_id for chunk, _ in hits} == {"PMC2"}


def test_reader_sees_writers_papers_at_once(
    open_store: OpenStore,
    fake: FakeEmbedder,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    """A reader opened before the writer wrote sees each committed paper without a restart (both backends)."""
    reader = open_store()
    writer = open_store(library_refresh_s=3600)
    assert reader.count_papers() == 0 and reader.search_library(np.ones(16, np.float32), k=3) == []
    for n in range(1, 4):
        writer.put_paper(*paper(f"PMC{n}", texts(f"PMC{n}", 4), pmid=f"70{n}"), fake)
        target = texts(f"PMC{n}", 4)[n]
        assert reader.count_papers() == n and reader.resolve_alias(f"70{n}") == f"PMC{n}"
        assert [c.text for c in reader.get_chunks(f"PMC{n}")] == texts(f"PMC{n}", 4)
        top, score = reader.search_library(fake.vector(target), k=1)[0]
        assert top.text == target and score == pytest.approx(1.0, abs=1e-5)
    writer.delete_paper("PMC2")
    assert reader.get_paper("PMC2") is None
    assert all(c.paper_id != "PMC2" for c, _ in reader.search_library(fake.vector(texts("PMC2", 4)[2]), k=12))
