"""Fixtures shared by every test package.

Real third-party data lives in `../shared/data` beside the checkout (never copied into the repo); tests that
need it skip with a clear reason where it is absent. `PMCQA_SHARED_DIR` overrides the location.
"""

from __future__ import annotations

import os
from pathlib import Path

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
