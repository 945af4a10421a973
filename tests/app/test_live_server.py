"""The service over a real socket: uvicorn on a free 127.0.0.1 port, driven with httpx."""

from __future__ import annotations

import json

import httpx

import pmcqa

# Answered far above the extractive backend's minimum confidence (0.77 vs 0.20): these tests check the
# service, not where the threshold falls ("What did the authors find ... for XMRV?" sat at 0.198: the edge).
OWN_QUESTION = "Did they detect XMRV in chronic fatigue syndrome patients?"
FOREIGN_QUESTION = "What is the probability that a research claim is true given its pre-study odds?"


def test_answers_and_abstains_over_real_http(live_server, library):
    with httpx.Client(base_url=live_server, timeout=60) as http:
        assert http.get("/healthz").json() == {"status": "ok", "version": pmcqa.__version__}
        answered = http.post("/ask", json={"paper_id": "PMC2795199", "question": OWN_QUESTION})
        assert answered.status_code == 200, answered.text
        answer = answered.json()
        assert not answer["abstained"] and answer["citations"]
        assert "XMRV" in answer["answer"]
        paper = library.store.get_paper("PMC2795199")
        for citation in answer["citations"]:
            assert paper.text[citation["start"] : citation["end"]] == citation["quote"]
            assert citation["quote"] in answer["answer"]

        # The same kind of question about the other paper: the XMRV paper does not answer it.
        abstained = http.post("/ask", json={"paper_id": "PMC2795199", "question": FOREIGN_QUESTION}).json()
        assert abstained["abstained"] and abstained["citations"] == []

        missing = http.post("/ask", json={"paper_id": "PMC31337", "question": OWN_QUESTION})
        assert missing.status_code == 404 and "pmcqa ingest PMC31337" in missing.json()["detail"]


def test_sse_stream_over_real_http(live_server):
    events: list[tuple[str, dict]] = []
    body = {"paper_id": "pmid:20066031", "question": OWN_QUESTION, "stream": True}
    with (
        httpx.Client(base_url=live_server, timeout=60) as http,
        http.stream("POST", "/ask", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:") and name:
                events.append((name, json.loads(line[5:].removeprefix(" "))))
                name = None
    names = [name for name, _ in events]
    assert all(message["type"] == name for name, message in events)  # every event is JSON, named by type
    assert {message["request_id"] for _, message in events} == {response.headers["x-request-id"]}
    assert names[0] == "step" and names[-1] == "done"
    assert names.index("answer.delta") > max(i for i, n in enumerate(names) if n == "step")
    done = events[-1][1]["answer"]
    assert done["paper_id"] == "PMC2795199" and done["citations"]
