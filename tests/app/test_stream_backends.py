"""Streaming and the LLM backends over real HTTP: a client that disconnects stops generation (the tiny
transformers model frees its lock for the request waiting behind it; the OpenAI-compatible stream is closed),
the request id reaches the OpenAI-compatible server, and an unreachable server is reported as such, with its
readiness cached instead of a GET /models per question."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from fakes.openai_server import FakeOpenAIServer, ScriptedReply
from fakes.serving import free_port, serve_app, wait_until
from fakes.tiny_gpt_oss import save_checkpoint

from pmcqa.app.answering import harmony
from pmcqa.app.answering.base import AnswerDelta, StepEvent
from pmcqa.app.answering.openai_backend import OpenAIBackend, ReplyStream, split_reply
from pmcqa.app.answering.postprocess import StreamAssembler
from pmcqa.app.answering.transformers_backend import TransformersBackend
from pmcqa.app.main import create_app
from pmcqa.app.service import GENERATION_THREADS
from pmcqa.core.logs import BACKEND_STATUS_LOGGER
from pmcqa.core.settings import Settings

QUESTION = (
    "What did the authors find when testing blood samples of chronic fatigue syndrome patients for XMRV?"
)
ASK = {"paper_id": "PMC2795199", "question": QUESTION, "top_k": 1, "stream": True}


def messages_of(response: httpx.Response) -> Iterator[dict]:
    for line in response.iter_lines():
        if line.startswith("data:"):
            yield json.loads(line[5:])


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


def test_a_client_leaving_a_stalled_openai_stream_lets_it_go_at_once(
    make_library, fake_server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The model server stalls mid-reply and the client leaves meanwhile: the generation thread must cut the
    # stream then (not hold it, and the connection, until the deadline), and a client leaving is no error.
    stalled_s = 30.0
    library = openai_library(make_library, fake_server.base_url, generation_timeout_s=stalled_s)
    answer = "No XMRV was detected [1]. " * 4
    fake_server.script(ScriptedReply(content=answer, stall_after=3, stall_s=stalled_s))
    body = {**ASK, "backend": "openai"}
    with serve_app(create_app(library.settings, library_factory=lambda _s: library)) as url:
        with httpx.Client(timeout=60) as http, http.stream("POST", f"{url}/ask", json=body) as response:
            assert next(messages_of(response))["type"] == "answer.delta"  # then the model server stalls
        wait_until(lambda: fake_server.disconnects == 1, stalled_s / 6, "the model server to see it cut")
    assert fake_server.completed_streams == 0
    assert [record.getMessage() for record in caplog.records if record.levelname == "ERROR"] == []


def test_a_streamed_answer_leaves_no_cut_waiting(make_library, fake_server: FakeOpenAIServer) -> None:
    # The backend's cut waits on `cancelled` (and the deadline, a minute here): the service's stream sets it
    # at its end, so an answer streamed to the end leaves no thread waiting behind it, whoever called it.
    library = openai_library(make_library, fake_server.base_url, generation_timeout_s=60.0)
    fake_server.script(ScriptedReply(content="No XMRV was detected [1].", reasoning="1) Read."))
    prepared = library.prepare("PMC2795199", QUESTION, 1, "openai")
    assert [event.event for event in library.stream(prepared)][-1] == "done"

    def cuts() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if thread.name == "pmcqa-reply-cut"]

    wait_until(lambda: not cuts(), 10, "the cut of the streamed answer to end")


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


def test_unreachable_openai_server_is_reported_as_such(
    make_library, caplog: pytest.LogCaptureFixture
) -> None:
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
        # The server's log says so too: there it is the operator's only report (`pmcqa ask` quiets it).
        logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == BACKEND_STATUS_LOGGER]
        assert (
            "WARNING",
            f"OpenAI-compatible server not ready: cannot reach {closed}: connection refused",
        ) in logged

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
    """Generations the service stopped waiting for keep their threads until they end; those threads are the
    openai backend's own: an extractive question asked meanwhile is answered (it went 504 behind four hung
    calls)."""
    library = openai_library(make_library, fake_server.base_url, generation_timeout_s=3.0)
    # The service's limit (3 s) is also the extractive answer's: ~10 ms idle, over 0.5 s (the old limit) in
    # a quarter of tries under heavy CPU load. The openai backend lets go at its own limit, which was the
    # service's too, so its threads were free again before the extractive question and one pool for all
    # backends passed as well; with a longer limit of its own it stands for any generation that outlives
    # the service's wait, and the server answers only when the test lets it, so the threads stay held.
    long_limit = library.settings.model_copy(update={"generation_timeout_s": 120.0})
    library.backends["openai"] = OpenAIBackend(long_limit)
    released = threading.Event()
    fake_server.script(*[ScriptedReply(content="Late [1].", hold=released)] * GENERATION_THREADS)
    hung = {"paper_id": "PMC2795199", "question": QUESTION, "backend": "openai"}
    with (
        serve_app(create_app(library.settings, library_factory=lambda _s: library)) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        try:
            with ThreadPoolExecutor(GENERATION_THREADS) as clients:  # at once: each holds a generation thread
                calls = range(GENERATION_THREADS)
                statuses = list(clients.map(lambda _: http.post("/ask", json=hung).status_code, calls))
            assert statuses == [504] * GENERATION_THREADS
            # Premise: the generations still wait for the server, on all the openai backend's threads.
            assert len(fake_server.requests_to("/v1/chat/completions")) == GENERATION_THREADS
            extractive = http.post("/ask", json={**hung, "backend": "extractive"})
            assert extractive.status_code == 200, extractive.text
        finally:
            released.set()


# --- the streamed parse: read piece by piece, the same as parsing the text so far at every piece -----------

STEPS = "Steps:\n1) Locate the section on organoids [1].\n2) Compare the protocols (p < 0.05).\n3) Answer."
FINAL = "Both protocols generated immature <b>tissue</b> [1]; about 20% of adult factors [2]."
OPEN_FINAL = "<|start|>assistant<|channel|>final<|message|>"
WELL_FORMED = [  # replies a harmony model or server writes: streamed, the same as parsed whole
    f"<|channel|>analysis<|message|>{STEPS}<|end|>{OPEN_FINAL}{FINAL}<|return|>",
    f"<|channel|>analysis<|message|>{STEPS}<|end|>{OPEN_FINAL}{FINAL}<|end|>",  # Unsloth-trained ending
    f"<|channel|>analysis<|message|>Steps: 1) Read it. 2) Quote it. 3) Done.<|end|>{OPEN_FINAL}{FINAL}",
    "<|channel|>analysis<|message|>We need the ratio.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.x <|constrain|>json<|message|>{}<|call|>"
    "<|start|>assistant<|channel|>analysis<|message|>\n1. Find it.\n2. Divide.  \n<|end|>"
    f"{OPEN_FINAL} {FINAL} <|return|>",
    f"{OPEN_FINAL}{FINAL}",  # no analysis
    f"analysis{STEPS}assistantfinal{FINAL}",  # collapsed (skip_special_tokens)
    FINAL,  # plain text
]
ODD = [  # what no model should write: still streamed exactly as parsed (the first parsed whole)
    f"Sure. <|channel|>final<|message|>{FINAL}",  # plain text turning into harmony
    f"<|channel|>analysis<|message|>a <|x|>b <|half\n<|en\nc<|start|>assistant<|start|>x<|channel|>final"
    f" <|constrain|>json<|message|> {FINAL} <\n",
    f"<|channel|>analysis<|message|>{STEPS}<|channel|>final<|message|>{FINAL}",  # an analysis never closed
]


def splits(text: str) -> Iterator[list[str]]:
    """`text` in two pieces split at every position, one character a piece, and in random pieces."""
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]
    yield list(text)
    rng = random.Random(len(text))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, len(text) // 3)))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def reparsed(parses: list[tuple[str, str | None]], finished: tuple[str, str | None]) -> list[tuple[str, str]]:
    """The events of the whole texts parsed again at every piece, then of the finished reply: what
    `StreamAssembler.update` made of them before it read pieces."""
    events: list[tuple[str, str]] = []
    steps_sent, answer_sent = 0, ""
    for index, (analysis, final) in enumerate([*parses, finished]):
        over = index == len(parses) or final is not None
        ready = harmony.split_steps(analysis) if over else harmony.numbered_steps(analysis)[:-1]
        events += [("step", step) for step in ready[steps_sent:]]
        steps_sent = max(steps_sent, len(ready))
        if final and len(final) > len(answer_sent) and final.startswith(answer_sent):
            events.append(("answer", final[len(answer_sent) :]))
            answer_sent = final
    return events


def kinds(events: Iterable[StepEvent | AnswerDelta]) -> list[tuple[str, str]]:
    return [(event.event, event.data) for event in events]


def streamed(pieces: list[str]) -> list[tuple[str, str]]:
    """The transformers backend's stream: each piece parsed once, then the whole completion."""
    parser, assembler = harmony.CompletionStream(), StreamAssembler()
    events = [event for piece in pieces for event in assembler.take(parser.feed(piece))]
    whole = parser.finish()
    return kinds([*events, *assembler.update(whole.analysis, whole.final, finished=True)])


