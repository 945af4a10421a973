"""Fixtures of the ingest tests: the fake E-utilities server and settings pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.eutils_server import FakeEutils, register_recorded, run_fake_eutils

from pmcqa.core.settings import Settings


@pytest.fixture
def fake_eutils(shared_data: Path) -> Iterator[FakeEutils]:
    """A running fake with the recorded articles, id mappings and elinks registered."""
    with run_fake_eutils() as fake:
        register_recorded(fake, shared_data)
        yield fake


@pytest.fixture
def eutils_settings(settings: Settings, fake_eutils: FakeEutils) -> Settings:
    """Settings aimed at the fake: a fast rate (tests stay quick), tiny backoff, short timeouts."""
    return settings.model_copy(
        update={
            **fake_eutils.settings_overrides(),
            "ncbi_requests_per_second": 50.0,
            "ncbi_timeout_s": 2.0,
            "ncbi_max_tries": 4,
            "ncbi_backoff_s": 0.01,
            "ncbi_backoff_max_s": 0.05,
        }
    )
