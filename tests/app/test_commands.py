"""`pmcqa ask` (in-process, no server) and `pmcqa serve` (prints where the API is, then runs uvicorn)."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import uvicorn
from conftest import run_cli, run_read_only_commands
from fakes.openai_server import FakeOpenAIServer
from fakes.serving import free_port
from typer.testing import CliRunner

from pmcqa.app.cli import cli, main
from pmcqa.app.commands import serve as serve_command
from pmcqa.core.settings import Settings, get_settings
from pmcqa.index.store import Store

runner = CliRunner()
QUESTION = "What is the probability that a research claim is true?"


def test_ask_command_answers_in_process(library_dir, ingested, monkeypatch):
    monkeypatch.setenv("PMCQA_DATA_DIR", str(library_dir))
    question = "What is the probability that a research claim is true?"
    result = runner.invoke(cli, ["ask", "pmid:16060722", question, "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["paper_id"] == "PMC1182327" and answer["citations"] and not answer["abstained"]
    text = ingested["ioannidis"].text
    assert all(text[c["start"] : c["end"]] == c["quote"] for c in answer["citations"])

    plain = runner.invoke(cli, ["ask", "PMC1182327", question, "--backend", "extractive"])
    assert plain.exit_code == 0 and "[1]" in plain.stdout and "1) Searched" in plain.stdout

    missing = runner.invoke(cli, ["ask", "PMC424242", question])
    assert missing.exit_code == 3 and "pmcqa ingest PMC424242" in missing.output
    malformed = runner.invoke(cli, ["ask", "PMC-nope", question])
    assert malformed.exit_code == 2 and "not a paper id" in malformed.output


def test_serve_prints_where_the_api_is(monkeypatch, tmp_path):
    calls = {}
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.update(kwargs, app=app))
    port = free_port()  # a fixed port failed whenever something on the machine served on it
    result = runner.invoke(cli, ["serve", "--port", str(port)])
    assert result.exit_code == 0, result.output
    assert f"http://127.0.0.1:{port}" in result.stdout and "pmcqa ingest PMC" in result.stdout
    assert calls["port"] == port and calls["host"] == "127.0.0.1"
    assert {"/ask", "/healthz", "/metrics"} <= set(calls["app"].openapi()["paths"])


def test_serve_refuses_a_port_in_use_before_its_banner_and_worker(monkeypatch, tmp_path):
    """It printed where the API was, started an embedded worker, then uvicorn failed to bind (exit 3)."""
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: pytest.fail("served on a port in use"))
    monkeypatch.setattr(serve_command, "serve_with_worker", lambda *a: pytest.fail("started a worker"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["serve", "--port", str(port)])
    assert result.exit_code == 1, result.output
    assert f"cannot serve on 127.0.0.1:{port}" in result.output and "pmcqa API on" not in result.output


def test_serve_on_port_0_names_the_port_it_serves(monkeypatch, tmp_path):
    calls = {}
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.update(kwargs))
    monkeypatch.setattr(serve_command, "serve_with_worker", lambda *a: None)
    result = runner.invoke(cli, ["serve", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert calls["port"] > 0 and f"pmcqa API on http://127.0.0.1:{calls['port']} " in result.stdout


def test_a_bad_setting_or_flag_is_a_usage_error_naming_it(monkeypatch, tmp_path, capsys):
    """`main` (the installed `pmcqa`) turns an invalid PMCQA_* value or flag into one line and exit 2."""
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: pytest.fail("served on a bad port"))
    for argv, env, named in [
        (["pmcqa", "serve", "--port", "99999", "--no-worker"], {}, "PMCQA_PORT"),
        (["pmcqa", "papers", "list"], {"PMCQA_TOP_K": "abc"}, "PMCQA_TOP_K"),
    ]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as stop:
            main()
        err = capsys.readouterr().err
        assert stop.value.code == 2 and f"invalid setting {named}" in err and "Traceback" not in err, err
    offset = runner.invoke(cli, ["papers", "list", "--offset", "99999999999999999999"])
    assert offset.exit_code == 2 and "--offset" in offset.output  # not SQLite's OverflowError


def test_a_library_left_mid_reindex_is_one_line_not_a_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path))
    store = Store(Settings())
    with store._transaction() as conn:  # what a reindex cut short leaves behind
        store._set_meta(conn, "reindex_target", "other-model")
    store.close()
    monkeypatch.setattr(sys, "argv", ["pmcqa", "ask", "PMC1182327", "What is true?"])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err  # log lines (an earlier test may have configured logging), then ours
    assert stop.value.code == 1 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("pmcqa: a `pmcqa reindex` to embedding model"), err


def test_read_only_commands_refuse_a_missing_library_and_create_nothing(
    monkeypatch, tmp_path, capsys, request
):
    """A mistyped PMCQA_DATA_DIR: ask, search, papers, jobs and eval of JSONL questions exit 2 with one line
    naming the path, where they created an empty library and answered "not found" or nothing."""
    missing = tmp_path / "dtaa"
    monkeypatch.setenv("PMCQA_DATA_DIR", str(missing))
    get_settings.cache_clear()  # eval reads the process-wide settings: these, and none cached after
    request.addfinalizer(get_settings.cache_clear)
    for args, code, last_line in run_read_only_commands(monkeypatch, capsys, tmp_path):
        assert code == 2 and last_line == (
            f"pmcqa: no library at {missing}: check PMCQA_DATA_DIR, or ingest papers first "
            "(`pmcqa ingest` creates it)"
        ), (args, last_line)
        assert not missing.exists(), args

    # A data dir without the library's database (nothing ingested into it): refused, naming the file.
    missing.mkdir()
    monkeypatch.setattr(sys, "argv", ["pmcqa", "papers", "list"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert (
        stop.value.code == 2
        and f"no library at {missing / 'index' / 'pmcqa.sqlite3'}" in capsys.readouterr().err
    )
    assert list(missing.iterdir()) == []


def test_ingest_creates_a_missing_data_dir(monkeypatch, tmp_path, shared_data):
    fresh = tmp_path / "fresh" / "data"
    monkeypatch.setenv("PMCQA_DATA_DIR", str(fresh))
    article = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pmed.0020124.xml"
    result = runner.invoke(cli, ["ingest", "--xml", str(article), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["status"] == "ingested"
    listed = runner.invoke(cli, ["papers", "list", "--json"])  # and the read-only commands then find it
    assert listed.exit_code == 0 and json.loads(listed.stdout)["total"] == 1, listed.output


def test_ingest_of_a_file_given_as_an_id_points_to_xml_and_stores_nothing(monkeypatch, tmp_path, shared_data):
    data = tmp_path / "data"
    monkeypatch.setenv("PMCQA_DATA_DIR", str(data))
    article = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pmed.0020124.xml"
    result = runner.invoke(cli, ["ingest", "PMC1182327", str(article)])
    assert result.exit_code == 2, result.output
    assert "not paper ids but local files: ingest with --xml" in result.stderr
    assert article.name in result.stderr and not data.exists()  # the valid id was not ingested either
    malformed = runner.invoke(cli, ["ingest", "--inline", "banana"])  # not a file: an invalid id, as before
    assert malformed.exit_code == 1 and "not a paper id" in malformed.stdout


@pytest.fixture
def library_copy(library_dir: Path, ingested, tmp_path: Path) -> Path:
    """The session library, copied for a subprocess to open: closing what it sees as the last connection to
    the session's own database, it would delete the WAL this process still reads (SQLite's POSIX locks, which
    show this process's connections, are dropped by any close of that file here, e.g. a copy's)."""
    copy = tmp_path / "library"
    shutil.copytree(library_dir, copy)
    return copy


def _answering(command: str, backend: str, tmp_path: Path) -> list[str]:
    """`pmcqa ask` of one question, or `pmcqa eval --answers` of a one-question file, with `backend`."""
    if command == "ask":
        return ["ask", "PMC1182327", QUESTION, "--backend", backend]
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"paper_id": "PMC1182327", "question": "What is true?", "answers": ["x"]}\n')
    return ["eval", str(questions), "--answers", "--backend", backend]


@pytest.mark.parametrize("command", ["ask", "eval"])
def test_a_model_server_not_ready_is_reported_once(
    command: str, library_copy: Path, tmp_path: Path, shared_onnx_exports: Path
) -> None:
    """`ask` and `eval --answers` with an OpenAI-compatible server that cannot answer said why twice: the
    readiness check's log warning, then the command's own error line. Now the error line alone says it."""
    args = _answering(command, "openai", tmp_path)
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with FakeOpenAIServer(models=["another-model"]) as without_model:
        for url, reason in [
            (closed, f"cannot reach {closed}: connection refused"),
            (without_model.base_url, f"{without_model.base_url} does not serve 'bio-gpt-oss-20b'"),
        ]:
            env = {"PMCQA_OPENAI_BASE_URL": url, "PMCQA_EMBEDDING_EXPORT_DIR": str(shared_onnx_exports)}
            report, stderr = run_cli(args, library_copy, env)
            said = " ".join(stderr.split())  # rich wraps eval's lines
            assert report["code"] == 5 and said.count(reason) == 1, stderr
            assert f"error: answer backend 'openai' is not ready: {reason}" in said, stderr


@pytest.mark.parametrize("command", ["ask", "eval"])
def test_a_backend_that_fails_to_load_is_one_line_not_a_traceback(
    command: str, library_copy: Path, tmp_path: Path, shared_onnx_exports: Path
) -> None:
    """A transformers model path that does not exist: the failed load was logged with its traceback before
    the command's own error line. Now the error line alone (exit 5, as for any backend not ready)."""
    args = _answering(command, "transformers", tmp_path)
    env = {
        "PMCQA_MODEL": str(tmp_path / "no-such-model"),
        "PMCQA_EMBEDDING_EXPORT_DIR": str(shared_onnx_exports),
        "HF_HUB_OFFLINE": "1",  # a path that is not there is never looked up on the Hub
    }
    report, stderr = run_cli(args, library_copy, env)
    said = " ".join(stderr.split())  # rich wraps eval's lines
    assert report["code"] == 5 and "Traceback" not in stderr, stderr
    assert (
        said.count("failed to load") == 1 and "error: answer backend 'transformers' failed to load: " in said
    )
    # The path, not transformers' "Repo id must be in the form ..." (compared without spaces: rich folds it).
    assert f"PMCQA_MODEL={env['PMCQA_MODEL']}:nosuchdirectory" in "".join(stderr.split()), stderr
