"""efetch outcomes through the fake server: matching by article ids, restricted, unknown, truncated, cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes.eutils_server import XML_HEADER, FakeEutils, Fault, rate_limited, server_error
from lxml import etree

from pmcqa.core.settings import Settings
from pmcqa.ingest.entrez import EntrezClient, IntervalRateLimiter
from pmcqa.ingest.fetch import Fetcher, FetchResult, MalformedReply, classify_articleset
from pmcqa.ingest.jats import NO_BODY, article_pmcids
from pmcqa.ingest.raw_store import LocalRawStore
from pmcqa.ingest.xml import parse_xml


@pytest.fixture
def fetcher(eutils_settings: Settings) -> Fetcher:
    return Fetcher(eutils_settings, EntrezClient(eutils_settings, limiter=IntervalRateLimiter(50)))


def _articleset(*parts: bytes) -> bytes:
    return XML_HEADER + b"<pmc-articleset>" + b"".join(parts) + b"</pmc-articleset>"


def _article(shared_data: Path, path: str) -> bytes:
    root = etree.fromstring((shared_data / path).read_bytes())
    article = root if root.tag == "article" else root.find("article")
    return etree.tostring(article)


OLD = "eutils/efetch-pmc/efetch_pmc_PMC8435807_correction__from_biopython.xml"  # pub-id-type="pmc"
NEW = "eutils/efetch-pmc/efetch_pmc_12806063_2026format_TRUNCATED.xml"  # pub-id-type="pmcid"/"pmcid-ver"
RESTRICTED = "eutils/efetch-pmc/restricted_PMC2647976_pnas__from_PLOS_rich_citations_spec.xml"


# --- classifying a reply -----------------------------------------------------------------------------------
def test_both_id_vintages_are_read(shared_data: Path) -> None:
    assert article_pmcids(etree.fromstring(_article(shared_data, OLD))) == {"PMC8435807"}
    assert article_pmcids(etree.fromstring(_article(shared_data, NEW))) == {"PMC12806063"}


def test_articles_match_by_id_never_by_order(shared_data: Path) -> None:
    reply = _articleset(
        b'<error id="999999999">The following PMCID is not available: 999999999</error>',
        _article(shared_data, RESTRICTED),
        _article(shared_data, NEW),
        _article(shared_data, OLD),
    )
    requested = ["PMC8435807", "PMC12806063", "PMC2647976", "PMC999999999", "PMC5"]
    out = classify_articleset(reply, requested)
    assert {k: v.status for k, v in out.items()} == {
        "PMC8435807": "ok",
        "PMC12806063": "ok",
        "PMC2647976": "no-full-text",
        "PMC999999999": "not-found",
        "PMC5": "failed",
    }
    assert b'pub-id-type="pmc">8435807<' in (out["PMC8435807"].xml or b"")
    assert "does not allow downloading" in (out["PMC2647976"].reason or "")
    assert "not available" in (out["PMC999999999"].reason or "")
    assert out["PMC5"].reason == "not in reply"
    # the restriction comment survives into the bytes kept for the raw cache
    assert b"<!--The publisher of this article does not allow" in (out["PMC2647976"].xml or b"")
    # each article also travels parsed (no second parse downstream), and it is the one its bytes hold
    for pmcid in ("PMC8435807", "PMC12806063", "PMC2647976"):
        parsed = out[pmcid].article
        assert parsed is not None and article_pmcids(parsed) == {pmcid}
        assert etree.tostring(parsed, encoding="utf-8") == out[pmcid].xml
    assert out["PMC999999999"].article is None and out["PMC5"].article is None


def test_no_body_is_no_full_text_whatever_the_wording(shared_data: Path) -> None:
    article = etree.fromstring(_article(shared_data, OLD))
    article.remove(article.find("body"))
    out = classify_articleset(_articleset(etree.tostring(article)), ["PMC8435807"])
    assert out["PMC8435807"].status == "no-full-text"
    assert out["PMC8435807"].reason == NO_BODY


@pytest.mark.parametrize(
    "reply",
    [
        _articleset(b"<article><front>")[:-20],  # truncated
        b"",
        b"<html><body>Service unavailable</body></html>",
        b"<eFetchResult><ERROR>Empty id list - nothing todo</ERROR></eFetchResult>",
    ],
)
def test_unusable_replies_raise(reply: bytes) -> None:
    with pytest.raises(MalformedReply):
        classify_articleset(reply, ["PMC1"])


def test_parser_never_expands_entities_or_fetches_dtds(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    doc = f'<!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret}">]><pmc-articleset><p>&e;</p></pmc-articleset>'
    root = parse_xml(doc.encode())
    assert b"TOP-SECRET" not in etree.tostring(root)


# --- fetching through the fake -----------------------------------------------------------------------------
def test_mixed_batch_in_one_post(fetcher: Fetcher, fake_eutils: FakeEutils) -> None:
    ids = ["PMC8435807", "PMC12806063", "PMC2647976", "PMC9000001", "PMC9000002", "PMC9000003", "PMC424242"]
    out = fetcher.fetch_many(ids)
    assert {k: v.status for k, v in out.items()} == {
        "PMC8435807": "ok",  # 2021 vintage ids
        "PMC12806063": "ok",  # 2026 vintage ids
        "PMC2647976": "no-full-text",  # restricted comment, front only
        "PMC9000001": "ok",  # corpus file served under an assigned pmcid
        "PMC9000002": "ok",  # ... and under an assigned pmc
        "PMC9000003": "no-full-text",  # publish-on-accept: no <body>
        "PMC424242": "not-found",
    }
    (request,) = fake_eutils.requests_to("efetch")
    assert request.method == "POST" and len(request.ids()) == 7


def test_batches_of_50_are_posted(
    shared_data: Path, eutils_settings: Settings, fake_eutils: FakeEutils
) -> None:
    path = shared_data / ("jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml")
    ids = [f"PMC{8_000_000 + n}" for n in range(100)]
    for pmcid in ids:
        fake_eutils.add_article_file(pmcid, path, assign="pmc")
    settings = eutils_settings.model_copy(update={"efetch_batch_size": 50})
    fetcher = Fetcher(settings, EntrezClient(settings, limiter=IntervalRateLimiter(50)))
    out = fetcher.fetch_many(ids)
    assert all(r.status == "ok" for r in out.values()) and len(out) == 100
    requests = fake_eutils.requests_to("efetch")
    assert [(r.method, len(r.ids())) for r in requests] == [("POST", 50), ("POST", 50)]
    assert requests[0].ids() + requests[1].ids() == [i.removeprefix("PMC") for i in ids]


def test_truncated_reply_is_fetched_again(fetcher: Fetcher, fake_eutils: FakeEutils) -> None:
    fake_eutils.script("efetch", Fault(truncate_at=5000))
    out = fetcher.fetch_many(["PMC8435807", "PMC12806063"])
    assert {r.status for r in out.values()} == {"ok"}
    assert len(fake_eutils.requests_to("efetch")) == 2


def test_an_article_that_always_breaks_is_isolated(
    shared_data: Path, fetcher: Fetcher, fake_eutils: FakeEutils
) -> None:
    fake_eutils.add_article("PMC7777777", _article(shared_data, OLD)[:900])  # always served truncated
    out = fetcher.fetch_many(["PMC8435807", "PMC7777777", "PMC12806063"])
    assert out["PMC8435807"].status == "ok" and out["PMC12806063"].status == "ok"
    assert out["PMC7777777"].status == "failed"
    assert "unusable efetch reply" in (out["PMC7777777"].reason or "")
    assert "malformed or truncated" in (out["PMC7777777"].reason or "")
    # full batch twice, then halves: [8435807] once, [7777777, 12806063] twice, then each alone
    assert len(fake_eutils.requests_to("efetch")) == 8


def test_500_storm_ends_failed_with_the_reason(fetcher: Fetcher, fake_eutils: FakeEutils) -> None:
    # 4 tries of the batch, then (refused batches are split) 4 tries of each id alone
    fake_eutils.script("efetch", *[server_error(500)] * 12)
    out = fetcher.fetch_many(["PMC8435807", "PMC2647976"])
    for result in out.values():
        assert result.status == "failed"
        assert "HTTP 500" in (result.reason or "") and "gave up after 4 tries" in (result.reason or "")
    assert len(fake_eutils.requests_to("efetch")) == 12


def test_429_storm_then_success(fetcher: Fetcher, fake_eutils: FakeEutils) -> None:
    fake_eutils.script("efetch", rate_limited(), rate_limited(0.1), rate_limited())
    out = fetcher.fetch_many(["PMC8435807"])
    assert out["PMC8435807"].status == "ok"
    assert len(fake_eutils.requests_to("efetch")) == 4


def test_raw_xml_is_cached_and_refresh_refetches(fetcher: Fetcher, fake_eutils: FakeEutils) -> None:
    ids = ["PMC8435807", "PMC2647976", "PMC424242"]
    first = fetcher.fetch_many(ids)
    raw_dir = fetcher.settings.raw_dir
    assert sorted(p.name for p in raw_dir.iterdir()) == ["PMC2647976.xml", "PMC8435807.xml"]  # no temp files
    assert (raw_dir / "PMC8435807.xml").read_bytes() == first["PMC8435807"].xml
    assert len(fake_eutils.requests_to("efetch")) == 1

    second = fetcher.fetch_many(ids)
    assert second["PMC8435807"].from_cache and second["PMC8435807"].status == "ok"
    assert second["PMC2647976"].from_cache and second["PMC2647976"].status == "no-full-text"
    requests = fake_eutils.requests_to("efetch")
    assert len(requests) == 2 and requests[1].ids() == ["424242"]  # only the uncached unknown id

    fetcher.fetch_many(ids[:2])
    assert len(fake_eutils.requests_to("efetch")) == 2  # everything cached: no request at all
    third = fetcher.fetch_many(ids[:2], refresh=True)
    assert not third["PMC8435807"].from_cache
    assert len(fake_eutils.requests_to("efetch")) == 3


def test_a_corrupt_cache_file_is_fetched_again(fetcher: Fetcher, fake_eutils: FakeEutils) -> None:
    LocalRawStore(fetcher.settings.raw_dir).put("PMC8435807", b"<article><front>")
    out = fetcher.fetch_many(["PMC8435807"])
    assert out["PMC8435807"].status == "ok" and not out["PMC8435807"].from_cache
    assert len(fake_eutils.requests_to("efetch")) == 1


def test_parsed_articles_go_to_on_result_and_are_then_released(
    fetcher: Fetcher, fake_eutils: FakeEutils
) -> None:
    handed: list[FetchResult] = []
    out = fetcher.fetch_many(["PMC8435807", "PMC2647976", "PMC424242"], on_result=handed.append)
    assert {r.pmcid: r.article is not None for r in handed} == {
        "PMC8435807": True,
        "PMC2647976": True,
        "PMC424242": False,  # not found: nothing to parse
    }
    assert all(r.article is None for r in out.values())  # consumed: the trees are not kept
    assert out["PMC8435807"].xml is not None  # the bytes stay (they are what the raw cache holds)

    cached: list[FetchResult] = []
    fetcher.fetch_many(["PMC8435807"], on_result=cached.append)
    (from_cache,) = cached
    assert from_cache.from_cache and from_cache.article is not None
    assert article_pmcids(from_cache.article) == {"PMC8435807"}


def test_a_refused_batch_is_split_so_its_neighbours_are_fetched(
    fetcher: Fetcher, fake_eutils: FakeEutils
) -> None:
    ids = ["PMC8435807", "PMC12806063", "PMC2647976", "PMC424242"]
    fake_eutils.script("efetch", *[server_error(500)] * 4)  # the batch of 4 is refused on every try
    out = fetcher.fetch_many(ids)
    assert {k: v.status for k, v in out.items()} == {
        "PMC8435807": "ok",
        "PMC12806063": "ok",
        "PMC2647976": "no-full-text",
        "PMC424242": "not-found",
    }
    assert [len(r.ids()) for r in fake_eutils.requests_to("efetch")] == [4, 4, 4, 4, 2, 2]


def test_flaky_ncbi_loses_few_ids_of_a_default_batch(
    shared_data: Path, eutils_settings: Settings, fake_eutils: FakeEutils
) -> None:
    # The finding: at 50% 429 and 20% 500 a whole default batch of 20 was lost after 6 tries, while one id
    # per request lost 4 of 20. A refused batch now splits, so a bad request only fails its own ids.
    path = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml"
    ids = [f"PMC{8_100_000 + n}" for n in range(20)]
    for pmcid in ids:
        fake_eutils.add_article_file(pmcid, path, assign="pmc")
    settings = eutils_settings.model_copy(update={"ncbi_max_tries": 6})
    # The batch's own 6 tries are refused, as in the finding; every later request draws its fate.
    fake_eutils.script("efetch", rate_limited(), server_error(500), *[rate_limited()] * 4)
    fake_eutils.random_faults("efetch", [(0.5, rate_limited()), (0.2, server_error(500))], seed=11)
    out = Fetcher(settings, EntrezClient(settings, limiter=IntervalRateLimiter(500))).fetch_many(ids)
    ok = [pmcid for pmcid, result in out.items() if result.status == "ok"]
    failed = [result for result in out.values() if result.status != "ok"]
    assert len(ok) >= 16, [(r.pmcid, r.reason) for r in failed]  # at least what one id per request got
    assert all(r.status == "failed" and "efetch failed" in (r.reason or "") for r in failed)
    sizes = [len(r.ids()) for r in fake_eutils.requests_to("efetch")]
    assert sizes[:6] == [20] * 6 and max(sizes[6:]) == 10  # then halves (and smaller)


def test_an_unreachable_ncbi_is_not_split(eutils_settings: Settings) -> None:
    # Nothing listens on port 9: the halves could not reach it either, so the batch fails once, as a whole.
    settings = eutils_settings.model_copy(
        update={"eutils_url": "http://127.0.0.1:9/entrez/eutils/", "ncbi_max_tries": 2}
    )
    client = EntrezClient(settings, limiter=IntervalRateLimiter(500))
    calls: list[int] = []
    efetch = client.efetch_pmc

    def counted(pmcids: list[str]) -> bytes:
        calls.append(len(pmcids))
        return efetch(pmcids)

    client.efetch_pmc = counted  # type: ignore[method-assign]
    out = Fetcher(settings, client).fetch_many(["PMC1", "PMC2", "PMC3", "PMC4"])
    assert calls == [4]
    assert all(r.status == "failed" and "efetch failed" in (r.reason or "") for r in out.values())
