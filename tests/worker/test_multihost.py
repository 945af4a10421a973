"""Several hosts, one library: two API processes and two workers, each with its own empty PMCQA_DATA_DIR,
sharing nothing but PostgreSQL (library, jobs, queue, id map, NCBI rate limit) and an S3 server (raw XML).

A 30-paper job is posted to one API and drained by the workers against the fake E-utilities server while one
worker is SIGKILLed mid-job. Then: every paper is stored exactly once (one outcome per id, one set of chunks),
both APIs answer /ask on every paper, the NCBI rate limit held across all processes (measured at the fake
server), and no process wrote the library to its own disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fakes.eutils_server import run_fake_eutils
from pydantic import SecretStr
from test_shared_ratelimit import max_in_any_window
from worker_helpers import WorkerProcesses, fake_worker_settings, free_port, wait_for

from pmcqa.core.settings import Settings
from pmcqa.index.store import open_store
from pmcqa.ingest.jobs import JobStore, live_workers
from pmcqa.ingest.worker import settings_env

PAPERS = [f"PMC{7300 + n}" for n in range(30)]
RATE = 4.0  # NCBI requests per second, shared by every process
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def _article(pmcid: str) -> bytes:
    number = int(pmcid[3:])
    paragraphs = "".join(
        f"<p>In assay {n}, kinase K{number} phosphorylated substrate S{number} {n + 3} times faster than the "
        f"control, so K{number} controls the stress response of strain {number}.</p>"
        for n in range(4)
    )
    return (
        '<article article-type="research-article"><front><article-meta>'
        f'<article-id pub-id-type="pmcid">{pmcid}</article-id>'
        f"<title-group><article-title>Kinase K{number} and its substrate</article-title></title-group>"
        f"<abstract><p>Kinase K{number} phosphorylates substrate S{number}.</p></abstract>"
        "</article-meta></front>"
        f"<body><sec><title>Results</title>{paragraphs}</sec></body></article>"
    ).encode()


@pytest.fixture
def s3_bucket() -> Iterator[tuple[str, str]]:
    moto_server = pytest.importorskip("moto.server", reason="moto (dev extra) runs the local S3 server")
    boto3 = pytest.importorskip("boto3", reason="boto3 (the s3 extra) is the S3 client")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, **_boto_credentials()).create_bucket(Bucket="pmcqa-raw")
    yield endpoint, "s3://pmcqa-raw/raw"
    server.stop()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def _question(pmcid: str) -> dict[str, str]:
    return {"paper_id": pmcid, "question": f"Which substrate does kinase K{pmcid[3:]} phosphorylate?"}


class ApiProcess:
    """`pmcqa serve --no-worker` in a process of its own, on a free port."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **settings_env(settings), **S3_ENV, "PMCQA_PORT": str(self.port)}
        env["PMCQA_HOST"] = "127.0.0.1"
        self.log = log
        command = [sys.executable, "-m", "pmcqa.app.cli", "serve", "--no-worker"]
        self.proc = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the API exited:\n{self.log.read_text(errors='replace')[-3000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_apis_and_two_workers_share_only_postgres_and_s3(
    tmp_path: Path, scratch_postgres_database, s3_bucket: tuple[str, str]
) -> None:  # type: ignore[no-untyped-def]
    url = scratch_postgres_database("multihost")
    endpoint, raw_store = s3_bucket
    apis: list[ApiProcess] = []
    workers: list[WorkerProcesses] = []
    with run_fake_eutils() as fake:
        for pmcid in PAPERS:
            fake.add_article(pmcid, _article(pmcid))

        def host(name: str) -> Settings:  # a host: its own empty data dir, the shared services
            return fake_worker_settings(
                tmp_path / name, database_url=SecretStr(url), raw_store=raw_store, s3_endpoint_url=endpoint,
                job_batch_size=3, job_lease_s=5.0, ncbi_requests_per_second=RATE, ncbi_backoff_s=0.01,
                ncbi_backoff_max_s=0.05, queue_name="pmcqa-multihost", **fake.settings_overrides(),
            )  # fmt: skip

        try:
            for name in ("worker-a", "worker-b"):
                settings = host(name)
                (tmp_path / name / "logs").mkdir(parents=True)
                procs = WorkerProcesses(settings, tmp_path / name / "logs", dict(S3_ENV))
                procs.start(workers=1)
                workers.append(procs)
            for name in ("api-a", "api-b"):
                (tmp_path / name).mkdir()
                apis.append(ApiProcess(host(name), tmp_path / name / "serve.log"))
            wait_for(lambda: all(api.ready() for api in apis), 300, "both APIs to be ready")
            wait_for(lambda: len(live_workers(host("probe"))) >= 2, 300, "both workers to register")

            reply = httpx.post(f"{apis[0].url}/ingest", json={"ids": PAPERS}, timeout=30)
            assert reply.status_code == 202, reply.text
            job_id = reply.json()["job_id"]
            jobs = JobStore.for_settings(host("probe"))

            # SIGKILL worker a once it has stored a paper (mid-job; its leased batch must be re-run by b).
            wait_for(lambda: (j := jobs.get(job_id)) and j.counts.get("ingested", 0) >= 3, 300, "ingesting")
            killed = workers[0].procs[0]
            killed.kill()
            killed.wait()

            def finished() -> object:
                job = httpx.get(f"{apis[1].url}/jobs/{job_id}", timeout=30).json()
                return job if job["state"] in ("done", "failed") else None

            job = wait_for(finished, 600, "the job to finish on the surviving worker")
            answers = {
                (api.url, pmcid): httpx.post(f"{api.url}/ask", json=_question(pmcid), timeout=120)
                for api in apis
                for pmcid in PAPERS
            }
            arrivals = [r.time for r in fake.requests]
            fetched = [i for r in fake.requests_to("efetch") for i in r.ids()]
        finally:
            for api in apis:
                api.stop()
            for procs in workers:
                procs.stop_all()
            logs = "\n".join(procs.logs() for procs in workers)

    assert job["state"] == "done", (job, logs[-4000:])
    assert job["counts"] == {"ingested": len(PAPERS)}, job
    assert sorted(item["id"] for item in job["items"]) == sorted(PAPERS)  # one outcome per id

    probe = host("probe")
    with open_store(probe) as store:
        store_texts = {pmcid: store.get_paper(pmcid).text for pmcid in PAPERS}
    # Both APIs answer on every paper, from that paper.
    for (api_url, pmcid), reply in answers.items():
        assert reply.status_code == 200, (api_url, pmcid, reply.text)
        body = reply.json()
        assert body["paper_id"] == pmcid
        text = store_texts[pmcid]
        assert all(text[c["start"] : c["end"]] == c["quote"] for c in body["citations"]), body

    # Stored exactly once each: one record, one set of chunks with unique ids.
    with open_store(probe) as store:
        assert sorted(p.paper_id for p in store.list_papers(limit=100)) == sorted(PAPERS)
        for pmcid in PAPERS:
            chunk_ids = [chunk.chunk_id for chunk in store.get_chunks(pmcid)]
            assert chunk_ids and len(chunk_ids) == len(set(chunk_ids)), pmcid
    # Every id fetched; only the killed worker's batch may have been fetched again (at most once more).
    assert set(fetched) == {p[3:] for p in PAPERS} and len(fetched) <= len(PAPERS) + 3, sorted(fetched)

    # The NCBI limit held across all four processes, measured where NCBI would see it.
    assert max_in_any_window(arrivals) <= RATE, sorted(arrivals)

    # Nothing of the library on any host's disk: no SQLite files, no raw XML folder.
    for name in ("worker-a", "worker-b", "api-a", "api-b"):
        data_dir = tmp_path / name / "data"
        leftovers = [p.name for p in data_dir.rglob("*") if p.suffix in (".sqlite3", ".faiss", ".xml")]
        assert not leftovers, (name, leftovers)
