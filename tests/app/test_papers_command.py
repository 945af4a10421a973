"""`pmcqa papers` (list, show, text, delete) over the real library, and `pmcqa jobs` with id prefixes: ids are
printed whole, even on a narrow terminal."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_settings, shared_path
from rich.console import Console
from typer.testing import CliRunner

from pmcqa.app.cli import cli
from pmcqa.app.commands import ingest as ingest_command
from pmcqa.app.commands import jobs as jobs_command
from pmcqa.core.settings import Settings
from pmcqa.core.status import Status
from pmcqa.index.store import Store
from pmcqa.ingest.chunking import Chunker
from pmcqa.ingest.jats import parse_jats
from pmcqa.ingest.jobs import JobItem, JobStore, queue_id
from pmcqa.ingest.pipeline import IngestOutcome

runner = CliRunner()
XMRV_DOI = "10.1371/journal.pone.0008519"


@pytest.fixture
def in_library(library_dir, ingested, monkeypatch):
    monkeypatch.setenv("PMCQA_DATA_DIR", str(library_dir))
    monkeypatch.setenv("COLUMNS", "50")  # a narrow terminal: tables must still print ids whole
    return ingested


def test_papers_list_and_show(in_library):
    listed = runner.invoke(cli, ["papers", "list"])
    assert listed.exit_code == 0, listed.output
    assert "PMC2795199" in listed.stdout and XMRV_DOI in listed.stdout  # whole, not "10.1371/jou…"
    as_json = json.loads(runner.invoke(cli, ["papers", "list", "--json", "--limit", "1"]).stdout)
    assert as_json["total"] >= 2 and len(as_json["papers"]) == 1

    shown = json.loads(runner.invoke(cli, ["papers", "show", XMRV_DOI, "--json"]).stdout)
    assert shown["paper_id"] == "PMC2795199" and shown["chars"] == len(in_library["xmrv"].text)
    plain = runner.invoke(cli, ["papers", "show", "pmid:20066031"])
    assert plain.exit_code == 0 and "PMC2795199" in plain.stdout and "outline:" in plain.stdout

    missing = runner.invoke(cli, ["papers", "show", "PMC424242"])
    assert missing.exit_code == 3 and "pmcqa ingest PMC424242" in missing.output
    assert runner.invoke(cli, ["papers", "show", "banana"]).exit_code == 2


def test_papers_list_shows_each_papers_status_whole(library_dir, ingested, embedder, tmp_path, monkeypatch):
    copy = tmp_path / "library"  # a copy: other tests see the session library unchanged
    shutil.copytree(library_dir, copy)
    settings = make_settings(copy)
    (stub,) = parse_jats(shared_path("jats/elife-tools/elife_poa_e06828.xml").read_bytes())  # no <body>
    with Store(settings) as store:
        store.put_paper(*Chunker(settings).chunk(stub, "PMC9999993", source="upload"), embedder)
        store.set_status("PMC1182327", "queued")  # a refresh of it waits in the queue
    monkeypatch.setenv("PMCQA_DATA_DIR", str(copy))
    monkeypatch.setenv("COLUMNS", "50")  # narrow: ids and statuses are still printed whole
    listed = runner.invoke(cli, ["papers", "list"])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if "PMC" in line}
    assert "no-full-text" in rows["PMC9999993"] and XMRV_DOI in listed.stdout
    assert "queued" in rows["PMC1182327"] and "ingested" in rows["PMC2795199"]


def test_papers_text_shows_a_span_in_context(in_library):
    text = in_library["xmrv"].text
    result = runner.invoke(cli, ["papers", "text", "PMC2795199", "--start", "100", "--end", "160", "--json"])
    assert result.exit_code == 0, result.output
    window = json.loads(result.stdout)
    assert window["text"] == text[100:160] and window["chars"] == len(text)
    with_context = runner.invoke(cli, ["papers", "text", "PMC2795199", "--start", "100", "--end", "160",
                                       "--context", "20"])
    assert with_context.stdout.rstrip("\n") == text[80:180]
    backwards = runner.invoke(cli, ["papers", "text", "PMC2795199", "--start", "10", "--end", "5"])
    assert backwards.exit_code == 2 and "before start" in backwards.output


def test_papers_delete(in_library, library):
    record = in_library["xmrv"].model_copy(update={"paper_id": "PMC7770002", "pmid": None, "doi": None})
    copies = [
        chunk.model_copy(update={"paper_id": "PMC7770002", "chunk_id": "y" + chunk.chunk_id[1:]})
        for chunk in library.store.get_chunks("PMC2795199")
    ]
    library.store.put_paper(record, copies, library.embedder)
    deleted = runner.invoke(cli, ["papers", "delete", "PMC7770002"])
    assert deleted.exit_code == 0 and "deleted PMC7770002" in deleted.stdout
    assert library.store.get_paper("PMC7770002") is None
    assert runner.invoke(cli, ["papers", "delete", "PMC7770002"]).exit_code == 3

    library.store.put_paper(record, copies, library.embedder)
    as_json = runner.invoke(cli, ["papers", "delete", "PMC7770002", "--json"])  # the README's `--json`
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {"deleted": "PMC7770002"}  # DELETE /papers/{id}'s body


def test_jobs_accepts_a_unique_prefix_and_prints_ids_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "40")
    store = JobStore.for_settings(type("S", (), {"data_dir": tmp_path})())
    doi = "10.1016/j.cell.2020.02.052"
    jobs = [store.create([doi, "PMC1"]) for _ in range(3)]
    ids = [job.job_id for job in jobs]
    # The shortest prefix that only one of them starts with, and one that several start with (if any).
    unique = next(
        job_id[:n] for n in range(1, 33) for job_id in ids if sum(j.startswith(job_id[:n]) for j in ids) == 1
    )
    shown = runner.invoke(cli, ["jobs", unique, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["job_id"].startswith(unique)
    table = runner.invoke(cli, ["jobs", unique])
    assert doi in table.stdout  # whole, on a 40-column terminal

    listed = runner.invoke(cli, ["jobs"])
    assert all(job_id in listed.stdout for job_id in ids)
    assert runner.invoke(cli, ["jobs", "0" * 32]).exit_code == 2
    everything = runner.invoke(cli, ["jobs", ""])
    assert everything.exit_code == 2  # the empty prefix is no job id


def test_a_job_whose_ids_look_like_markup_prints(tmp_path, monkeypatch):
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path))
    store = JobStore.for_settings(type("S", (), {"data_dir": tmp_path})())
    job = store.create(["doi:10.1000/x[/y]", "PMC[bold]1"])  # as any API client may post them
    table = runner.invoke(cli, ["jobs", job.job_id])
    assert table.exit_code == 0, table.output  # it was a MarkupError traceback
    assert "doi:10.1000/x[/y]" in table.stdout and "PMC[bold]1" in table.stdout


def test_ambiguous_job_prefix_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "300")  # the error box on one line
    store = JobStore.for_settings(type("S", (), {"data_dir": tmp_path})())
    # Enough jobs that two share a first character (pigeonhole: 17 ids over 16 hex digits).
    ids = [store.create([f"PMC{n}"]).job_id for n in range(1, 18)]
    shared = next(job_id[0] for job_id in ids if sum(j.startswith(job_id[0]) for j in ids) > 1)
    result = runner.invoke(cli, ["jobs", shared])
    assert result.exit_code == 2 and "give more of the id" in result.output


def test_jobs_wait_warns_only_when_no_worker_serves_the_queue(tmp_path, monkeypatch):
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")  # the warning on one line
    settings = Settings()
    store = JobStore.for_settings(settings)
    job = store.create(["PMC1"])
    # follow_job polls until a worker ends the job: here it returns the job as it stands.
    monkeypatch.setattr(jobs_command, "follow_job", lambda _settings, job_id, _console: store.get(job_id))
    warning = "warning: no worker serves this queue: start one (`pmcqa worker`)"

    alone = runner.invoke(cli, ["jobs", job.job_id, "--wait"])
    assert alone.exit_code == 0 and warning in alone.stdout, alone.output

    store.worker_seen("host-a:4242", queue_id(settings))
    served = runner.invoke(cli, ["jobs", job.job_id, "--wait"])
    assert served.exit_code == 0 and f"job {job.job_id}" in served.stdout, served.output
    assert "no worker" not in served.output

    store.worker_seen("elsewhere:1", "redis:pmcqa")  # a worker of another queue serves not this one
    store.worker_gone("host-a:4242")
    assert warning in runner.invoke(cli, ["jobs", job.job_id, "--wait"]).stdout


def test_ingest_and_job_tables_print_statuses_whole(tmp_path, monkeypatch, capsys):
    """A long path or DOI takes the width, but the status stays readable: `no-full-text`, not `no-fu…`."""
    monkeypatch.setenv("COLUMNS", "60")
    path = "/a/rather/long/folder/of/jats/files/journal.pbio.0020188.xml"
    outcomes = [
        IngestOutcome(requested=path, paper_id=XMRV_DOI, status=Status.NO_FULL_TEXT, reason="no <body>"),
        IngestOutcome(requested=path + "x", paper_id=XMRV_DOI, status=Status.INGESTED, title="A title"),
    ]
    ingest_command.print_table(outcomes)
    printed = capsys.readouterr().out
    assert "no-full-text" in printed and "ingested" in printed and path in printed

    store = JobStore.for_settings(type("S", (), {"data_dir": tmp_path})())
    job = store.create([path])
    jobs_command.print_job_table(store.get(job.job_id), Console())
    listed = capsys.readouterr().out
    assert "pending" in listed and path in listed


def test_long_failure_reasons_are_printed_whole(tmp_path, monkeypatch, capsys):
    """NCBI's error text is why an id failed: wrapped to the terminal (a long URL folded), never cut."""
    monkeypatch.setenv("COLUMNS", "80")
    url = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/efetch.fcgi?db=pmc&retmode=xml&id=PMC8435807,PMC2647976"
    reason = (
        f"gave up after 6 tries: HTTP 400 Bad Request from {url}: "
        '{"error":"API key invalid","api-key":"0123456789abcdef","type":"api-key","status":"error"} '
        "[the key was revoked] and the last words of the reason"
    )
    whole = "".join(reason.split())
    ingest_command.print_table([IngestOutcome(requested="PMC8435807", status=Status.FAILED, reason=reason)])
    assert whole in _squeezed(capsys.readouterr().out)

    store = JobStore.for_settings(type("S", (), {"data_dir": tmp_path})())
    job = store.get(store.create(["PMC8435807"]).job_id)
    failed = JobItem(id="PMC8435807", status=Status.FAILED, reason=reason)
    jobs_command.print_job_table(job.model_copy(update={"items": [failed]}), Console())
    assert whole in _squeezed(capsys.readouterr().out)


def _squeezed(printed: str) -> str:
    """A table's text without whitespace and cell borders: a cell wrapped over lines reads as one."""
    return "".join(char for char in printed if not char.isspace() and char not in "│┃")
