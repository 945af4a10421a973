"""The NCBI transport, measured at the fake server: rate limit, backoff, Retry-After, timeouts, POST."""

from __future__ import annotations

import random
import threading
import time
import warnings

import pytest
from Bio import Entrez
from fakes.eutils_server import FakeEutils, Fault, RecordedRequest, rate_limited, server_error
from pydantic import SecretStr

from pmcqa.core.settings import Settings
from pmcqa.ingest import entrez
from pmcqa.ingest.entrez import (
    EntrezClient,
    IntervalRateLimiter,
    PermanentHTTPError,
    RateLimiter,
    RetriesExhausted,
    is_rate_limit_body,
    parse_retry_after,
)


class _TopOfRange(random.Random):
    """Jitter pinned to the top of its range: deterministic backoff gaps (real jitter is tested too)."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _client(settings: Settings, rate: float = 50.0, top: bool = False, **updates: object) -> EntrezClient:
    settings = settings.model_copy(update=updates) if updates else settings
    return EntrezClient(settings, limiter=IntervalRateLimiter(rate), rng=_TopOfRange() if top else None)


def _gaps(requests: list[RecordedRequest]) -> list[float]:
    return [b.time - a.time for a, b in zip(requests, requests[1:], strict=False)]


def _max_per_second(requests: list[RecordedRequest]) -> int:
    """Most arrivals in any window [t, t+1s) — the count NCBI would see."""
    times = sorted(r.time for r in requests)
    return max(sum(1 for t in times if start <= t < start + 1.0) for start in times)


# --- rate limit --------------------------------------------------------------------------------------------
def test_rate_limit_holds_at_the_server_under_8_threads(
    eutils_settings: Settings, fake_eutils: FakeEutils
) -> None:
    client = _client(eutils_settings, rate=20.0)
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(6):
                client.efetch_pmc(["PMC8435807"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert not errors
    requests = fake_eutils.requests_to("efetch")
    assert len(requests) == 48
    assert _max_per_second(requests) <= 20
    # ... and Bio.Entrez's own 0.37 s limiter is out of the way (it alone would need > 17 s for 48 requests)
    assert elapsed < 48 / 20 / 0.9 + 1.5


def test_default_rate_is_3_per_second_without_a_key(settings: Settings, fake_eutils: FakeEutils) -> None:
    settings = settings.model_copy(update=fake_eutils.settings_overrides())
    assert settings.ncbi_rate() == 3.0
    assert settings.model_copy(update={"ncbi_api_key": SecretStr("k")}).ncbi_rate() == 10.0
    client = EntrezClient(settings)  # the process-wide limiter for 3/s
    threads = [threading.Thread(target=client.efetch_pmc, args=(["PMC8435807"],)) for _ in range(2)]
    for thread in threads:
        thread.start()
    client.efetch_pmc(["PMC8435807"])
    client.efetch_pmc(["PMC8435807"])
    for thread in threads:
        thread.join()
    requests = sorted(fake_eutils.requests_to("efetch"), key=lambda r: r.time)
    assert len(requests) == 4
    assert _max_per_second(requests) <= 3
    assert min(_gaps(requests)) >= 1 / 3 - 0.01


def test_interval_limiter_serves_threads_one_slot_apart() -> None:
    limiter: RateLimiter = IntervalRateLimiter(100.0, headroom=1.0)

    def take() -> None:
        for _ in range(5):
            limiter.acquire()

    threads = [threading.Thread(target=take) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 20 acquisitions by 4 threads got 20 distinct slots, 10 ms apart
    assert time.monotonic() - started >= 19 * 0.01 - 0.005


# --- backoff -----------------------------------------------------------------------------------------------
def test_429_storm_backs_off_with_growing_gaps(eutils_settings: Settings, fake_eutils: FakeEutils) -> None:
    client = _client(eutils_settings, top=True, ncbi_backoff_s=0.05, ncbi_backoff_max_s=1.0, ncbi_max_tries=5)
    fake_eutils.script("efetch", *[rate_limited()] * 3)
    body = client.efetch_pmc(["PMC8435807"])
    assert b"<article" in body
    gaps = _gaps(fake_eutils.requests_to("efetch"))
    assert len(gaps) == 3
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2], strict=True):
        assert expected - 0.005 <= gap <= expected + 0.15
    assert gaps[0] < gaps[1] < gaps[2]


def test_full_jitter_stays_under_the_exponential_ceiling(eutils_settings: Settings) -> None:
    client = _client(eutils_settings, ncbi_backoff_s=1.0, ncbi_backoff_max_s=8.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)]:
        delays = [client.backoff_delay(attempt, None) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # really spread over the range
    assert client.backoff_delay(1, retry_after=3.0) >= 3.0  # Retry-After is a floor


def test_retry_after_is_honoured(eutils_settings: Settings, fake_eutils: FakeEutils) -> None:
    client = _client(eutils_settings)  # backoff alone would wait ≤ 0.05 s
    fake_eutils.script("efetch", rate_limited(retry_after=0.6))
    client.efetch_pmc(["PMC8435807"])
    (gap,) = _gaps(fake_eutils.requests_to("efetch"))
    assert gap >= 0.6


def test_500_storm_gives_up_after_max_tries(eutils_settings: Settings, fake_eutils: FakeEutils) -> None:
    client = _client(eutils_settings, ncbi_max_tries=4)
    fake_eutils.script(
        "efetch",
        server_error(500),
        server_error(503),
        server_error(502),
        server_error(500),
        server_error(500),
    )
    with pytest.raises(RetriesExhausted, match=r"HTTP 500 \(gave up after 4 tries\)"):
        client.efetch_pmc(["PMC8435807"])
    assert len(fake_eutils.requests_to("efetch")) == 4


def test_5xx_then_success(eutils_settings: Settings, fake_eutils: FakeEutils) -> None:
    client = _client(eutils_settings)
    fake_eutils.script("efetch", server_error(500), server_error(503))
    assert b"8435807" in client.efetch_pmc(["PMC8435807"])
    assert len(fake_eutils.requests_to("efetch")) == 3


@pytest.mark.parametrize("status", [400, 403, 404, 414])
def test_other_4xx_never_retry(eutils_settings: Settings, fake_eutils: FakeEutils, status: int) -> None:
    client = _client(eutils_settings)
    fake_eutils.script("efetch", Fault(status=status, body=b"bad request"))
    with pytest.raises(PermanentHTTPError) as info:
        client.efetch_pmc(["PMC8435807"])
    assert info.value.status == status
    assert len(fake_eutils.requests_to("efetch")) == 1


def test_rate_limit_body_with_200_counts_as_429(eutils_settings: Settings, fake_eutils: FakeEutils) -> None:
    client = _client(eutils_settings)
    fake_eutils.script("efetch", rate_limited(status=200))
    assert b"<pmc-articleset>" in client.efetch_pmc(["PMC8435807"])
    assert len(fake_eutils.requests_to("efetch")) == 2


def test_slow_reply_times_out_and_retries(eutils_settings: Settings, fake_eutils: FakeEutils) -> None:
    client = _client(eutils_settings, ncbi_timeout_s=0.3)
    fake_eutils.script("efetch", Fault(delay_s=1.0))
    started = time.monotonic()
    assert b"8435807" in client.efetch_pmc(["PMC8435807"])
    assert time.monotonic() - started < 0.9  # did not wait for the slow reply
    assert len(fake_eutils.requests_to("efetch")) == 2


def test_connection_refused_retries_then_gives_up(settings: Settings) -> None:
    client = _client(settings, ncbi_max_tries=3)  # the base settings point at 127.0.0.1:9 (nothing there)
    with pytest.raises(RetriesExhausted) as info:
        client.efetch_pmc(["PMC8435807"])
    assert info.value.tries == 3


def test_idconv_retries_429_and_5xx(eutils_settings: Settings, fake_eutils: FakeEutils) -> None:
    client = _client(eutils_settings)
    fake_eutils.script("idconv", rate_limited(), server_error(502), rate_limited(status=200))
    records = client.idconv(["34527728"], "pmid")
    assert records[0]["pmcid"] == "PMC8435807"
    assert len(fake_eutils.requests_to("idconv")) == 4


# --- request shape and etiquette ---------------------------------------------------------------------------
def test_efetch_is_posted_with_tool_email_and_api_key(
    eutils_settings: Settings, fake_eutils: FakeEutils
) -> None:
    client = _client(eutils_settings, ncbi_api_key=SecretStr("secret-key"), ncbi_tool="pmcqa-test")
    client.efetch_pmc(["PMC8435807", "PMC12806063"])
    (request,) = fake_eutils.requests_to("efetch")
    assert request.method == "POST" and request.path == "/entrez/eutils/efetch.fcgi"
    assert request.params["db"] == ["pmc"] and request.params["retmode"] == ["xml"]
    assert request.ids() == ["8435807", "12806063"]  # digits, as efetch expects
    assert request.params["tool"] == ["pmcqa-test"]
    assert request.params["email"] == ["tests@example.org"]
    assert request.params["api_key"] == ["secret-key"]


def test_elink_uses_repeated_ids_and_parses_links(eutils_settings: Settings, fake_eutils: FakeEutils) -> None:
    client = _client(eutils_settings)
    assert client.elink_pubmed_pmc(["23029536", "1"]) == {"23029536": ["PMC3460867"], "1": []}
    (request,) = fake_eutils.requests_to("elink")
    assert request.method == "GET" and request.params["id"] == ["23029536", "1"]


def test_bio_entrez_retries_are_disabled(eutils_settings: Settings) -> None:
    _client(eutils_settings)
    assert Entrez.max_tries == 1  # our backoff is the only retry loop


def test_retry_after_parsing_and_rate_limit_body() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= (parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") or 0.0) < 1  # a past date: no wait
    assert is_rate_limit_body(b'{"error":"API rate limit exceeded","count":"11"}')
    assert not is_rate_limit_body(b"<pmc-articleset/>")


# --- metrics (issue 12) ------------------------------------------------------------------------------------
def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_429s_and_retries_are_counted(eutils_settings: Settings, fake_eutils: FakeEutils) -> None:
    client = _client(eutils_settings, ncbi_max_tries=5)
    before = {
        "ok": _sample("pmcqa_ncbi_requests_total", endpoint="efetch", outcome="ok"),
        "throttled": _sample("pmcqa_ncbi_requests_total", endpoint="efetch", outcome="throttled"),
        "transient": _sample("pmcqa_ncbi_requests_total", endpoint="efetch", outcome="transient"),
        "429": _sample("pmcqa_ncbi_throttled_total", endpoint="efetch"),
        "retries": _sample("pmcqa_ncbi_retries_total", endpoint="efetch"),
    }
    fake_eutils.script("efetch", rate_limited(), rate_limited(), server_error(503))
    client.efetch_pmc(["PMC8435807"])
    assert len(fake_eutils.requests_to("efetch")) == 4
    after = {
        "ok": _sample("pmcqa_ncbi_requests_total", endpoint="efetch", outcome="ok"),
        "throttled": _sample("pmcqa_ncbi_requests_total", endpoint="efetch", outcome="throttled"),
        "transient": _sample("pmcqa_ncbi_requests_total", endpoint="efetch", outcome="transient"),
        "429": _sample("pmcqa_ncbi_throttled_total", endpoint="efetch"),
        "retries": _sample("pmcqa_ncbi_retries_total", endpoint="efetch"),
    }
    deltas = {key: after[key] - before[key] for key in before}
    assert deltas == {"ok": 1, "throttled": 2, "transient": 1, "429": 2, "retries": 3}


def test_an_unset_email_is_one_line_naming_the_setting(
    eutils_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not Biopython's eleven lines telling a pmcqa user to set `Entrez.email`, at every process's start."""
    monkeypatch.setattr(entrez, "_email_warned", False)
    client = _client(eutils_settings, ncbi_email=None)
    with warnings.catch_warnings(record=True) as caught:
        client.efetch_pmc(["PMC8435807"])
        client.efetch_pmc(["PMC8435807"])
    assert [str(w.message) for w in caught if "Entrez.email" in str(w.message)] == []
    named = [r for r in caplog.records if "PMCQA_NCBI_EMAIL" in r.getMessage()]
    assert len(named) == 1 and named[0].levelname == "WARNING"

    caplog.clear()
    monkeypatch.setattr(entrez, "_email_warned", False)
    _client(eutils_settings, ncbi_email="dev@example.org").efetch_pmc(["PMC8435807"])
    assert not [r for r in caplog.records if "PMCQA_NCBI_EMAIL" in r.getMessage()]
