#!/usr/bin/env python
"""How long does `pmcqa` take to answer, started the way a user starts it?

Times, in fresh processes (`python -m pmcqa.app.cli ...`, the same code as the `pmcqa` script) with an empty
temporary data dir: `pmcqa --help`, `pmcqa ask banana x` (a malformed id: exit 2), `pmcqa jobs`, `pmcqa parse`
of one shared JATS file, and `pmcqa serve` on a free port until `/healthz` and then `/readyz` answer 200
(the embedded worker starts too, as it does by default); the first serve run pays the one-off export of
the ONNX encoder into the new data dir and is reported on its own line. Prints the median wall time of
`--runs` runs and the median CPU time (user + system) of the process (for serve: of the server process up
to its first /healthz 200): on a machine shared with other work the wall time grows with the load, the CPU
time much less.

    .venv/bin/python bench/bench_startup.py [--runs 5] [--serve-runs 3] [--no-serve]

The commands run in the temporary data dir with PYTHONPATH set to this checkout; point PYTHONPATH at another
checkout to time that one instead (the script itself imports nothing from pmcqa).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PMCQA_SHARED_DIR", ROOT.parent / "shared")) / "data" / "jats"
PARSE_FILE = "allofplos/allofplos/starter_corpus/journal.pmed.0020124.xml"
CLI = [sys.executable, "-m", "pmcqa.app.cli"]


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(args: list[str], env: dict[str, str], expect: int) -> tuple[float, float]:
    """(wall s, CPU s) of one run of `pmcqa args`; fails loudly if it exits with another code."""
    cpu_before, started = child_cpu(), time.perf_counter()
    done = subprocess.run([*CLI, *args], env=env, cwd=env["PMCQA_DATA_DIR"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"pmcqa {' '.join(args)} exited {done.returncode}, not {expect}:\n{done.stderr}")
    return wall, child_cpu() - cpu_before


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_of(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening yet
        return None


def process_cpu(pid: int) -> float:
    """CPU s (user + system) a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_serve(env: dict[str, str], args: list[str], timeout_s: float = 600) -> tuple[float, float, float]:
    """(s to the first /healthz 200, the server's CPU s by then, s to the first /readyz 200) of one
    `pmcqa serve`."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--log-level", "warning", *args],
        env=env,
        cwd=env["PMCQA_DATA_DIR"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its embedded worker too is stopped with the group below
    )
    healthy = ready = None
    healthy_cpu = 0.0
    try:
        while ready is None:
            if process.poll() is not None:
                raise SystemExit(f"pmcqa serve exited {process.returncode} before /readyz said 200")
            if time.perf_counter() - started > timeout_s:
                raise SystemExit(f"pmcqa serve: /readyz not 200 within {timeout_s:.0f} s")
            if healthy is None and status_of(f"{base}/healthz") == 200:
                healthy = time.perf_counter() - started
                healthy_cpu = process_cpu(process.pid)
            if healthy is not None and status_of(f"{base}/readyz") == 200:
                ready = time.perf_counter() - started
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)  # graceful: serve stops its embedded worker
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything of the group left behind
    assert healthy is not None
    return healthy, healthy_cpu, ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="Runs of each CLI command.")
    parser.add_argument("--serve-runs", type=int, default=3, help="Runs of `pmcqa serve`.")
    parser.add_argument("--no-serve", action="store_true", help="Time the CLI commands only.")
    parser.add_argument(
        "--serve-args", default="", help="Extra `pmcqa serve` arguments, e.g. --serve-args=--no-worker."
    )
    options = parser.parse_args()
    parse_file = SHARED / PARSE_FILE
    if not parse_file.is_file():
        raise SystemExit(f"shared JATS file not found: {parse_file}")

    with tempfile.TemporaryDirectory(prefix="pmcqa-bench-startup-") as data_dir:
        env = {key: value for key, value in os.environ.items() if key != "PMCQA_REDIS_URL"}
        env["PMCQA_DATA_DIR"] = data_dir  # an empty library, SQLite job queue, embedded worker
        env.setdefault("PYTHONPATH", str(ROOT))  # this checkout, unless PYTHONPATH names another
        commands = [
            ("pmcqa --help", ["--help"], 0),
            ("pmcqa ask banana x", ["ask", "banana", "x"], 2),
            ("pmcqa jobs", ["jobs"], 0),
            (f"pmcqa parse {parse_file.name}", ["parse", str(parse_file)], 0),
        ]
        rows = []
        load = os.getloadavg()[0]
        for label, args, expect in commands:
            time_command(args, env, expect)  # warm the file cache; not counted
            runs = [time_command(args, env, expect) for _ in range(options.runs)]
            rows.append((label, statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)))
        serve: list[tuple[float, float, float]] = []
        if not options.no_serve:
            serve = [time_serve(env, options.serve_args.split()) for _ in range(options.serve_runs)]
        load_after = os.getloadavg()[0]

    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
          f"{load:.1f} at the start, {load_after:.1f} at the end; medians of {options.runs} runs")
    print()
    print("| command | wall s | CPU s |")
    print("|---|---:|---:|")
    for label, wall, cpu in rows:
        print(f"| `{label}` | {wall:.2f} | {cpu:.2f} |")
    if serve:
        # The first start on a new data dir exports (and quantizes) the ONNX encoder before /readyz; the
        # later starts reuse that export, as every restart of a deployed service does.
        serve_label = " ".join(["pmcqa serve", options.serve_args]).strip()
        first, restarts = serve[0], serve[1:] or serve[:1]
        health = statistics.median(h for h, _, _ in restarts)
        health_cpu = statistics.median(c for _, c, _ in restarts)
        ready = statistics.median(r for _, _, r in restarts)
        runs = f"median of {len(restarts)} restarts"
        print(f"| `{serve_label}` → first `/healthz` 200 ({runs}) | {health:.2f} | {health_cpu:.2f} |")
        print(f"| `{serve_label}` → first `/readyz` 200 ({runs}) | {ready:.2f} | — |")
        fresh = "new data dir: exports the encoder"
        print(f"| `{serve_label}` → first `/readyz` 200 ({fresh}) | {first[2]:.2f} | — |")

if __name__ == "__main__":
    main()
