"""The HTTP API over the real library (TestClient): answers, each error code, papers, search, SSE, metrics."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
from fakes.serving import serve_app
from fastapi.testclient import TestClient

import pmcqa
from pmcqa.app.answering.base import ABSTAIN_ANSWER, CitedSpan, Draft, StepEvent
from pmcqa.app.answering.extractive import ExtractiveBackend
from pmcqa.app.main import create_app
from pmcqa.core.logs import RequestIdFilter

OWN_QUESTION = "What is the probability that a research claim is true?"
FOREIGN_QUESTION = "Was XMRV detected in the blood of patients with chronic fatigue syndrome?"


def _assert_verbatim(client: TestClient, library, answer: dict) -> None:
    paper = library.store.get_paper(answer["paper_id"])
    for citation in answer["citations"]:
        assert paper.text[citation["start"] : citation["end"]] == citation["quote"]


def _app_with(library, **settings_overrides) -> TestClient:
    settings = library.settings.model_copy(update=settings_overrides)
    return TestClient(create_app(settings, library_factory=lambda _s: library))


# --- answers ----------------------------------------------------------------------------------------------


def test_ask_returns_a_cited_answer(client, library):
    response = client.post("/ask", json={"paper_id": "PMC1182327", "question": OWN_QUESTION})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["paper_id"] == "PMC1182327" and answer["question"] == OWN_QUESTION
    assert not answer["abstained"] and answer["citations"]
    assert answer["backend"] == "extractive" and answer["model"].startswith("extractive/")
    assert set(answer["timings"]) >= {"retrieve", "generate", "total"}
    assert all(c["section"] is not None and c["chunk_id"] for c in answer["citations"])
    _assert_verbatim(client, library, answer)


@pytest.mark.parametrize(
    "paper_id", ["PMC1182327.1", "pmcid:PMC1182327", "pmid:16060722", "10.1371/journal.pmed.0020124"]
)
def test_every_accepted_id_form_reaches_the_paper(client, paper_id):
    response = client.post("/ask", json={"paper_id": paper_id, "question": OWN_QUESTION, "top_k": 3})
    assert response.status_code == 200, response.text
    assert response.json()["paper_id"] == "PMC1182327"


def test_question_about_another_paper_abstains(client):
    response = client.post("/ask", json={"paper_id": "PMC1182327", "question": FOREIGN_QUESTION})
    assert response.status_code == 200
    answer = response.json()
    assert answer["abstained"] is True and answer["answer"] == ABSTAIN_ANSWER and answer["citations"] == []


# --- errors -----------------------------------------------------------------------------------------------


def test_unknown_paper_is_404_with_ingest_hint(client):
    response = client.post("/ask", json={"paper_id": "PMC424242", "question": OWN_QUESTION})
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "paper_not_found"
    assert "pmcqa ingest PMC424242" in body["detail"] and "POST /ingest" in body["detail"]


def test_unknown_pmid_is_404_not_500(client):
    # Not a stored alias, and NCBI is unreachable in tests: still a clean 404.
    response = client.post("/ask", json={"paper_id": "pmid:99999999", "question": OWN_QUESTION})
    assert response.status_code == 404
    assert "pmcqa ingest pmid:99999999" in response.json()["detail"]


def test_paper_being_ingested_is_409(client, library):
    for status in ("queued", "ingesting"):
        library.store.set_status("PMC5550001", status)
        response = client.post("/ask", json={"paper_id": "PMC5550001", "question": OWN_QUESTION})
        assert response.status_code == 409, response.text
        assert status in response.json()["detail"]
    detail = client.get("/papers/PMC5550001")
    assert detail.status_code == 200 and detail.json()["status"] == "ingesting"
    assert client.delete("/papers/PMC5550001").status_code == 409
    search = client.post("/search", json={"query": "bias", "paper_id": "PMC5550001"})
    assert search.status_code == 409


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"paper_id": "PMCX12", "question": "What?"}, "not a paper id"),
        ({"paper_id": "hello world", "question": "What?"}, "not a paper id"),
        ({"paper_id": "PMC1182327", "question": "   "}, "question must not be empty"),
        ({"paper_id": "PMC1182327", "question": "why " * 600}, "the limit is 2000"),
        ({"paper_id": "PMC1182327"}, "body.question: Field required"),
        ({"paper_id": "PMC1182327", "question": "What?", "top_k": 0}, "top_k"),
        ({"paper_id": "PMC1182327", "question": "What?", "backend": "gpt9"}, "backend"),
    ],
)
def test_bad_input_is_422_with_a_clear_message(client, body, fragment):
    response = client.post("/ask", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"
    assert fragment in response.json()["detail"]


def test_malformed_json_is_422_not_500(client):
    response = client.post("/ask", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "Traceback" not in response.text


class _Loading(ExtractiveBackend):
    """The extractive backend while its model is still loading."""

    def is_ready(self) -> bool:
        return False


class _Slow(ExtractiveBackend):
    def generate(self, question, passages, paper):
        time.sleep(1.5)
        return super().generate(question, passages, paper)


class _Broken(ExtractiveBackend):
    def generate(self, question, passages, paper):
        raise RuntimeError("secret internal detail")


class _CutShortWithInventedCitations(ExtractiveBackend):
    """An LLM-like draft: cut off by the token budget, citing one real, one invented, one unretrieved span."""

    def generate(self, question, passages, paper):
        real = passages[0].chunk
        retrieved = {p.chunk.chunk_id for p in passages}
        retrieved |= {n.chunk_id for p in passages for n in p.neighbours}
        unretrieved = next(c for c in self.store_chunks(paper.paper_id) if c.chunk_id not in retrieved)
        return Draft(
            answer="Partial answer [1]",
            steps=["1) Locate the section"],
            cited=[
                CitedSpan(chunk_id=real.chunk_id),
                CitedSpan(chunk_id=real.chunk_id, quote="a sentence the paper never says"),
                CitedSpan(chunk_id=unretrieved.chunk_id),
            ],
            truncated=True,
            model="scripted",
        )


def _library_with_backend(make_library, backend_cls, **overrides):
    library = make_library(**overrides)
    library.backends["extractive"] = backend_cls(library.settings, library.embedder)
    return library


def test_backend_not_ready_is_503_and_readyz_says_so(make_library):
    library = _library_with_backend(make_library, _Loading)
    with _app_with(library) as client:
        response = client.post("/ask", json={"paper_id": "PMC1182327", "question": OWN_QUESTION})
        assert response.status_code == 503
        assert response.json()["error"] == "backend_not_ready"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["backend_ready"] is False
        assert client.get("/healthz").status_code == 200


def test_backend_that_fails_to_load_is_503_not_500(make_library):
    library = make_library(allowed_backends=["transformers"])  # requests may choose it on this server
    library.backend_errors["transformers"] = "ModelLoadError: no GPU"
    with _app_with(library) as client:
        response = client.post(
            "/ask", json={"paper_id": "PMC1182327", "question": OWN_QUESTION, "backend": "transformers"}
        )
        assert response.status_code == 503 and "no GPU" in response.json()["detail"]


def test_generation_past_the_timeout_is_504(make_library):
    library = _library_with_backend(make_library, _Slow, generation_timeout_s=0.3)
    with _app_with(library, generation_timeout_s=0.3) as client:
        response = client.post("/ask", json={"paper_id": "PMC1182327", "question": OWN_QUESTION})
        assert response.status_code == 504
        assert response.json()["error"] == "generation_timeout"


def test_invented_and_unretrieved_citations_are_dropped_and_truncation_reported(make_library):
    library = _library_with_backend(make_library, _CutShortWithInventedCitations, top_k=2)
    backend = library.backends["extractive"]
    backend.store_chunks = library.store.get_chunks
    with _app_with(library, top_k=2) as client:
        response = client.post("/ask", json={"paper_id": "PMC1182327", "question": OWN_QUESTION, "top_k": 2})
        assert response.status_code == 200, response.text
        answer = response.json()
    assert answer["truncated"] is True and answer["model"] == "scripted"
    assert len(answer["citations"]) == 1  # only the real, retrieved span survives
    _assert_verbatim(client, library, answer)


def test_unexpected_errors_are_a_clean_500(make_library):
    library = _library_with_backend(make_library, _Broken)
    with TestClient(
        create_app(library.settings, library_factory=lambda _s: library), raise_server_exceptions=False
    ) as client:
        response = client.post("/ask", json={"paper_id": "PMC1182327", "question": OWN_QUESTION})
        assert response.status_code == 500
        body = response.json()
        # The request id (issue 12) is the one field added; it matches the header, so the log line is found.
        assert body.pop("request_id") == response.headers["x-request-id"]
        assert body == {"error": "internal_error", "detail": "internal error; see the server log"}
        assert "secret" not in response.text and "Traceback" not in response.text


def test_unknown_route_is_a_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


# --- auth -------------------------------------------------------------------------------------------------


def test_api_keys_guard_every_endpoint_but_the_probes(library):
    with _app_with(library, api_keys=["k-one", "k-two"]) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200  # a probe, open since issue 12
        for method, path, body in [
            ("post", "/ask", {"paper_id": "PMC1182327", "question": OWN_QUESTION}),
            ("post", "/search", {"query": "bias"}),
            ("get", "/papers", None),
            ("get", "/papers/PMC1182327", None),
            ("delete", "/papers/PMC1182327", None),
            ("get", "/metrics", None),
        ]:
            response = client.request(method, path, json=body)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            wrong = client.request(method, path, json=body, headers={"Authorization": "Bearer k-three"})
            assert wrong.status_code == 401
        ok = client.get("/papers", headers={"Authorization": "Bearer k-two"})
        assert ok.status_code == 200
        assert client.get("/readyz", headers={"Authorization": "Bearer k-one"}).status_code == 200
        assert client.get("/metrics", headers={"Authorization": "Bearer k-one"}).status_code == 200
        basic = client.get("/papers", headers={"Authorization": "Basic k-one"})
        assert basic.status_code == 401


# --- papers -----------------------------------------------------------------------------------------------


def test_papers_are_listed_with_paging(client):
    first = client.get("/papers", params={"limit": 1}).json()
    second = client.get("/papers", params={"limit": 1, "offset": 1}).json()
    assert first["total"] == second["total"] >= 2
    assert len(first["papers"]) == len(second["papers"]) == 1
    assert first["papers"][0]["paper_id"] != second["papers"][0]["paper_id"]
    ids = {p["paper_id"] for p in client.get("/papers").json()["papers"]}
    assert {"PMC1182327", "PMC2795199"} <= ids
    assert client.get("/papers", params={"limit": 0}).status_code == 422


def test_paper_detail_has_metadata_status_and_outline(client, ingested):
    for paper_id in ("PMC2795199", "pmid:20066031", "10.1371/journal.pone.0008519"):
        response = client.get(f"/papers/{paper_id}")
        assert response.status_code == 200, response.text
        detail = response.json()
        assert detail["paper_id"] == "PMC2795199"
        assert detail["title"].startswith("Failure to Detect the Novel Retrovirus XMRV")
        assert detail["status"] == "ingested" and detail["chunks"] > 3
        assert detail["chars"] == len(ingested["xmrv"].text)
        assert [entry["path"] for entry in detail["outline"]] == [e.path for e in ingested["xmrv"].outline]
        assert any(
            entry["path"][0] == "Methods" or "Method" in entry["path"][0] for entry in detail["outline"]
        )
    assert client.get("/papers/PMC424242").status_code == 404
    assert client.get("/papers/not-an-id").status_code == 422


def test_delete_removes_a_paper(client, library, ingested):

    # A throwaway copy of a real paper under its own id, so the shared ones stay.
    record = ingested["xmrv"].model_copy(update={"paper_id": "PMC7770001", "pmid": None, "doi": None})
    chunks = library.store.get_chunks("PMC2795199")
    copies = [
        c.model_copy(update={"paper_id": "PMC7770001", "chunk_id": "x" + c.chunk_id[1:]}) for c in chunks
    ]
    library.store.put_paper(record, copies, library.embedder)
    assert client.get("/papers/PMC7770001").status_code == 200
    response = client.delete("/papers/PMC7770001")
    assert response.status_code == 200 and response.json() == {"deleted": "PMC7770001"}
    assert client.get("/papers/PMC7770001").status_code == 404
    assert client.delete("/papers/PMC7770001").status_code == 404
    assert client.post("/ask", json={"paper_id": "PMC7770001", "question": "What?"}).status_code == 404


# --- search -----------------------------------------------------------------------------------------------


def test_search_inside_a_paper_and_across_the_library(client):
    inside = client.post("/search", json={"query": "XMRV PCR assay", "paper_id": "pmid:20066031", "k": 3})
    assert inside.status_code == 200, inside.text
    body = inside.json()
    assert body["paper_id"] == "PMC2795199" and body["mode"] == "hybrid"
    assert len(body["passages"]) == 3 and all(hit["paper_id"] == "PMC2795199" for hit in body["passages"])
    assert [hit["rank"] for hit in body["passages"]] == [1, 2, 3]
    lexical = client.post("/search", json={"query": "XMRV", "paper_id": "PMC2795199", "mode": "lexical"})
    assert lexical.status_code == 200
    # BM25 reads a chunk's heading with its text: the top passage says XMRV in one or the other.
    top = lexical.json()["passages"][0]
    assert "XMRV" in top["text"] or "XMRV" in top["section"]
    library_wide = client.post("/search", json={"query": "retrovirus in chronic fatigue syndrome", "k": 2})
    assert library_wide.status_code == 200
    assert library_wide.json()["passages"][0]["paper_id"] == "PMC2795199"


def test_search_errors(client):
    assert client.post("/search", json={"query": "x", "paper_id": "PMC424242"}).status_code == 404
    assert client.post("/search", json={"query": "x", "mode": "fuzzy"}).status_code == 422
    assert client.post("/search", json={"query": ""}).status_code == 422
    assert client.post("/search", json={"query": "x", "paper_id": "PMC!"}).status_code == 422


# --- streaming --------------------------------------------------------------------------------------------


def parse_sse(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, "\n".join(data)))
    return events


def parse_messages(text: str) -> list[dict]:
    """The stream's JSON messages; each event's name is its message's `type` (issue 12's wire format)."""
    messages = []
    for name, data in parse_sse(text):
        message = json.loads(data)
        assert message["type"] == name
        messages.append(message)
    return messages


def test_stream_sends_steps_answer_deltas_then_done(client, library):
    with client.stream(
        "POST",
        "/ask",
        json={"paper_id": "PMC1182327", "question": OWN_QUESTION, "stream": True},
        headers={"X-Request-ID": "stream-test-1"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"] == "stream-test-1"
        messages = parse_messages(response.read().decode())
    names = [message["type"] for message in messages]
    assert names[:3] == ["step", "step", "step"] and names[-1] == "done"
    assert "answer.delta" in names and names.index("answer.delta") > names.index("step")
    assert set(names) <= {"step", "answer.delta", "done"}
    assert {message["request_id"] for message in messages} == {"stream-test-1"}
    final = messages[-1]["answer"]
    assert final["answer"] == "".join(m["text"] for m in messages if m["type"] == "answer.delta")
    assert final["citations"] and final["steps"] == [m["text"] for m in messages if m["type"] == "step"]
    _assert_verbatim(client, library, final)


def test_a_stream_that_fails_after_it_opened_ends_with_an_error_event(client, library, monkeypatch):
    """Once the 200 is sent, a failure (here: building the final answer) is the stream's last event, not a
    connection that simply stops."""

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug while checking the answer")

    monkeypatch.setattr(type(library), "answer", broken)
    with client.stream(
        "POST", "/ask", json={"paper_id": "PMC1182327", "question": OWN_QUESTION, "stream": True}
    ) as response:
        assert response.status_code == 200
        messages = parse_messages(response.read().decode())
    assert messages[-1]["type"] == "error" and messages[-1]["error"] == "internal_error", messages[-1]


def test_stream_errors_before_the_stream_opens_keep_their_status(client):
    response = client.post("/ask", json={"paper_id": "PMC424242", "question": OWN_QUESTION, "stream": True})
    assert response.status_code == 404


def test_stream_abstention(client):
    response = client.post(
        "/ask", json={"paper_id": "PMC1182327", "question": FOREIGN_QUESTION, "stream": True}
    )
    last = parse_messages(response.text)[-1]
    final = last["answer"]
    assert last["type"] == "done" and final["abstained"] and final["citations"] == []


class _StallsWhileStreaming(ExtractiveBackend):
    def stream(self, question, passages, paper, cancelled=None):
        yield StepEvent(data="1) Searched.")
        time.sleep(1.5)  # then nothing, past the generation timeout


class _BreaksWhileStreaming(ExtractiveBackend):
    def stream(self, question, passages, paper, cancelled=None):
        yield StepEvent(data="1) Searched.")
        raise RuntimeError("secret internal detail")


@pytest.mark.parametrize(
    ("backend_cls", "code"),
    [(_StallsWhileStreaming, "generation_timeout"), (_BreaksWhileStreaming, "internal_error")],
)
def test_stream_that_cannot_finish_ends_with_an_error_event(make_library, backend_cls, code):
    library = _library_with_backend(make_library, backend_cls, generation_timeout_s=0.5)
    with _app_with(library, generation_timeout_s=0.5) as client:
        response = client.post(
            "/ask", json={"paper_id": "PMC1182327", "question": OWN_QUESTION, "stream": True}
        )
        assert response.status_code == 200
    messages = parse_messages(response.text)
    assert [message["type"] for message in messages] == ["step", "error"]
    error = messages[-1]
    assert error["error"] == code and error["detail"] and "secret" not in error["detail"]
    assert error["request_id"] == response.headers["x-request-id"]


def test_a_broken_stream_over_a_socket_ends_with_an_error_event_and_logs_under_the_request_id(make_library):
    """Over real HTTP: the SSE `error` event carries the client's request id, and so does the log line the
    server writes about the failure (a log line from inside the request, not the access log)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("pmcqa")
    logger.addHandler(handler)
    library = _library_with_backend(make_library, _BreaksWhileStreaming)
    try:
        with serve_app(create_app(library.settings, library_factory=lambda _s: library)) as url:
            response = httpx.post(
                f"{url}/ask",
                json={"paper_id": "PMC1182327", "question": OWN_QUESTION, "stream": True},
                headers={"X-Request-ID": "sse-broken-7"},
                timeout=60,
            )
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    messages = parse_messages(response.text)
    assert [message["type"] for message in messages] == ["step", "error"]
    assert messages[-1]["error"] == "internal_error" and "secret" not in messages[-1]["detail"]
    assert {message["request_id"] for message in messages} == {"sse-broken-7"}
    failures = [r for r in records if r.getMessage() == "streaming backend failed"]
    assert failures and {r.request_id for r in failures} == {"sse-broken-7"}  # type: ignore[attr-defined]


