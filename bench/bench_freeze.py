#!/usr/bin/env python
"""Does the API stay alive while NCBI hangs? The freeze scenario of issue 11, against a real `pmcqa serve`.

Set-up (all local): a library of a few real JATS papers (../shared/data/jats, stored with `pmcqa ingest
--xml`); `pmcqa serve --no-worker` on the extractive backend with the E-utilities and ID Converter URLs
pointed at a local socket that accepts connections and never answers (NCBI hanging; `--ncbi closed` points
them at a closed port instead). Then:

1. the storm: 45 concurrent `POST /ask {"paper_id": "pmid:100NN"}` (PMIDs the library does not know, so
   each needs NCBI), while /healthz is probed every 20 ms from another client; prints /healthz latency
   (target p99 < 100 ms) and what the storm got (503/504 within the resolve deadline, never 404 or a hang);
2. the /ask load: 8 and then 32 concurrent clients asking about stored papers for `--seconds` each;
   prints req/s and p50/p95.

    .venv/bin/python bench/bench_freeze.py [--papers 3] [--seconds 15] [--ncbi hang|closed]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PMCQA_SHARED_DIR", ROOT.parent / "shared")) / "data" / "jats"
PAPERS = [  # PLOS articles: stored under their DOIs
    "allofplos/allofplos/starter_corpus/journal.pmed.0020124.xml",
    "allofplos/allofplos/starter_corpus/journal.pone.0008519.xml",
    "allofplos/allofplos/starter_corpus/journal.pbio.0030408.xml",
    "allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml",
]
QUESTIONS = [
    "What did the authors find?",
    "Which methods were used?",
    "What are the main limitations?",
    "What is the probability that a research claim is true?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def silent_server() -> tuple[socket.socket, str]:
    """A listening socket nobody accepts from: connections complete and then hear nothing (NCBI hanging)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"pmcqa serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("pmcqa serve did not come up")


def probe_health(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=300) as http:
        while not stop.is_set():
            started = time.perf_counter()
            http.get("/healthz")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)


async def storm(url: str, clients: int) -> list[tuple[int, str, float]]:
    limits = httpx.Limits(max_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def ask(n: int) -> tuple[int, str, float]:
            started = time.perf_counter()
            body = {"paper_id": f"pmid:100{n:02d}", "question": "What did the authors find?"}
            reply = await http.post("/ask", json=body)
            code = reply.json().get("error", "") if reply.status_code != 200 else ""
            return reply.status_code, code, time.perf_counter() - started

        return await asyncio.gather(*(ask(n) for n in range(clients)))


async def load(url: str, paper_ids: list[str], clients: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def client(n: int) -> None:
            nonlocal errors
            pairs = itertools.cycle([(p, q) for p in paper_ids for q in QUESTIONS])
            for _ in range(n):
                next(pairs)
            while time.monotonic() < deadline:
                paper_id, question = next(pairs)
                started = time.perf_counter()
                reply = await http.post("/ask", json={"paper_id": paper_id, "question": question})
                latencies.append(time.perf_counter() - started)
                errors += reply.status_code != 200

        await asyncio.gather(*(client(n) for n in range(clients)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=3, choices=range(1, len(PAPERS) + 1))
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each /ask load phase")
    parser.add_argument("--storm", type=int, default=45, help="concurrent unresolvable PMIDs")
    parser.add_argument("--ncbi", choices=["hang", "closed"], default="hang")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` stops the server

    silent, ncbi = silent_server() if args.ncbi == "hang" else (None, f"http://127.0.0.1:{free_port()}")
    work = Path(tempfile.mkdtemp(prefix="pmcqa-bench-freeze-"))
    port = free_port()
    env = {
        **os.environ,
        "PMCQA_DATA_DIR": str(work / "data"),
        "PMCQA_EUTILS_URL": f"{ncbi}/entrez/eutils/",
        "PMCQA_IDCONV_URL": f"{ncbi}/idconv/",
        "PMCQA_PORT": str(port),
        "PMCQA_ANSWER_BACKEND": "extractive",
    }
    files = [SHARED / relative for relative in PAPERS[: args.papers]]
    missing = [str(path) for path in files if not path.exists()]
    if missing:
        raise SystemExit(f"shared JATS files not found: {missing}")
    cli = [sys.executable, "-m", "pmcqa.app.cli"]
    ingest = subprocess.run(
        [*cli, "ingest", "--json", *itertools.chain.from_iterable(("--xml", str(f)) for f in files)],
        env=env, capture_output=True, text=True, check=False,
    )
    import json

    outcomes = json.loads(ingest.stdout or "[]")
    paper_ids = [o["paper_id"] for o in outcomes if o.get("status") == "ingested"]
    if not paper_ids:
        raise SystemExit(f"ingest failed: {ingest.stderr[-2000:]}")
    url = f"http://127.0.0.1:{port}"
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    command = [*cli, "serve", "--no-worker", "--log-level", "warning"]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(url, server)
        for paper_id in paper_ids:  # warm: each paper's first question builds its per-paper caches
            httpx.post(f"{url}/ask", json={"paper_id": paper_id, "question": QUESTIONS[0]}, timeout=300)

        idle: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe_health, args=(url, stop, idle))
        prober.start()
        time.sleep(3)
        stop.set()
        prober.join()

        health: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe_health, args=(url, stop, health))
        prober.start()
        started = time.perf_counter()
        results = asyncio.run(storm(url, args.storm))
        storm_s = time.perf_counter() - started
        stop.set()
        prober.join()
        outcome = Counter(f"{status} {code}".strip() for status, code, _ in results)
        slowest = max(elapsed for _, _, elapsed in results)

        rows = []
        for clients in (8, 32):
            latencies, errors = asyncio.run(load(url, paper_ids, clients, args.seconds))
            rows.append((clients, len(latencies) / args.seconds, latencies, errors))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if silent is not None:
            silent.close()

    print(f"library: {len(paper_ids)} papers; NCBI: {args.ncbi} ({ncbi}); pmcqa serve on {url}\n")
    print("| phase | result |")
    print("|---|---|")
    print(
        f"| /healthz idle ({len(idle)} probes) | p50 {percentile(idle, 50) * 1000:.1f} ms, "
        f"p99 {percentile(idle, 99) * 1000:.1f} ms, max {max(idle) * 1000:.1f} ms |"
    )
    print(
        f"| /healthz during the storm ({len(health)} probes) | p50 {percentile(health, 50) * 1000:.1f} ms, "
        f"p95 {percentile(health, 95) * 1000:.1f} ms, p99 {percentile(health, 99) * 1000:.1f} ms, "
        f"max {max(health) * 1000:.1f} ms (target p99 < 100 ms) |"
    )
    summary = ", ".join(f"{count}× {what}" for what, count in outcome.most_common())
    print(f"| storm: {args.storm} concurrent unknown PMIDs | {summary}; all answered in {storm_s:.2f} s, "
          f"slowest {slowest:.2f} s |")
    for clients, rate, latencies, errors in rows:
        print(
            f"| /ask, {clients} clients, {args.seconds:g} s | {rate:.1f} req/s, p50 "
            f"{percentile(latencies, 50) * 1000:.0f} ms, p95 {percentile(latencies, 95) * 1000:.0f} ms, "
            f"{errors} errors |"
        )


if __name__ == "__main__":
    main()
