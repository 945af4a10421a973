"""Fixtures shared by every test package.

Real third-party data lives in `../shared/data` beside the checkout (never copied into the repo); tests that
need it skip with a clear reason where it is absent. `PMCQA_SHARED_DIR` overrides the location.

PostgreSQL tests use a real server at `PMCQA_TEST_POSTGRES` (default postgresql://postgres@127.0.0.1:5432/
postgres, a role that may create databases): `postgres_database` is one fresh database per test session,
`scratch_postgres_database()` makes more; each has a unique name and is dropped at the end. Where the server
is unreachable (or psycopg is not installed) those tests skip, saying why.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from pmcqa.core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("PMCQA_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
SHARED_DATA = SHARED_DIR / "data"


def shared_path(relative: str) -> Path:
    """Path under ../shared/data, or skip the calling test with a reason saying what is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (expected ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session", autouse=True)
def shared_onnx_exports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ONNX export of the embedding model per test session (the CPU default backend is onnx-int8):
    every test's Settings, subprocesses included, read PMCQA_EMBEDDING_EXPORT_DIR. A developer's own
    setting of it (a persistent cache) is kept."""
    configured = os.environ.get("PMCQA_EMBEDDING_EXPORT_DIR")
    if configured:
        yield Path(configured)
        return
    path = tmp_path_factory.mktemp("onnx-exports")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PMCQA_EMBEDDING_EXPORT_DIR", str(path))
        yield path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh data dir; no network endpoints that could reach NCBI."""
    return Settings(
        data_dir=tmp_path / "data",
        eutils_url="http://127.0.0.1:9/entrez/eutils/",
        idconv_url="http://127.0.0.1:9/idconv/",
        ncbi_email="tests@example.org",
        ncbi_backoff_s=0.01,
        ncbi_backoff_max_s=0.05,
    )


# --- PostgreSQL ---------------------------------------------------------------------------------------------

POSTGRES_ADMIN_URL = os.environ.get("PMCQA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_admin() -> object:
    """An autocommit connection to the server's maintenance database, or skip the test saying why."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgres]' to run the PostgreSQL tests")
    from pmcqa.core.db import redact

    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
        pytest.skip(f"PostgreSQL is not reachable at {redact(POSTGRES_ADMIN_URL)} ({reason})")


@contextlib.contextmanager
def _scratch_database(label: str) -> Iterator[str]:
    """A new, empty database (unique name) for as long as the block runs; dropped afterwards."""
    from pmcqa.core.db import close_pools

    name = f"pmcqa_test_{label}_{os.getpid()}_{secrets.token_hex(3)}"
    with _postgres_admin() as admin:  # type: ignore[attr-defined]
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(POSTGRES_ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        close_pools()  # this process's connections; FORCE ends any a killed subprocess left
        with _postgres_admin() as admin:  # type: ignore[attr-defined]
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session (tests empty what they use)."""
    with _scratch_database("session") as url:
        yield url


@pytest.fixture
def scratch_postgres_database() -> Iterator[Callable[[str], str]]:
    """Factory of fresh databases for one test (migration tests need an untouched one); all dropped after."""
    with contextlib.ExitStack() as stack:
        yield lambda label: stack.enter_context(_scratch_database(label))
