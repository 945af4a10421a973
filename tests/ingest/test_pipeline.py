"""End-to-end ingest through the fake E-utilities server into a real Store (small hashing encoder)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fakes.eutils_server import FakeEutils
from pydantic import SecretStr
from typer.testing import CliRunner

import pmcqa.app.commands.ingest as command
import pmcqa.ingest.fetch as fetch_module
import pmcqa.ingest.pipeline as pipeline_module
from pmcqa.app.cli import cli
from pmcqa.app.commands.ingest import _run
from pmcqa.core.settings import Settings
from pmcqa.index.store import Store, open_store
from pmcqa.ingest.jats import NO_BODY
from pmcqa.ingest.pipeline import Ingestor


class HashEncoder:
    """A deterministic stand-in for the sentence-transformers model (the store and pipeline are real)."""

    model_name = "test-hash-encoder"
    dimension = 16
    document_prefix = ""

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:16], dtype=np.uint8) for t in texts]
        vectors = np.array(rows, dtype=np.float32).reshape(len(texts), 16) + 1.0
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def ingestor(eutils_settings: Settings) -> Ingestor:
    return Ingestor(eutils_settings, store=Store(eutils_settings), encoder=HashEncoder())


def test_mixed_batch_gives_one_outcome_per_id(ingestor: Ingestor, fake_eutils: FakeEutils) -> None:
    ids = ["PMC8435807", "pmid:41675504", "PMC2647976", "424242", "pmid:1", "bad!", "PMC8435807"]
    seen = []
    outcomes = ingestor.ingest_ids(ids, progress=seen.append)
    assert [o.requested for o in outcomes] == ids
    assert [o.status for o in outcomes] == [
        "ingested",
        "ingested",
        "no-full-text",
        "not-found",
        "not-found",
        "invalid",
        "ingested",
    ]
    assert outcomes[1].paper_id == "PMC12806063" and outcomes[1].chunks > 0
    assert "if you meant PMID 424242, pass pmid:424242" in (outcomes[3].reason or "")
    assert len(seen) == 6  # one progress call per distinct requested id
    assert len(fake_eutils.requests_to("efetch")) == 1
    store = ingestor.store
    assert store.get_paper("PMC8435807").status == "ingested"
    assert store.get_paper("PMC2647976").status == "no-full-text"
    assert len(store.get_chunks("PMC12806063")) == outcomes[1].chunks


def test_reingest_reads_the_raw_cache_unless_refresh(ingestor: Ingestor, fake_eutils: FakeEutils) -> None:
    ingestor.ingest_ids(["PMC8435807"])
    again = ingestor.ingest_ids(["PMC8435807"])
    assert again[0].status == "ingested" and again[0].source == "cache"
    assert len(fake_eutils.requests_to("efetch")) == 1
    ingestor.ingest_ids(["PMC8435807"], refresh=True)
    assert len(fake_eutils.requests_to("efetch")) == 2


def test_each_article_is_parsed_once(
    ingestor: Ingestor, fake_eutils: FakeEutils, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []

    def counting(where: str, parse):  # type: ignore[no-untyped-def]
        def wrapper(data: bytes):  # type: ignore[no-untyped-def]
            parsed.append(where)
            return parse(data)

        return wrapper

    monkeypatch.setattr(fetch_module, "parse_xml", counting("fetch", fetch_module.parse_xml))
    monkeypatch.setattr(pipeline_module, "parse_xml", counting("pipeline", pipeline_module.parse_xml))
    first = ingestor.ingest_ids(["PMC8435807", "PMC12806063", "PMC2647976"])
    assert [o.status for o in first] == ["ingested", "ingested", "no-full-text"]
    assert parsed == ["fetch"]  # the one efetch reply; the pipeline works on its parsed articles
    parsed.clear()
    again = ingestor.ingest_ids(["PMC8435807", "PMC12806063"], refresh=False)
    assert [o.source for o in again] == ["cache", "cache"]
    assert parsed == ["fetch", "fetch"]  # one parse per cached file, none in the pipeline


def test_a_paper_reads_ingesting_while_stored_and_never_stays_so(
    ingestor: Ingestor, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the service reads (409 while `ingesting`): set before the write, superseded by every ending."""
    store = ingestor.store
    put_paper = store.put_paper
    seen: list[str] = []

    def watched(record, chunks, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(store.get_status(record.paper_id).status)
        return put_paper(record, chunks, *args, **kwargs)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "put_paper", watched)
    assert ingestor.ingest_ids(["PMC8435807"])[0].status == "ingested"
    assert seen == ["ingesting"] and store.get_status("PMC8435807").status == "ingested"

    monkeypatch.setattr(store, "put_paper", broken)
    assert ingestor.ingest_ids(["PMC8435807"])[0].status == "failed"
    status = store.get_status("PMC8435807")
    assert status.status == "failed" and "disk full" in status.reason

    monkeypatch.setattr(store, "put_paper", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingestor.ingest_ids(["PMC8435807"])
    status = store.get_status("PMC8435807")
    assert status.status == "failed" and "interrupted: KeyboardInterrupt" in status.reason
    plos = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml"
    with pytest.raises(KeyboardInterrupt):
        ingestor.ingest_files([plos], id_override="PMC9999998")
    assert store.get_status("PMC9999998").status == "failed"


def test_local_files_dirs_and_packages(ingestor: Ingestor, shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "eutils/efetch-pmc/efetch_pmc_PMC8435807_correction__from_biopython.xml"
    plos = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml"
    package = tmp_path / "pkg.tar.gz"
    with tarfile.open(package, "w:gz") as tar:
        tar.add(src, arcname="pkg/article.nxml")
        for name, data in [("pkg/figure.jpg", b"\xff\xd8"), ("../evil.nxml", b"<article/>")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    junk = tmp_path / "junk.xml"
    junk.write_bytes(b"<html/>")
    outcomes = ingestor.ingest_files([package, plos, junk, tmp_path / "missing.xml"])
    by = {o.requested.split("::")[-1]: o for o in outcomes}
    assert by["pkg/article.nxml"].status == "ingested" and by["pkg/article.nxml"].paper_id == "PMC8435807"
    assert by["pkg/figure.jpg"].skipped and by["pkg/figure.jpg"].ok
    assert by["../evil.nxml"].status == "invalid" and not by["../evil.nxml"].skipped
    assert by[str(plos)].paper_id == "10.1371/journal.pbio.0020188"  # no PMCID: its DOI
    assert by[str(junk)].status == "invalid"
    assert by[str(tmp_path / "missing.xml")].status == "failed"
    override = ingestor.ingest_files([plos], id_override="PMC9999999")
    assert override[0].paper_id == "PMC9999999" and ingestor.store.get_paper("PMC9999999") is not None


BODILESS = (
    b"<article><front><article-meta><title-group><article-title>Stub</article-title></title-group>"
    b"<abstract><p>Only an abstract.</p></abstract></article-meta></front></article>"
)


def test_a_copy_without_body_never_replaces_stored_full_text(ingestor: Ingestor, shared_data: Path) -> None:
    plos = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml"
    (full,) = ingestor.ingest_files([plos], id_override="PMC9999998")
    chunks = [c.text for c in ingestor.store.get_chunks("PMC9999998")]
    assert full.status == "ingested" and len(chunks) > 5

    (stub,) = ingestor.ingest_bytes(BODILESS, "upload", id_override="PMC9999998")
    assert stub.status == "failed" and "full text already stored under PMC9999998 is kept" in str(stub.reason)
    assert ingestor.store.get_paper("PMC9999998").status == "ingested"
    assert [c.text for c in ingestor.store.get_chunks("PMC9999998")] == chunks

    (new,) = ingestor.ingest_bytes(BODILESS, "upload", id_override="PMC9999997")  # nothing to keep: stored
    assert new.status == "no-full-text" and new.reason == "the article has no body text (front matter only)"
    record = ingestor.store.get_paper("PMC9999997")
    assert record.status == "no-full-text" and record.source == "upload"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<html><body/></html>", "not a JATS article: root element <html> holds no <article>"),
        (b"", "not a JATS article: empty XML document"),
        (b"<article><front>", "not a JATS article: malformed or truncated XML: "),
    ],
)
def test_a_file_that_is_no_jats_says_so_once(ingestor: Ingestor, data: bytes, reason: str) -> None:
    (outcome,) = ingestor.ingest_bytes(data, "page.xml")
    assert outcome.status == "invalid" and str(outcome.reason).startswith(reason)
    assert str(outcome.reason).count("JATS") == 1


def test_an_article_without_body_gives_one_reason_fetched_or_given(
    ingestor: Ingestor, fake_eutils: FakeEutils, shared_data: Path
) -> None:
    poa = shared_data / "jats/elife-tools/elife_poa_e06828.xml"  # publish-on-accept: front matter only
    (fetched,) = ingestor.ingest_ids(["PMC9000003"])
    (given,) = ingestor.ingest_files([poa], id_override="PMC9999995")
    (uploaded,) = ingestor.ingest_bytes(poa.read_bytes(), "upload", id_override="PMC9999994")
    assert {o.status for o in (fetched, given, uploaded)} == {"no-full-text"}
    assert fetched.reason == given.reason == uploaded.reason == NO_BODY


def test_cli_ingest_json_and_exit_codes(
    eutils_settings: Settings, fake_eutils: FakeEutils, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(command, "get_settings", lambda: eutils_settings)
    monkeypatch.setattr(
        command, "run_ingest", lambda settings, *a, **k: _run_with_hash_store(eutils_settings, *a, **k)
    )
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("PMC2647976  # restricted\n\n# comment line\n")
    ok = CliRunner().invoke(cli, ["ingest", "PMC8435807", "--ids-file", str(ids_file), "--json"])
    assert ok.exit_code == 0, ok.output
    assert [o["status"] for o in json.loads(ok.stdout)] == ["ingested", "no-full-text"]
    bad = CliRunner().invoke(cli, ["ingest", "PMC8435807", "424242"])
    assert bad.exit_code == 1 and "not-found" in bad.stdout
    assert CliRunner().invoke(cli, ["ingest"]).exit_code == 2


def test_cli_xml_takes_every_following_path(
    eutils_settings: Settings, monkeypatch: pytest.MonkeyPatch, shared_data: Path, tmp_path: Path
) -> None:
    monkeypatch.setattr(command, "get_settings", lambda: eutils_settings)
    monkeypatch.setattr(
        command, "run_ingest", lambda settings, *a, **k: _run_with_hash_store(eutils_settings, *a, **k)
    )
    plos = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml"
    restricted = next((shared_data / "eutils/efetch-pmc").glob("restricted_PMC2647976_*.xml"))
    result = CliRunner().invoke(cli, ["ingest", "--xml", str(plos), str(restricted), "--json"])
    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.stdout)
    assert [(o["paper_id"], o["status"]) for o in outcomes] == [
        ("10.1371/journal.pbio.0020188", "ingested"),
        ("PMC2647976", "no-full-text"),
    ]


def _run_with_hash_store(settings: Settings, ids, xml_paths, id_override, refresh, show_progress=False):  # type: ignore[no-untyped-def]
    ingestor = Ingestor(settings, store=Store(settings), encoder=HashEncoder())
    return _run(ingestor, ids, xml_paths, id_override, refresh, None)


def test_a_new_chunker_version_is_detected_and_reingest_rechunks(
    eutils_settings: Settings, fake_eutils: FakeEutils, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pmcqa.ingest.chunking as chunking

    store = Store(eutils_settings)
    Ingestor(eutils_settings, store=store, encoder=HashEncoder()).ingest_ids(["PMC8435807"])
    before = store.get_paper("PMC8435807")
    assert before is not None and before.chunking is not None
    assert before.chunking.version == chunking.CHUNKER_VERSION
    old_ids = {c.chunk_id for c in store.get_chunks("PMC8435807")}
    # A release that changes the chunker (or the parser's rendering) bumps the version.
    monkeypatch.setattr(chunking, "CHUNKER_VERSION", chunking.CHUNKER_VERSION + 1)
    upgraded = Ingestor(eutils_settings, store=store, encoder=HashEncoder())
    assert upgraded.chunker.params != before.chunking  # the stored paper is detectably out of date
    (outcome,) = upgraded.ingest_ids(["PMC8435807"])
    assert outcome.status == "ingested" and outcome.source == "cache"  # re-chunked without a refetch
    after = store.get_paper("PMC8435807")
    assert after is not None and after.chunking == upgraded.chunker.params
    new_ids = {c.chunk_id for c in store.get_chunks("PMC8435807")}
    assert new_ids and not new_ids & old_ids  # ids hash the params: every chunk was replaced


def test_cli_ingest_ids_file_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_bytes(b"PMC1\n\xff\n")
    result = CliRunner().invoke(cli, ["ingest", "--ids-file", str(ids_file)])
    assert result.exit_code == 2 and "not UTF-8" in result.output, result.output


def test_a_corrupt_package_is_one_failed_outcome_not_a_crash(
    ingestor: Ingestor, shared_data: Path, tmp_path: Path
) -> None:
    plos = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml"
    package = tmp_path / "pkg.tar.gz"
    with tarfile.open(package, "w:gz") as tar:
        for n in range(3):
            tar.add(plos, arcname=f"pkg/article{n}.nxml")
    data = bytearray(package.read_bytes())
    seen = set()
    for offset in range(200, len(data) - 200, max(1, (len(data) - 400) // 60)):  # corrupt the deflate stream
        broken = tmp_path / f"broken{offset}.tar.gz"
        broken.write_bytes(bytes(data[:offset]) + bytes(b ^ 0x5A for b in data[offset : offset + 8])
                           + bytes(data[offset + 8 :]))
        outcomes = ingestor.ingest_files([broken, plos], id_override=[None, "PMC9999996"])
        assert outcomes[-1].paper_id == "PMC9999996" and outcomes[-1].status == "ingested"
        seen.update(o.reason.split(":")[0] for o in outcomes[:-1] if o.status == "failed" and o.reason)
    assert "bad package" in seen  # some corruption is only found mid-stream (zlib.error), and is reported


def test_an_ingest_by_id_keeps_a_copy_the_user_gave_unless_refresh(
    ingestor: Ingestor, fake_eutils: FakeEutils, shared_data: Path
) -> None:
    plos = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml"
    (given,) = ingestor.ingest_files([plos], id_override="PMC8435807")
    title = ingestor.store.get_paper("PMC8435807").title
    ingestor.store.set_status("PMC8435807", "queued")  # as a job's submit marks it
    (kept,) = ingestor.ingest_ids(["PMC8435807"])
    assert ingestor.store.get_status("PMC8435807").status == "ingested"  # not left `queued` (409 forever)
    assert kept.status == "ingested" and kept.source == "library" and kept.chunks == given.chunks
    assert "refresh" in str(kept.reason) and fake_eutils.requests_to("efetch") == []
    assert ingestor.store.get_paper("PMC8435807").title == title  # the file's copy, not PMC's
    (fetched,) = ingestor.ingest_ids(["PMC8435807"], refresh=True)
    assert fetched.source == "efetch" and len(fake_eutils.requests_to("efetch")) == 1
    assert ingestor.store.get_paper("PMC8435807").title != title


def test_a_doi_in_another_case_names_the_paper_already_stored(ingestor: Ingestor, shared_data: Path) -> None:
    plos = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml"
    (first,) = ingestor.ingest_files([plos], id_override="10.1234/ABC.x")
    (again,) = ingestor.ingest_files([plos], id_override="10.1234/abc.X")  # DOIs are case-insensitive
    assert first.paper_id == again.paper_id == "10.1234/ABC.x" and again.status == "ingested"
    assert ingestor.store.paper_ids() == ["10.1234/ABC.x"]


PLOS_DOI = "10.1371/journal.pbio.0020188"  # the file carries no PMCID; the fake serves it as PMC9000001


@pytest.fixture(params=["sqlite", "postgres"])
def any_ingestor(
    request: pytest.FixtureRequest, eutils_settings: Settings, ingestor: Ingestor
) -> Iterator[Ingestor]:
    """The pipeline on each store backend (PostgreSQL: a fresh database, skipped where it is unreachable)."""
    if request.param == "sqlite":
        yield ingestor
        return
    url = request.getfixturevalue("scratch_postgres_database")("pipeline")
    settings = eutils_settings.model_copy(update={"database_url": SecretStr(url)})
    with open_store(settings) as store:
        yield Ingestor(settings, store=store, encoder=HashEncoder())


def test_a_paper_given_by_file_under_its_doi_is_one_record_once_fetched_by_pmcid(
    any_ingestor: Ingestor, fake_eutils: FakeEutils, shared_data: Path
) -> None:
    ingestor = any_ingestor
    plos = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml"
    store = ingestor.store
    (given,) = ingestor.ingest_files([plos])
    assert given.paper_id == PLOS_DOI
    texts = [c.text for c in store.get_chunks(PLOS_DOI)]
    vectors = store.get_vectors(PLOS_DOI)[1]

    (kept,) = ingestor.ingest_ids(["PMC9000001"])  # PMC's copy carries the PMCID and the same DOI
    assert (kept.paper_id, kept.status, kept.source) == ("PMC9000001", "ingested", "library")
    assert "refresh" in str(kept.reason) and PLOS_DOI in str(kept.reason)
    assert store.paper_ids() == ["PMC9000001"]  # one paper, one record, under its canonical id
    assert store.resolve_alias(PLOS_DOI) == "PMC9000001" and store.get_status(PLOS_DOI) is None
    moved = store.get_paper("PMC9000001")
    assert moved.source == str(plos) and moved.doi == PLOS_DOI  # the file's copy, not PMC's
    assert [c.text for c in store.get_chunks("PMC9000001")] == texts
    np.testing.assert_array_equal(store.get_vectors("PMC9000001")[1], vectors)
    assert store.get_status("PMC9000001").status == "ingested"

    (again,) = ingestor.ingest_files([plos])  # the file again: the paper the library holds under its PMCID
    assert again.paper_id == "PMC9000001" and store.paper_ids() == ["PMC9000001"]

    fake_eutils.add_idmap("PMC9000001", doi=PLOS_DOI)
    (fetched,) = ingestor.ingest_ids([PLOS_DOI], refresh=True)
    assert fetched.paper_id == "PMC9000001" and fetched.source == "efetch"
    assert store.paper_ids() == ["PMC9000001"] and store.get_paper("PMC9000001").source == "efetch"


def test_a_refresh_replaces_the_copy_stored_under_the_doi_with_pmcs(
    ingestor: Ingestor, fake_eutils: FakeEutils, shared_data: Path
) -> None:
    plos = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml"
    ingestor.ingest_files([plos])
    (fetched,) = ingestor.ingest_ids(["PMC9000001"], refresh=True)
    assert fetched.status == "ingested" and fetched.source == "efetch"
    store = ingestor.store
    assert store.paper_ids() == ["PMC9000001"] and store.resolve_alias(PLOS_DOI) == "PMC9000001"
    assert store.get_paper("PMC9000001").source == "efetch" and store.get_status(PLOS_DOI) is None

    (stub,) = ingestor.ingest_bytes(BODILESS.replace(b"<front><article-meta>", (
        b'<front><article-meta><article-id pub-id-type="doi">' + PLOS_DOI.upper().encode() + b"</article-id>"
    )), "upload")
    assert stub.paper_id == "PMC9000001" and stub.status == "failed"  # its DOI names the stored paper
    assert store.paper_ids() == ["PMC9000001"] and store.get_paper("PMC9000001").status == "ingested"
