"""Checked claims end to end: POST /ask over a real socket, the `openai` backend talking HTTP to a local
OpenAI-compatible fake, the real embedder/store/retriever, and the claim check in the service.

The fake's replies are written from the passages the service will retrieve (retrieval is deterministic), so
each test knows exactly which excerpt says what: a faithful answer, a number that differs from the cited
text, a claim citing an excerpt that does not contain it, a claim with no citation, and a long answer whose
check would outlast the answer's deadline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fakes.openai_server import FakeOpenAIServer, ScriptedReply
from fakes.serving import serve_app
from fakes.slow_embedder import SlowEmbedder

from pmcqa.app.main import create_app
from pmcqa.core.text import split_sentences, tokenize
from pmcqa.index.models import Passage

PAPER = "PMC1182327"
QUESTION = "What is the probability that a research claim is true?"


@pytest.fixture(scope="module")
def service(make_library) -> Iterator[tuple[str, FakeOpenAIServer, Any]]:
    with FakeOpenAIServer() as fake:
        library = make_library(
            answer_backend="openai",
            openai_base_url=fake.base_url,
            openai_model="bio-gpt-oss-20b",
            generation_timeout_s=30.0,
        )
        try:
            app = create_app(library.settings, library_factory=lambda _settings: library)
            with serve_app(app) as url:
                yield url, fake, library
        finally:
            library.close()


def passages_of(library: Any) -> list[Passage]:
    # What /ask retrieves for QUESTION (Library.prepare: settings.top_k, hybrid).
    return library.retriever.retrieve(PAPER, QUESTION, library.settings.top_k, "hybrid")


def sentences(passage: Passage) -> list[str]:
    text = passage.chunk.text
    return [text[s:e] for s, e in split_sentences(text)]


def ask(url: str, fake: FakeOpenAIServer, final: str) -> dict[str, Any]:
    fake.script(ScriptedReply(content=final, reasoning="1) Read the excerpts."))
    with httpx.Client(base_url=url, timeout=60) as http:
        response = http.post("/ask", json={"paper_id": PAPER, "question": QUESTION, "backend": "openai"})
    assert response.status_code == 200, response.text
    return response.json()


def numbered_sentence(passages: list[Passage]) -> tuple[int, str, str]:
    """(excerpt number, a sentence of it holding a number, that number)."""
    for number, passage in enumerate(passages, start=1):
        for sentence in sentences(passage):
            match = re.search(r"(?<![\w.])\d+(?![\w.])", sentence)
            if match and len(sentence) < 300 and "[" not in sentence:  # no reference markers like [10]
                return number, sentence, match.group(0)
    raise AssertionError("no retrieved sentence holds a number")


def test_faithful_answer_is_supported(service) -> None:
    url, fake, library = service
    passages = passages_of(library)
    number, sentence, _ = numbered_sentence(passages)
    answer = ask(url, fake, f"{sentence} [{number}]")
    assert not answer["abstained"]
    assert [c["chunk_id"] for c in answer["citations"]] == [passages[number - 1].chunk.chunk_id]
    (claim,) = answer["claims"]
    assert claim["supported"], claim
    assert claim["citations"] == [0] and claim["text"] == " ".join(sentence.split())
    assert "Not verified" not in answer["answer"]


def test_number_that_differs_from_the_cited_text_is_flagged(service) -> None:
    url, fake, library = service
    passages = passages_of(library)
    number, sentence, value = numbered_sentence(passages)
    cited_text = " ".join(c.text for c in [passages[number - 1].chunk, *passages[number - 1].neighbours])
    wrong = next(str(n) for n in range(int(value) + 1, int(value) + 1000) if str(n) not in cited_text)
    corrupted = re.sub(rf"(?<![\w.]){value}(?![\w.])", wrong, sentence, count=1)
    answer = ask(url, fake, f"{corrupted} [{number}]")
    (claim,) = answer["claims"]
    assert not claim["supported"] and f"number {wrong}" in claim["reason"]
    assert "Not verified: 1 of 1 statements" in answer["answer"]
    assert any("Claim check" in step and "flagged" in step for step in answer["steps"])


def test_claim_citing_an_excerpt_that_does_not_hold_it_is_flagged(service) -> None:
    url, fake, library = service
    passages = passages_of(library)
    # A plain sentence (no numbers or names, so only its wording can fail) of one excerpt, cited as the
    # excerpt sharing the fewest of its terms.
    source, claim_text = next(
        (n, s)
        for n, p in enumerate(passages, start=1)
        for s in sentences(p)
        if not re.search(r"[\d\[]", s) and not re.search(r"\s[A-Z]", s) and len(tokenize(s)) >= 6
    )
    terms = set(tokenize(claim_text))
    wrong = min(
        (n for n in range(1, len(passages) + 1) if n != source),
        key=lambda n: len(terms & set(tokenize(passages[n - 1].chunk.text))),
    )
    assert claim_text not in passages[wrong - 1].chunk.text
    answer = ask(url, fake, f"{claim_text} [{wrong}]")
    (claim,) = answer["claims"]
    assert not claim["supported"] and "does not support its wording" in claim["reason"], claim
    # The same sentence citing the excerpt it comes from is supported.
    right = ask(url, fake, f"{claim_text} [{source}]")
    assert right["claims"][0]["supported"], right["claims"]


def test_claim_without_citation_is_flagged(service) -> None:
    url, fake, library = service
    passages = passages_of(library)
    number, sentence, _ = numbered_sentence(passages)
    answer = ask(url, fake, f"{sentence} [{number}] Most findings are therefore false.")
    first, second = answer["claims"]
    assert first["supported"]
    assert not second["supported"] and second["reason"] == "no citation" and second["citations"] == []
    assert "Not verified: 1 of 2 statements" in answer["answer"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_claim_check_keeps_to_the_answers_deadline(make_library, stream: bool) -> None:
    # A slow embedder (0.1 s a text): checking every claim of this answer takes ~4 s, past the 2 s deadline.
    timeout_s, per_text_s = 2.0, 0.1
    with FakeOpenAIServer() as fake:
        library = make_library(
            answer_backend="openai",
            openai_base_url=fake.base_url,
            openai_model="bio-gpt-oss-20b",
            generation_timeout_s=timeout_s,
        )
        slow = library.embedder = SlowEmbedder(library.embedder, per_text_s=per_text_s)
        faithful = [
            f"{sentence} [{number}]"
            for number, passage in enumerate(passages_of(library), start=1)
            for sentence in sentences(passage)[:1]
            if "[" not in sentence
        ]
        assert len(faithful) >= 4
        fake.script(ScriptedReply(content=" ".join(faithful), reasoning="1) Read the excerpts."))
        ask = {"paper_id": PAPER, "question": QUESTION, "backend": "openai", "stream": stream}
        with (
            serve_app(create_app(library.settings, library_factory=lambda _settings: library)) as url,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            response = http.post("/ask", json=ask)
        library.close()
    assert response.status_code == 200, response.text
    answer = response.json() if not stream else json.loads(response.text.split("data: ")[-1])["answer"]
    claims = answer["claims"]
    assert claims[0]["checked"] and claims[0]["supported"], claims[0]
    assert not claims[-1]["checked"] and not claims[-1]["supported"], claims[-1]
    assert claims[-1]["reason"].startswith("not checked")
    assert "could not be checked in time" in answer["answer"]
    # From generation's start: the deadline, overrun by at most the embedding call under way (~0.8 s here).
    assert max(slow.calls) * per_text_s < 1.0, slow.calls
    timings = answer["timings"]
    assert timings["generate"] + timings["check_claims"] < timeout_s + 1.5, timings
