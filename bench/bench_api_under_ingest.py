#!/usr/bin/env python
"""Does the API keep answering /ask while a 200-paper ingest job runs?

Set-up (all local, no NCBI): the fake E-utilities server (tests/fakes/eutils_server.py) serves JATS files of
../shared/data/jats under 200 fake PMCIDs; a `pmcqa worker` process ingests them (real pipeline: efetch,
parse, chunk, embed, store); the API runs in its own uvicorn process on the extractive backend. We time /ask
on one ingested paper, first idle, then while the job runs, and print p50/p95 per phase.

    .venv/bin/python bench/bench_api_under_ingest.py [--papers 200] [--idle-asks 40] [--workers 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fakes.eutils_server import run_fake_eutils  # noqa: E402

from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.ingest.jobs import JobStore  # noqa: E402
from pmcqa.ingest.worker import enqueue_job, settings_env  # noqa: E402

SHARED = Path(os.environ.get("PMCQA_SHARED_DIR", ROOT.parent / "shared")) / "data" / "jats"
ASK_FILE = "allofplos/allofplos/starter_corpus/journal.pmed.0020124.xml"  # Ioannidis 2005
ASK_ID = "PMC9100000"
QUESTIONS = [
    "What makes a research finding less likely to be true?",
    "How does the pre-study probability affect the positive predictive value?",
    "What is the effect of bias on research findings?",
    "Why are small studies less likely to be true?",
    "What role do financial interests play?",
]


def corpus_files(max_chars: int) -> list[Path]:
    rows = [json.loads(line) for line in (SHARED / "INVENTORY.jsonl").read_text().splitlines()]
    keep = [
        SHARED / row["file"]
        for row in rows
        if row.get("has_body") and row.get("n_articles") == 1 and row.get("body_chars", 0) <= max_chars
    ]
    if not keep:
        raise SystemExit(f"no JATS corpus under {SHARED}")
    return keep


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def job_finished(jobs: JobStore, job_id: str) -> bool:
    job = jobs.get(job_id, items=False)
    return bool(job and job.finished)


ENDPOINT = "/ask"


def request_body(question: str) -> dict[str, str]:
    if ENDPOINT == "/search":  # retrieval only: a stand-in when the answer backend is unavailable
        return {"paper_id": ASK_ID, "query": question}
    return {"paper_id": ASK_ID, "question": question}


def ask_loop(client: httpx.Client, stop: Callable[[int], bool]) -> tuple[list[float], int]:
    """Sequential /ask calls until `stop(n)`; returns latencies (s) and the number of non-200 replies."""
    latencies: list[float] = []
    errors = 0
    for n, question in enumerate(itertools.cycle(QUESTIONS)):
        if stop(n):
            break
        start = time.perf_counter()
        try:
            ok = client.post(ENDPOINT, json=request_body(question)).status_code == 200
        except httpx.HTTPError:
            ok = False
        latencies.append(time.perf_counter() - start)
        errors += not ok
    return latencies, errors


def row(name: str, latencies: list[float], errors: int) -> str:
    p50, p95 = percentile(latencies, 50) * 1000, percentile(latencies, 95) * 1000
    mean, worst = statistics.fmean(latencies) * 1000, max(latencies) * 1000
    return f"| {name} | {len(latencies)} | {p50:.0f} | {p95:.0f} | {mean:.0f} | {worst:.0f} | {errors} |"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=200)
    parser.add_argument("--idle-asks", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1, help="worker threads in the worker process")
    parser.add_argument("--max-chars", type=int, default=40_000, help="skip corpus files with longer bodies")
    parser.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    parser.add_argument("--endpoint", choices=["/ask", "/search"], default="/ask")
    args = parser.parse_args()
    global ENDPOINT
    ENDPOINT = args.endpoint
    args.port = args.port or free_port()

    # SIGTERM → SystemExit, so the `finally` below stops the worker and API children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    files = corpus_files(args.max_chars)
    ids = [f"PMC{9000001 + n}" for n in range(args.papers)]
    with tempfile.TemporaryDirectory(prefix="pmcqa-bench-") as tmp, run_fake_eutils() as fake:
        fake.add_article_file(ASK_ID, SHARED / ASK_FILE, assign="pmcid")
        for pmcid, path in zip(ids, itertools.cycle(files), strict=False):
            fake.add_article_file(pmcid, path, assign="pmcid")
        settings = Settings(
            data_dir=Path(tmp) / "data",
            **fake.settings_overrides(),
            ncbi_email="bench@example.org",
            ncbi_requests_per_second=10.0,
            queue_name=f"bench-{uuid.uuid4().hex[:8]}",
            port=args.port,
        )
        env = {**os.environ, **settings_env(settings)}
        logs = ROOT / "bench" / "out" / "logs"  # kept: the first place to look when a run fails
        logs.mkdir(parents=True, exist_ok=True)
        worker = subprocess.Popen(
            [sys.executable, "-m", "pmcqa.app.cli", "worker", "--workers", str(args.workers)],
            env=env, stdout=open(logs / "worker.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "pmcqa.app.main:app_factory",
             "--port", str(args.port), "--log-level", "warning"],
            env=env, stdout=open(logs / "api.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        try:
            jobs = JobStore.for_settings(settings)
            first = enqueue_job(settings, [ASK_ID], jobs=jobs)
            wait_until(lambda: job_finished(jobs, first.job_id), 300, "the /ask paper to be ingested")
            with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=120) as client:
                wait_until(lambda: client.get("/healthz").status_code == 200, 300, "the API")
                _, warm_errors = ask_loop(client, lambda n: n >= 3)  # warm-up: model and index caches
                if warm_errors:
                    raise SystemExit(f"{ENDPOINT} fails; see {logs / 'api.log'}")
                idle, idle_errors = ask_loop(client, lambda n: n >= args.idle_asks)

                started = time.perf_counter()
                job = enqueue_job(settings, ids, jobs=jobs)
                during, during_errors = ask_loop(client, lambda n: job_finished(jobs, job.job_id))
                job_s = time.perf_counter() - started
            final = jobs.get(job.job_id, items=False)
        finally:
            for process in (api, worker):
                process.terminate()
            for process in (api, worker):
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()

    assert final is not None
    print(f"\n{ENDPOINT} latency (ms), extractive backend; job: {args.papers} ids in {job_s:.1f} s "
          f"({args.papers / job_s:.2f} papers/s, worker threads: {args.workers}); outcomes: {final.counts}\n")
    print("| phase | asks | p50 | p95 | mean | max | errors |")
    print("|---|---|---|---|---|---|---|")
    print(row("idle", idle, idle_errors))
    print(row(f"during {args.papers}-id job", during, during_errors))
    out = ROOT / "bench" / "out"
    (out / "api_under_ingest.json").write_text(json.dumps({
        "idle_s": idle, "during_s": during, "job_s": job_s, "counts": final.counts, "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