@pytest.mark.parametrize("text", WELL_FORMED + ODD)
def test_the_stream_parser_reads_pieces_as_the_text_fed_whole(text: str) -> None:
    """Fed piece by piece, the parser reads each prefix as fed at once (`parse_partial`), gives what it
    gained, and finishes as the whole text (`parse_completion`): streaming is the whole-reply parse."""
    for pieces in splits(text):
        parser, analysis, final, begun = harmony.CompletionStream(), "", "", False
        for count, piece in enumerate(pieces, start=1):
            progress = parser.feed(piece)
            assert progress.whole is None or text not in WELL_FORMED, "read piece by piece, not whole"
            if progress.whole is not None:
                analysis, final = progress.whole.analysis, progress.whole.final or ""
                begun = progress.whole.final is not None
            else:
                analysis, final = analysis + progress.analysis, final + progress.final
                begun = progress.final_begun
            expected = harmony.parse_partial("".join(pieces[:count]))
            assert parser.completion == expected, pieces[:count]
            assert (analysis, final if begun else None) == (expected.analysis, expected.final), pieces[:count]
        assert parser.finish() == harmony.parse_completion(text), pieces


@pytest.mark.parametrize(
    "analysis",
    [
        STEPS,
        "Reasoning :  \n 1)  Read.\n  2) Quote, p < 0.05) here.\n3. c 4) d\n5) e",
        "We need X. Step 1: find it. step 2: check 12. Step 3: done 2) 3) 4) x",
        "1)\n  2) x 3) y\n3. z",
    ],
)
def test_the_step_tracker_reads_pieces_as_the_analysis_fed_whole(analysis: str) -> None:
    for pieces in splits(analysis):
        tracker = harmony.StepTracker()
        for count, piece in enumerate(pieces, start=1):
            tracker.extend(piece)
            steps = harmony.numbered_steps("".join(pieces[:count]))
            assert (tracker.steps, tracker.complete) == (steps, steps[:-1]), pieces[:count]


