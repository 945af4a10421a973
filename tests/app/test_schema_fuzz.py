"""Schema fuzzing of the whole API: schemathesis generates requests for every operation from the OpenAPI
document (valid ones, and invalid ones that must be refused with a documented 4xx) and calls the app
in-process (ASGI) over a copy of the session library (real papers, real components). Every response must be
no server error and must match what the document promises: status code, content type, body schema, headers.

Bounded: a fixed number of derandomized examples per operation and mode (a failure reproduces), and a
wall-clock budget checked at the end.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402 - after the importorskip
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = {GenerationMode.POSITIVE: 50, GenerationMode.NEGATIVE: 25}  # per operation
BUDGET_S = 300  # generous for a 2-core shared machine; alone it takes well under that
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_schema(make_scratch_library):  # type: ignore[no-untyped-def]
    """The service around a copy of the session library, started (its lifespan ran): the fuzzer may upload,
    queue and delete papers without changing what other tests see."""
    from fastapi.testclient import TestClient

    from pmcqa.app.main import create_app

    library = make_scratch_library()
    app = create_app(library.settings, library_factory=lambda _s: library)
    with TestClient(app):  # runs the lifespan: the library is in place for every fuzzed call
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_keeps_its_documented_promises(fuzzed_schema: Any) -> None:
    started = time.monotonic()
    failures: dict[str, str] = {}
    operations = [result.ok() for result in fuzzed_schema.get_all_operations()]
    assert len(operations) >= 12  # every route is in the document

    for operation in operations:
        for mode, examples in EXAMPLES.items():

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                case.call_and_validate(checks=CHECKS)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body): no negative cases
                assert mode == GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # collect them all, so one run shows every broken promise
                failures[f"{operation.label} ({mode.value})"] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert time.monotonic() - started < BUDGET_S
