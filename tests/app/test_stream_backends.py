"""Streaming and the LLM backends over real HTTP: a client that disconnects stops generation (the tiny
transformers model frees its lock for the request waiting behind it; the OpenAI-compatible stream is closed),
the request id reaches the OpenAI-compatible server, and an unreachable server is reported as such, with its
readiness cached instead of a GET /models per question."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from fakes.openai_server import FakeOpenAIServer, ScriptedReply
from fakes.serving import free_port, serve_app
from fakes.tiny_gpt_oss import save_checkpoint

from pmcqa.app.answering.openai_backend import OpenAIBackend
from pmcqa.app.answering.transformers_backend import TransformersBackend
from pmcqa.app.main import create_app
from pmcqa.core.settings import Settings

QUESTION = (
    "What did the authors find when testing blood samples of chronic fatigue syndrome patients for XMRV?"
)
ASK = {"paper_id": "PMC2795199", "question": QUESTION, "top_k": 1, "stream": True}


def messages_of(response: httpx.Response) -> Iterator[dict]:
    for line in response.iter_lines():
        if line.startswith("data:"):
            yield json.loads(line[5:])


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is much faster for a tiny model
    yield
    torch.set_num_threads(previous)


# --- transformers: disconnect frees the model -------------------------------------------------------------

MAX_NEW_TOKENS = 300


def test_disconnect_stops_transformers_generation_and_frees_the_lock(
    make_library, tmp_path: Path, one_torch_thread: None
) -> None:
    library = make_library(context_tokens=64, allowed_backends=["transformers"])
    settings = Settings(
        model=str(save_checkpoint(tmp_path / "tiny")),
        load_in_4bit=False,
        max_new_tokens=MAX_NEW_TOKENS,
        generation_timeout_s=120,
    )
    backend = TransformersBackend(settings, current_date="2026-01-01")
    library.backends["transformers"] = backend
    # One forward pass per generated token, counted per generating thread (each request has its own). The
    # hook also paces generation (~10 ms a token), so how far the first request gets before the hang-up
    # does not depend on how fast this machine runs the tiny model.
    forwards: Counter[int] = Counter()

    def count_and_pace(*_: object) -> None:
        forwards.update([threading.get_ident()])
        time.sleep(0.01)

    backend.lm.register_forward_hook(count_and_pace)

    body = {**ASK, "backend": "transformers"}
    second: dict[str, object] = {}

    def second_request(url: str) -> None:
        with httpx.Client(timeout=120) as http, http.stream("POST", f"{url}/ask", json=body) as response:
            second["messages"] = list(messages_of(response))

    app = create_app(library.settings, library_factory=lambda _s: library)
    with serve_app(app) as url:
        first = httpx.Client(timeout=120)
        response = first.send(first.build_request("POST", f"{url}/ask", json=body), stream=True)
        assert response.status_code == 200
        wait_until(lambda: sum(forwards.values()) >= 3, 60, "the first generation to start")
        waiting = threading.Thread(target=second_request, args=(url,))
        waiting.start()
        time.sleep(0.5)  # the second request is now waiting for the model's lock
        assert len(forwards) == 1, "the second request must wait behind the first"
        at_hang_up = sum(forwards.values())
        response.close()  # the client hangs up mid-stream
        first.close()
        waiting.join(timeout=120)

    assert not waiting.is_alive()
    names = [message["type"] for message in second["messages"]]  # type: ignore[union-attr]
    assert names[-1] == "done", names
    assert not backend._lock.locked()
    (first_thread, first_count), (second_thread, second_count) = sorted(forwards.items(), key=lambda i: i[1])
    # Premise: undisturbed, this prompt generates all MAX_NEW_TOKENS tokens (the second request did) ...
    assert second_count == MAX_NEW_TOKENS
    # ... and the disconnected one stopped soon after the hang-up (well short of the end), freeing the lock.
    assert at_hang_up < MAX_NEW_TOKENS // 2, "premise: the hang-up came early in the first generation"
    assert first_count - at_hang_up < MAX_NEW_TOKENS // 4, (at_hang_up, forwards)


# --- the OpenAI-compatible backend ------------------------------------------------------------------------


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


def openai_library(make_library, base_url: str, **overrides: object):  # type: ignore[no-untyped-def]
    library = make_library()
    settings = library.settings.model_copy(
        update={
            "openai_base_url": base_url,
            "openai_model": "bio-gpt-oss-20b",
            "allowed_backends": ["openai"],
            **overrides,
        }
    )
    library.settings = settings
    library.backends["openai"] = OpenAIBackend(settings)
    return library


def test_disconnect_closes_the_openai_stream(make_library, fake_server: FakeOpenAIServer) -> None:
    library = openai_library(make_library, fake_server.base_url)
    answer = "The authors did not detect XMRV in any sample. " * 40  # ~300 chunks, 50 ms apart: ~15 s
    fake_server.script(ScriptedReply(content=answer, reasoning="Steps:\n1) Read.", chunk_delay_s=0.05))
    body = {**ASK, "backend": "openai"}
    with serve_app(create_app(library.settings, library_factory=lambda _s: library)) as url:
        with httpx.Client(timeout=60) as http, http.stream("POST", f"{url}/ask", json=body) as response:
            stream = messages_of(response)
            first = next(stream)
            assert first["type"] in ("step", "answer.delta")
        # The client left after one event: the API must close its stream to the model server.
        wait_until(lambda: fake_server.disconnects == 1, 10, "the model server to see the stream closed")
    assert fake_server.completed_streams == 0


def test_request_id_reaches_the_openai_server_and_readiness_is_cached(
    make_library, fake_server: FakeOpenAIServer
) -> None:
    library = openai_library(make_library, fake_server.base_url, openai_ready_ttl_s=60)
    fake_server.script(*[ScriptedReply(content="No XMRV was detected [1].", reasoning="1) Read.")] * 3)
    ask = {"paper_id": "PMC2795199", "question": QUESTION, "backend": "openai"}
    with (
        serve_app(create_app(library.settings, library_factory=lambda _s: library)) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        for number in range(3):
            response = http.post("/ask", json=ask, headers={"X-Request-ID": f"trace-{number}"})
            assert response.status_code == 200, response.text
        streamed = http.post("/ask", json={**ask, "stream": True}, headers={"X-Request-ID": "trace-s"})
        assert streamed.status_code == 200
    completions = fake_server.requests_to("/v1/chat/completions")
    sent = [request["headers"].get("x-request-id") for request in completions]
    assert sent == ["trace-0", "trace-1", "trace-2", "trace-s"]
    assert len(fake_server.requests_to("/v1/models")) == 1  # four questions, one readiness check


def test_unreachable_openai_server_is_reported_as_such(make_library) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    library = openai_library(make_library, closed, answer_backend="openai", openai_ready_ttl_s=0.5)
    ask = {"paper_id": "PMC2795199", "question": QUESTION, "backend": "openai"}
    with (
        serve_app(create_app(library.settings, library_factory=lambda _s: library)) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        refused = http.post("/ask", json=ask)
        assert refused.status_code == 503
        assert refused.json()["detail"] == (
            f"answer backend 'openai' is not ready: cannot reach {closed}: connection refused"
        )
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["detail"] == f"cannot reach {closed}: connection refused"

        # The server comes up on that port: after the TTL, the service answers.
        port = int(closed.rsplit(":", 1)[1].split("/")[0])
        with FakeOpenAIServer(port=port) as fake:
            fake.script(ScriptedReply(content="No XMRV was detected [1].", reasoning="1) Read."))
            time.sleep(0.6)
            assert http.get("/readyz").status_code == 200
            assert http.post("/ask", json=ask).status_code == 200


def test_a_hung_model_server_never_starves_the_extractive_answers(
    make_library, fake_server: FakeOpenAIServer
) -> None:
    """Timed-out generations keep their threads until the server answers; they are the openai backend's
    own: an extractive question asked meanwhile is answered (it went 504 behind four hung calls)."""
    library = openai_library(make_library, fake_server.base_url, generation_timeout_s=0.5)
    fake_server.script(*[ScriptedReply(content="Late [1].", delay_s=4.0)] * 8)
    hung = {"paper_id": "PMC2795199", "question": QUESTION, "backend": "openai"}
    with (
        serve_app(create_app(library.settings, library_factory=lambda _s: library)) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        with ThreadPoolExecutor(4) as clients:  # at once: each holds a generation thread until its 504
            statuses = list(clients.map(lambda _: http.post("/ask", json=hung).status_code, range(4)))
        assert statuses == [504] * 4
        extractive = http.post("/ask", json={**hung, "backend": "extractive"})
        assert extractive.status_code == 200, extractive.text