@pytest.mark.parametrize("text", WELL_FORMED + ODD)
def test_streamed_events_are_those_of_parsing_again_at_every_piece(text: str) -> None:
    whole = harmony.parse_completion(text)
    for pieces in splits(text):
        parses = [harmony.parse_partial("".join(pieces[:count])) for count in range(1, len(pieces) + 1)]
        expected = reparsed([(p.analysis, p.final) for p in parses], (whole.analysis, whole.final))
        assert streamed(pieces) == expected, pieces


@pytest.mark.parametrize("text", WELL_FORMED)
def test_a_streamed_reply_is_its_parse(text: str) -> None:
    whole = harmony.parse_completion(text)
    for pieces in splits(text):
        events = streamed(pieces)
        assert "".join(data for kind, data in events if kind == "answer") == whole.final, pieces
        assert [data for kind, data in events if kind == "step"] == harmony.split_steps(whole.analysis)


def openai_events(deltas: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(the events of `ReplyStream`, those of splitting the whole reply again at every delta)."""
    whole_analysis, whole_final, _ = split_reply(*map("".join, zip(*deltas, strict=True)), "stop")
    reply = ReplyStream()
    events = [event for reasoning, content in deltas for event in reply.add(reasoning, content)]
    events += reply.assembler.update(whole_analysis, whole_final, finished=True)
    parses = [
        split_reply(*map("".join, zip(*deltas[:n], strict=True)), None, partial=True)
        for n in range(1, len(deltas) + 1)
    ]
    expected = reparsed([(analysis, final) for analysis, final, _ in parses], (whole_analysis, whole_final))
    return kinds(events), expected


@pytest.mark.parametrize(
    ("reasoning", "content"),
    [
        (STEPS, FINAL),  # vLLM, Ollama: reasoning in its own field
        ("", f"<|channel|>analysis<|message|>{STEPS}<|end|>{OPEN_FINAL}{FINAL}"),  # llama.cpp, tags kept
        ("Read first.", f"<|channel|>analysis<|message|>{STEPS}<|end|>{OPEN_FINAL}{FINAL}"),  # both
        ("", f"analysis{STEPS}assistantfinal{FINAL}"),  # collapsed
    ],
)
def test_an_openai_stream_reads_each_delta_once_as_its_whole_split(reasoning: str, content: str) -> None:
    _, final, _ = split_reply(reasoning, content, "stop")
    for pieces in splits(reasoning + content):
        deltas, at = [], 0  # each piece reasoning, content, or (where it straddles them) both
        for piece in pieces:
            cut = min(max(len(reasoning) - at, 0), len(piece))
            deltas.append((piece[:cut], piece[cut:]))
            at += len(piece)
        events, expected = openai_events(deltas)
        assert events == expected, deltas
        assert "".join(data for kind, data in events if kind == "answer") == final


def test_reasoning_after_the_contents_own_analysis_is_joined_as_split_reply_joins_it() -> None:
    deltas = [("", "<|channel|>analysis<|message|>1) Read.\n2) Quo"), ("Late reasoning.", "te.<|end|>")]
    events, expected = openai_events([*deltas, ("", f"{OPEN_FINAL}{FINAL}")])
    assert events == expected
    assert "".join(data for kind, data in events if kind == "answer") == FINAL
