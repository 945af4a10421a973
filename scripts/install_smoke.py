#!/usr/bin/env python3
"""Install pmcqa into a fresh virtual environment the way a user would, and check that it runs there.

    python scripts/install_smoke.py plain     # `pip install .` without extras
    python scripts/install_smoke.py lowest    # every direct dependency at its declared lower bound

plain:  `pip install -c constraints.txt .` (no extras). `pmcqa --version`; the llm, openai, redis, postgres
        and s3 stacks are absent; `pmcqa serve` answers /healthz (with the version) and, after a JATS fixture
        is uploaded through POST /papers, /ask with the extractive backend; asking for the transformers or
        openai backend answers 503 naming `pmcqa[llm]` / `pmcqa[openai]`, and `pmcqa worker` in Redis mode
        exits naming `pmcqa[redis]`.
lowest: pip has no `--resolution=lowest-direct`, so the lower bound of every direct dependency of the core
        and of the llm, openai, redis, postgres and s3 extras is read from pyproject.toml and pinned in a
        generated constraints file (a name that constraints.txt pins keeps that pin: torch). The same service
        check, then the tests that exercise each dependency's API (settings, backends, worker, API) in that
        venv.

Building a venv costs minutes (torch alone is ~750 MB installed), so each mode's venv is kept under
`~/.cache/pmcqa/install-smoke/` (or `$PMCQA_SMOKE_CACHE`), keyed on a hash of pyproject.toml, constraints.txt
and the mode's install options: what gets installed is a function of those. A reused venv gets the current
checkout reinstalled (`pip install --no-deps --force-reinstall .`) before the checks. A lock file serialises
runs that share a venv. Exit status: 0 passed, 1 a check failed, 3 the package index could not be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
CONSTRAINTS = REPO / "constraints.txt"
FIXTURE = REPO / "tests" / "ingest" / "fixtures" / "jats_kitchen_sink.xml"
FIXTURE_ID = "PMC7654321"  # the fixture's own <article-id pub-id-type="pmc">
QUESTION = "Which gene was sequenced?"

INDEX_UNREACHABLE = 3
# pip's words when it could not talk to the index (as opposed to a real resolution failure)
_NETWORK_ERRORS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "Read timed out",
    "Could not fetch URL",
)


@dataclass(frozen=True)
class Mode:
    extras: tuple[str, ...]
    lowest: bool
    # tests run inside the venv (repo-relative); each exercises the APIs of some lower-bounded dependency
    tests: tuple[str, ...] = ()


MODES = {
    "plain": Mode(extras=(), lowest=False),
    "lowest": Mode(
        extras=("llm", "openai", "redis", "postgres", "s3", "report"),
        lowest=True,
        tests=(
            "tests/test_settings.py",  # pydantic-settings (NoDecode, TOML source)
            "tests/app/test_registry.py",
            "tests/app/test_openai_backend.py",  # openai (reasoning_effort) against a fake server
            "tests/app/test_transformers_backend.py",  # transformers, peft, bitsandbytes, safetensors
            "tests/app/test_api.py",  # fastapi/starlette, sse-starlette, instrumentator, faiss, bm25s
            "tests/index/test_store.py",  # faiss, numpy
            "tests/ingest/test_jats.py",  # lxml
            "tests/ingest/test_xml_safety.py",  # lxml's parser options
            "tests/ingest/test_entrez.py",  # biopython, httpx against a fake E-utilities server
            "tests/worker/test_embedded.py",  # huey consumer with graceful_signal
            "tests/worker/test_shared_ratelimit.py",  # redis (skips without a server)
            "tests/core/test_db.py",  # alembic, sqlalchemy, psycopg and its pool (PostgreSQL on 127.0.0.1)
            "tests/index/test_pg_store.py",  # pgvector's psycopg adapter
        ),
    ),
}

# only test tools; they are not pmcqa's dependencies, so never pinned low
TEST_TOOLS = ("pytest>=8", "pytest-timeout>=2.3")


class CheckFailed(Exception):
    pass


class IndexUnreachable(Exception):
    pass


# --- what to install ---------------------------------------------------------------------------------------
def declared_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def constraint_pins() -> set[str]:
    names = set()
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def lower_bounds(requirements: list[Requirement], pinned_elsewhere: set[str]) -> dict[str, Version]:
    """The lowest version each direct dependency allows (the highest floor where a name is declared twice).

    Every dependency must declare a floor (`>=`, `~=` or `==`): an open requirement is an error here.
    """
    bounds: dict[str, Version] = {}
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name in pinned_elsewhere:
            continue
        floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "~=", "==")]
        if not floors:
            raise CheckFailed(f"{requirement} declares no lower bound")
        floor = max(floors)
        if not requirement.specifier.contains(floor, prereleases=True):
            raise CheckFailed(f"{requirement}: its own floor {floor} is excluded")
        bounds[name] = max(floor, bounds.get(name, floor))
    for requirement in requirements:  # the floor of one declaration must satisfy the others of the same name
        name = canonicalize_name(requirement.name)
        if name in bounds and not requirement.specifier.contains(bounds[name], prereleases=True):
            raise CheckFailed(f"{requirement} excludes {name}=={bounds[name]}, the floor declared elsewhere")
    return bounds


def venv_key(mode: Mode) -> str:
    """What decides the venv's third-party contents: the declarations and how this mode installs them."""
    digest = hashlib.sha256(repr((mode.extras, mode.lowest, TEST_TOOLS if mode.tests else ())).encode())
    for path in (PYPROJECT, CONSTRAINTS):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# --- running things ----------------------------------------------------------------------------------------