# --- health, metrics, OpenAPI -----------------------------------------------------------------------------


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok", "version": pmcqa.__version__}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] and ready.json()["backend"] == "extractive" and ready.json()["papers"] >= 2


def test_metrics_count_answers_by_backend_and_abstentions(client):
    client.post("/ask", json={"paper_id": "PMC1182327", "question": OWN_QUESTION})
    client.post("/ask", json={"paper_id": "PMC1182327", "question": FOREIGN_QUESTION})
    text = client.get("/metrics").text
    assert 'pmcqa_answers_total{abstained="false",backend="extractive"}' in text
    assert 'pmcqa_abstentions_total{backend="extractive"}' in text
    assert 'pmcqa_answer_seconds_count{backend="extractive"}' in text
    assert 'http_requests_total{handler="/ask",method="POST",status="2xx"}' in text


def test_openapi_documents_requests_responses_and_examples(client):
    schema = client.get("/openapi.json").json()
    assert {"/ask", "/search", "/papers", "/papers/{paper_id}", "/healthz", "/readyz", "/metrics"} <= set(
        schema["paths"]
    )
    components = schema["components"]["schemas"]
    assert components["AskRequest"]["examples"][0]["paper_id"] == "PMC8026465"
    assert components["SearchRequest"]["examples"] and components["PaperDetail"]["examples"]
    ask = schema["paths"]["/ask"]["post"]["responses"]
    assert ask["200"]["content"]["application/json"]["example"]["citations"]
    assert "text/event-stream" in ask["200"]["content"]
    assert {"401", "404", "409", "422", "503", "504"} <= set(ask)
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
