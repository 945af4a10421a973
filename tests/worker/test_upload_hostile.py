"""POST /papers with hostile articles: answered in bounded time with a clear 422, never a hang or a 500."""

from __future__ import annotations

import time

import httpx
import pytest
from worker_helpers import LiveServer, fake_worker_settings, wait_for

from pmcqa.app.main import create_app
from pmcqa.ingest.jats import MAX_NESTING_DEPTH


def article(body: str) -> bytes:
    return (
        "<article><front><article-meta><title-group><article-title>Hostile</article-title></title-group>"
        f"</article-meta></front><body>{body}</body></article>"
    ).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    settings = fake_worker_settings(tmp_path_factory.mktemp("hostile"), max_upload_bytes=2_000_000)
    with LiveServer(create_app(settings)) as live:
        # The app loads its library in the background; uploads answer 503 until it is ready.
        wait_for(lambda: httpx.get(f"{live.url}/readyz", timeout=10).status_code == 200, 180, "the library")
        yield live.url


def post(server: str, body: bytes, paper_id: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    reply = httpx.post(
        f"{server}/papers",
        params={"id": paper_id},
        content=body,
        headers={"Content-Type": "application/xml"},
        timeout=300,
    )
    return reply, time.perf_counter() - started


def test_table_span_bomb_upload_is_ingested_quickly(server: str) -> None:
    # Before: 40 KB of <td rowspan="200" colspan="200"> cells took 79 s through POST /papers.
    rows = '<tr><td rowspan="200" colspan="200">x</td></tr>' * 850
    body = article(
        f"<sec><title>T</title><table-wrap><table><tbody>{rows}</tbody></table></table-wrap></sec>"
    )
    assert len(body) > 40_000
    reply, elapsed = post(server, body, "PMC7100001")
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "ingested"
    assert elapsed < 30, f"{elapsed:.1f} s"


def test_deeply_nested_upload_is_a_clear_422(server: str) -> None:
    # Before: RecursionError inside the parser ("maximum recursion depth exceeded").
    depth = 300
    body = article("<sec><title>t</title>" * depth + "<p>x</p>" + "</sec>" * depth)
    reply, _ = post(server, body, "PMC7100002")
    assert reply.status_code == 422 and reply.json()["error"] == "not_ingested", reply.text
    assert f"more than {MAX_NESTING_DEPTH} levels" in reply.text