def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that would make the venv see another pmcqa or settings."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PMCQA_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def run(command: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore


def pip_install(python: Path, args: list[str], timeout: float = 1500) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    result = run(command, timeout, cwd=REPO)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        said = [line.strip() for line in output.splitlines() if any(m in line for m in _NETWORK_ERRORS)]
        if said:
            raise IndexUnreachable("\n".join(said[:3]))
        raise CheckFailed(f"pip install failed:\n{output[-6000:]}")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prune_old_venvs(cache: Path, mode_name: str, keep: Path) -> None:
    """Remove this mode's venvs for older dependency declarations, unless another run holds their lock."""
    for other in cache.glob(f"{mode_name}-*"):
        if other == keep or other.suffix == ".lock" or not other.is_dir():
            continue
        lock = other.with_name(other.name + ".lock")
        with lock.open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(other, ignore_errors=True)
        lock.unlink(missing_ok=True)


def source_copy(into: Path) -> Path:
    """What a checkout's `pip install .` builds from, copied, so the build leaves nothing in the checkout
    (setuptools writes build/ and pmcqa.egg-info beside pyproject.toml)."""
    source = into / "pmcqa-source"
    shutil.copytree(REPO / "pmcqa", source / "pmcqa", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    return source


def prepare_venv(mode: Mode, venv_dir: Path, work: Path) -> Path:
    """The venv for `mode` with pmcqa from this checkout installed; built afresh when its key changed."""
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / ".install-smoke-complete"
    source = source_copy(work)
    target = f"{source}[{','.join(mode.extras)}]" if mode.extras else str(source)
    if stamp.exists():
        print(f"reusing {venv_dir} (dependencies unchanged); reinstalling pmcqa from {REPO}", flush=True)
        pip_install(python, ["--no-deps", "--force-reinstall", str(source)])
        return python
    shutil.rmtree(venv_dir, ignore_errors=True)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
    args = ["-c", str(CONSTRAINTS)]  # not --quiet: pip's connection warnings tell an unreachable index
    if mode.lowest:
        bounds = lower_bounds(declared_requirements(mode.extras), constraint_pins())
        pins = venv_dir / "lowest-constraints.txt"
        pins.write_text("".join(f"{name}=={version}\n" for name, version in sorted(bounds.items())))
        print("lower bounds:", ", ".join(f"{name}=={version}" for name, version in sorted(bounds.items())))
        args += ["-c", str(pins)]
    pip_install(python, [*args, target, *(TEST_TOOLS if mode.tests else ())])
    stamp.write_text(json.dumps({"built_s": round(time.monotonic() - started, 1)}))
    print(f"built {venv_dir} in {time.monotonic() - started:.0f} s", flush=True)
    return python


# --- the checks --------------------------------------------------------------------------------------------
def expected_version() -> str:
    match = re.search(r'^__version__ = "([^"]+)"', (REPO / "pmcqa" / "__init__.py").read_text(), re.M)
    if not match:
        raise CheckFailed("pmcqa/__init__.py sets no __version__")
    return match.group(1)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)
    print("ok:", message, flush=True)


