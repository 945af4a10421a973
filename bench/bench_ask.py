#!/usr/bin/env python
"""`POST /ask` latency and throughput over real HTTP, against a real `pmcqa serve`.

Set-up: a library of the COVID-QA dev papers (../shared/data/covid-qa/dev.json, 21 articles; each context
becomes a paper exactly as `pmcqa eval` builds it, the one article without a PMCID is stored under a
made-up one) is built once and kept in `--cache-dir` (default ~/.cache/pmcqa/bench-ask/), so later runs
start at once. `pmcqa serve --no-worker` runs as a child process on a free port with that data dir and the
extractive backend. A warm-up asks every dev question once, with a lead-in no measured request uses
("Warm-up: ..."): it fills the per-paper caches (BM25 index, the extractive answerer's sentence vectors),
so the rows measure papers that have been asked about before; `--warmup papers` asks one question per paper
instead (colder: most sentences are then embedded during the measurement). Then each client level runs
`--seconds` with that many concurrent clients, each sending its next `/ask` as soon as the previous one is
answered. Every request asks a distinct question: the 203 dev questions about their own papers, then the
same questions with a varied lead-in ("According to the paper, ..."), so no answer cache could hit.

Prints one row per level: requests, requests/s, p50/p95/p99 latency, errors (any non-200 or transport
failure), and the server's CPU time per request (from /proc: less sensitive to other load on a shared
machine than the wall times); the same text goes to `--out` (default bench/bench_ask.out.txt).

    .venv/bin/python bench/bench_ask.py [--seconds 30] [--clients 1,8] [--out bench/bench_ask.out.txt]

The server runs the code PYTHONPATH points at (default: this checkout), so another checkout can be timed
with the same script. `run_load(url, clients, seconds, next_body)` is the load generator, importable by
other benches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pmcqa.app.evaluation import EvalSet, build_store, load_squad  # noqa: E402
from pmcqa.core.ids import InvalidPaperId, parse_id  # noqa: E402
from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.ingest.chunking import Chunker  # noqa: E402

SHARED = Path(os.environ.get("PMCQA_SHARED_DIR", ROOT.parent / "shared")) / "data"
DEFAULT_DEV = SHARED / "covid-qa" / "dev.json"
DEFAULT_CACHE = Path.home() / ".cache" / "pmcqa" / "bench-ask"
DEFAULT_OUT = ROOT / "bench" / "bench_ask.out.txt"
# Lead-ins for the second and later passes over the questions: the question stays the same, its text does not.
LEAD_INS = [
    "According to the paper, ",
    "In this study, ",
    "Based on the article, ",
    "From the text: ",
    "Question: ",
    "Please answer: ",
    "Tell me: ",
    "As reported here, ",
]


# --- load generation (importable) ------------------------------------------------------------------------


@dataclass
class LoadResult:
    clients: int
    seconds: float  # wall time of the phase, first request sent to last reply
    latencies: list[float] = field(default_factory=list)  # s, one per finished request
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "ConnectError", ...

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != "200")

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000 if self.latencies else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def _load(
    url: str, clients: int, seconds: float, next_body: Callable[[], dict[str, object]], path: str
) -> LoadResult:
    result = LoadResult(clients, seconds)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        deadline = started + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                body = next_body()  # one shared sequence: every request of every client differs
                sent = time.perf_counter()
                try:
                    reply = await http.post(path, json=body)
                    status = str(reply.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                result.latencies.append(time.perf_counter() - sent)
                result.statuses[status] += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        result.seconds = time.perf_counter() - started
    return result


def run_load(
    url: str,
    clients: int,
    seconds: float,
    next_body: Callable[[], dict[str, object]],
    path: str = "/ask",
) -> LoadResult:
    """`clients` concurrent closed-loop clients POSTing `next_body()` to `url + path` for `seconds`; each
    sends its next request when its previous one is answered (keep-alive connections, one per client)."""
    return asyncio.run(_load(url, clients, seconds, next_body, path))


def distinct_questions(pairs: list[tuple[str, str]]) -> Iterator[dict[str, object]]:
    """`/ask` bodies that never repeat: the pairs as given, then with a lead-in, then numbered."""
    for round_ in itertools.count():
        for paper_id, question in pairs:
            if round_ == 0:
                text = question
            else:
                lead = LEAD_INS[(round_ - 1) % len(LEAD_INS)]
                text = lead + question[:1].lower() + question[1:]
                if round_ > len(LEAD_INS):
                    text += f" ({round_})"
            yield {"paper_id": paper_id, "question": text}


def shared_sequence(bodies: Iterator[dict[str, object]]) -> Callable[[], dict[str, object]]:
    lock = threading.Lock()

    def next_body() -> dict[str, object]:
        with lock:
            return next(bodies)

    return next_body


# --- the library ---------------------------------------------------------------------------------------


def ask_ids(eval_set: EvalSet) -> EvalSet:
    """The eval set with every paper under an id /ask accepts (a PMCID): COVID-QA has one article without."""
    renamed: dict[str, str] = {}
    for paper_id, _ in eval_set.papers:
        try:
            parse_id(paper_id)
        except InvalidPaperId:
            digits = "".join(ch for ch in paper_id if ch.isdigit()) or str(len(renamed))
            renamed[paper_id] = f"PMC99{int(digits):06d}"
    papers = [(renamed.get(pid, pid), paper) for pid, paper in eval_set.papers]
    for question in eval_set.questions:
        question.paper_id = renamed.get(question.paper_id, question.paper_id)
    return EvalSet(eval_set.name, eval_set.questions, papers)


def build_library(dev: Path, cache_dir: Path) -> tuple[Path, EvalSet, int]:
    """The data dir holding the dev papers (built once, reused while the input and chunker are the same)."""
    eval_set = ask_ids(load_squad(dev))
    data_dir = cache_dir / "data"
    settings = Settings(data_dir=data_dir)
    params = Chunker(settings).params.key()
    # The vectors' identity is the model and the runtime that made them (onnx-int8 vectors are not torch's).
    model = f"{settings.embedding_model}@{settings.embedding_backend}"
    key = hashlib.sha256(dev.read_bytes() + params.encode() + model.encode()).hexdigest()
    marker = cache_dir / "library.json"
    if marker.exists() and json.loads(marker.read_text()).get("key") == key and data_dir.exists():
        return data_dir, eval_set, int(json.loads(marker.read_text())["chunks"])
    from pmcqa.index.embedding import Embedder  # heavy (torch): only when the library must be (re)built

    print(f"building the library in {data_dir} (once) ...", file=sys.stderr, flush=True)
    shutil.rmtree(data_dir, ignore_errors=True)  # a library of another model or chunker is not reused
    store = build_store(eval_set, settings, Embedder(settings), f"squad:{dev.name}")
    chunks = int(store.count_chunks())
    store.close()
    marker.write_text(json.dumps({"key": key, "papers": len(eval_set.papers), "chunks": chunks}))
    return data_dir, eval_set, chunks


# --- the server ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu(pid: int) -> float:
    """CPU s (user + system) a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serve(
    data_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """`pmcqa serve --no-worker` on a free port with the extractive backend; yields (url, pid) once /readyz
    says ready; stops it with SIGTERM afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.environ.get("PYTHONPATH") or str(ROOT),  # another checkout's: time that one
        "PMCQA_DATA_DIR": str(data_dir),
        "PMCQA_HOST": "127.0.0.1",
        "PMCQA_PORT": str(port),
        "PMCQA_ANSWER_BACKEND": "extractive",
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "pmcqa.app.cli", "serve", "--no-worker", "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir.parent)
        try:
            deadline = time.monotonic() + 600
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"pmcqa serve exited with {server.returncode}; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    ready = httpx.get(f"{url}/readyz", timeout=2)
                    if ready.status_code == 200:
                        break
                    if str(ready.json().get("detail") or "").startswith("failed"):  # it will never be ready
                        raise SystemExit(f"pmcqa serve cannot load the library: {ready.json()['detail']}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"pmcqa serve was not ready within 600 s; see {log_path}")
                time.sleep(0.2)
            yield url, server.pid
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()


# --- main ----------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each client level")
    parser.add_argument("--clients", default="1,8", help="comma-separated concurrent client counts")
    parser.add_argument(
        "--warmup",
        choices=["questions", "papers"],
        default="questions",
        help="before measuring, ask every dev question once (with a lead-in no measured request uses: the "
        "steady state of papers asked about before) or one question per paper (colder)",
    )
    parser.add_argument("--dev", type=Path, default=DEFAULT_DEV)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the library is kept")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="also write the report here ('-': don't)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment of the server"
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.clients.split(",") if n.strip()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` stops the server
    if not args.dev.exists():
        raise SystemExit(f"COVID-QA dev set not found at {args.dev} (PMCQA_SHARED_DIR)")

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    data_dir, eval_set, chunks = build_library(args.dev, args.cache_dir)
    pairs = [(q.paper_id, q.question) for q in eval_set.questions]
    bodies = distinct_questions(pairs)
    next_body = shared_sequence(bodies)
    extra_env = dict(item.split("=", 1) for item in args.env)

    load_start = os.getloadavg()[0]
    started_at = datetime.now(UTC)
    rows: list[tuple[LoadResult, float]] = []
    with serve(data_dir, args.cache_dir / "serve.log", extra_env) as (url, pid):
        warm_started = time.perf_counter()
        if args.warmup == "papers":  # one question per paper: each paper's BM25 index and first sentences
            warm = [(paper_id, "What is the main finding of this paper?") for paper_id, _ in eval_set.papers]
        else:  # every dev question once, with a lead-in no measured request uses
            warm = [(paper_id, f"Warm-up: {question}") for paper_id, question in pairs]
        with httpx.Client(base_url=url, timeout=120) as http:
            for paper_id, question in warm:
                reply = http.post("/ask", json={"paper_id": paper_id, "question": question})
                if reply.status_code != 200:
                    raise SystemExit(f"warm-up /ask on {paper_id}: {reply.status_code} {reply.text[:500]}")
        warm_s = time.perf_counter() - warm_started
        for clients in levels:
            cpu_before = process_cpu(pid)
            result = run_load(url, clients, args.seconds, next_body)
            cpu_ms = (process_cpu(pid) - cpu_before) * 1000 / max(result.requests, 1)
            rows.append((result, cpu_ms))
    load_end = os.getloadavg()[0]

    lines = [
        f"pmcqa /ask benchmark, {started_at:%Y-%m-%d %H:%M} UTC; {machine()}",
        f"load average {load_start:.1f} at the start, {load_end:.1f} at the end "
        "(other work on the machine inflates the wall times, much less the CPU per request)",
        f"library: {len(eval_set.papers)} COVID-QA dev papers, {chunks} chunks; backend extractive; "
        f"{len(pairs)} dev questions, every request distinct; warm-up: {len(warm)} asks "
        f"({'every dev question' if args.warmup == 'questions' else 'one per paper'}) in {warm_s:.1f} s, "
        f"{warm_s / len(warm) * 1000:.0f} ms each",
        "",
        "| clients | seconds | requests | req/s | p50 ms | p95 ms | p99 ms | errors | server CPU ms/req |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result, cpu_ms in rows:
        lines.append(
            f"| {result.clients} | {result.seconds:.0f} | {result.requests} | {result.rate:.1f} | "
            f"{result.percentile_ms(50):.0f} | {result.percentile_ms(95):.0f} | "
            f"{result.percentile_ms(99):.0f} | "
            f"{result.errors} | {cpu_ms:.1f} |"
        )
    failures = Counter[str]()
    for result, _ in rows:
        failures.update({s: n for s, n in result.statuses.items() if s != "200"})
    if failures:
        lines += ["", "errors: " + ", ".join(f"{n}× {status}" for status, n in failures.most_common())]
    report = "\n".join(lines)
    print(report)
    if args.out != "-":
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