def http(method: str, url: str, body: bytes | None = None, content_type: str = "application/json") -> tuple:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, server: subprocess.Popen[bytes], log: Path, within_s: float = 300) -> dict:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise CheckFailed(f"pmcqa serve exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            status, body = http("GET", url)
            if status == 200:
                return body
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise CheckFailed(f"{url} did not answer 200 within {within_s:.0f} s:\n{log.read_text()[-4000:]}")


def check_cli(venv_bin: Path, mode: Mode, work: Path) -> None:
    version = expected_version()
    result = run([str(venv_bin / "pmcqa"), "--version"], 120, env=clean_env())
    printed = result.stdout.strip()
    check(result.returncode == 0 and printed == f"pmcqa {version}", f"pmcqa --version: {printed}")
    result = run([str(venv_bin / "pmcqa"), "--help"], 120, env=clean_env())
    check(result.returncode == 0 and "serve" in result.stdout, "pmcqa --help lists the commands")
    if mode.extras:
        return
    probe = "import importlib.util as u; print([m for m in ('openai', 'redis', 'peft', 'bitsandbytes', "
    probe += "'accelerate', 'psycopg', 'boto3') if u.find_spec(m)])"
    present = run([str(venv_bin / "python"), "-c", probe], 120, env=clean_env()).stdout.strip()
    check(present == "[]", f"no extra's package is installed without extras (found {present})")
    result = run(
        [str(venv_bin / "pmcqa"), "worker"], 120,
        env=clean_env(PMCQA_DATA_DIR=str(work / "worker"), PMCQA_REDIS_URL="redis://127.0.0.1:9/0"),
    )  # fmt: skip
    named = "pip install 'pmcqa[redis]'" in result.stderr and "Traceback" not in result.stderr
    check(result.returncode == 1 and named, "pmcqa worker in Redis mode without the extra exits 1 naming it")


def check_service(venv_bin: Path, mode: Mode, work: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = work / "serve.log"
    # The minimum confidence is pinned low: this checks the install, not the calibration, and a recalibrated
    # default must not turn the fixture's answer into an abstention. The LLM backends are allowed, so that
    # asking for one reaches the check of its extra.
    env = clean_env(
        PMCQA_DATA_DIR=str(work / "data"), PMCQA_HOST="127.0.0.1", PMCQA_PORT=str(port),
        PMCQA_MIN_CONFIDENCE="0.05", PMCQA_ALLOWED_BACKENDS="transformers,openai",
    )  # fmt: skip
    print(f"$ pmcqa serve  (on {base}, log {log})", flush=True)
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(venv_bin / "pmcqa"), "serve"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        health = wait_for(f"{base}/healthz", server, log)
        check(health == {"status": "ok", "version": expected_version()}, f"/healthz says {health}")
        wait_for(f"{base}/readyz", server, log)
        status, body = http(
            "POST", f"{base}/papers?id={FIXTURE_ID}", FIXTURE.read_bytes(), content_type="application/xml"
        )
        check(
            status == 200 and body.get("paper_id") == FIXTURE_ID, f"POST /papers stored the fixture: {status}"
        )
        question = {"paper_id": FIXTURE_ID, "question": QUESTION}
        status, body = http("POST", f"{base}/ask", json.dumps(question).encode())
        check(status == 200, f"POST /ask answered {status}")
        answered = body["backend"] == "extractive" and not body["abstained"]
        check(answered, f"extractive answer: {body['answer']!r}")
        check("TP53" in body["answer"] and body["citations"], "the answer names TP53 and cites the paper")
        if not mode.extras:
            for backend, extra in (("transformers", "llm"), ("openai", "openai")):
                asked = json.dumps({**question, "backend": backend}).encode()
                status, body = http("POST", f"{base}/ask", asked)
                check(
                    status == 503 and f"pip install 'pmcqa[{extra}]'" in body["detail"],
                    f"backend {backend} without its extra: {status} naming pmcqa[{extra}]",
                )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_tests(python: Path, mode: Mode) -> None:
    if not mode.tests:
        return
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *mode.tests],
        cwd=REPO, env=clean_env(), text=True, capture_output=True, timeout=1500,
    )  # fmt: skip
    tail = "\n".join(result.stdout.strip().splitlines()[-15:])
    print(tail, flush=True)
    check(result.returncode == 0, f"the dependency tests pass at the lower bounds ({tail.splitlines()[-1]})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--rebuild", action="store_true", help="Build the venv afresh even if it is current.")
    args = parser.parse_args()
    mode = MODES[args.mode]
    cache = Path(os.environ.get("PMCQA_SMOKE_CACHE", Path.home() / ".cache" / "pmcqa" / "install-smoke"))
    venv_dir = cache / f"{args.mode}-{venv_key(mode)}"
    started = time.monotonic()
    try:
        with locked(venv_dir.with_name(venv_dir.name + ".lock")):
            if args.rebuild:
                shutil.rmtree(venv_dir, ignore_errors=True)
            with tempfile.TemporaryDirectory(prefix=f"pmcqa-smoke-{args.mode}-") as tmp:
                python = prepare_venv(mode, venv_dir, Path(tmp))
                check_cli(python.parent, mode, Path(tmp))
                check_service(python.parent, mode, Path(tmp))
                run_tests(python, mode)
        prune_old_venvs(cache, args.mode, venv_dir)
    except IndexUnreachable as unreachable:
        print(f"package index unreachable:\n{unreachable}", file=sys.stderr)
        return INDEX_UNREACHABLE
    except CheckFailed as failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    print(f"install smoke ({args.mode}) passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
