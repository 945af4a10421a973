"""PMID/DOI resolution (ID Converter, elink fallback, persistent cache) via the fake E-utilities server."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes.eutils_server import FakeEutils, server_error

from pmcqa.core.settings import Settings
from pmcqa.ingest.entrez import EntrezClient, IntervalRateLimiter
from pmcqa.ingest.resolve import IdResolver


# --- resolution --------------------------------------------------------------------------------------------
@pytest.fixture
def resolver(eutils_settings: Settings) -> IdResolver:
    return IdResolver(eutils_settings, EntrezClient(eutils_settings, limiter=IntervalRateLimiter(50)))


def test_mixed_batch_resolves_per_id(resolver: IdResolver, fake_eutils: FakeEutils) -> None:
    requested = [
        "PMC8435807",  # no lookup needed
        "pmid:34527728",  # ID Converter
        "10.1002/qub2.92",  # DOI via ID Converter
        "https://doi.org/10.1073/pnas.0812194106",
        "pmid:23029536",  # only elink knows it
        "pmid:1",  # in neither
        "doi:10.9999/none",
        "not-an-id",
    ]
    out = resolver.resolve_many(requested)
    assert list(out) == requested or set(out) == set(requested)
    assert (out["PMC8435807"].pmcid, out["PMC8435807"].source) == ("PMC8435807", "input")
    assert (out["pmid:34527728"].pmcid, out["pmid:34527728"].source) == ("PMC8435807", "idconv")
    assert out["pmid:34527728"].doi == "10.1183/23120541.50193-2021"
    assert out["10.1002/qub2.92"].pmcid == "PMC12806063"
    assert out["https://doi.org/10.1073/pnas.0812194106"].pmcid == "PMC2647976"
    assert (out["pmid:23029536"].pmcid, out["pmid:23029536"].source) == ("PMC3460867", "elink")
    assert out["pmid:1"].status == "not-found"
    assert "PMID 1 is not in PMC" in (out["pmid:1"].error or "")
    assert "no pubmed_pmc link" in (out["pmid:1"].error or "")
    assert out["doi:10.9999/none"].status == "not-found"
    assert "Identifier not found in PMC" in (out["doi:10.9999/none"].error or "")
    assert out["not-an-id"].status == "invalid"

    idconv = fake_eutils.requests_to("idconv")
    assert len(idconv) == 2  # one call per id type
    by_type = {r.params["idtype"][0]: r for r in idconv}
    assert sorted(by_type["pmid"].ids()) == ["1", "23029536", "34527728"]
    assert by_type["doi"].params["format"] == ["json"]
    assert by_type["doi"].params["tool"] == ["pmcqa"] and by_type["doi"].params["email"] == [
        "tests@example.org"
    ]
    elink = fake_eutils.requests_to("elink")
    assert len(elink) == 1 and sorted(elink[0].ids()) == ["1", "23029536"]
    assert elink[0].params["linkname"] == ["pubmed_pmc"] and elink[0].params["dbfrom"] == ["pubmed"]


def test_mappings_are_cached_persistently(eutils_settings: Settings, fake_eutils: FakeEutils) -> None:
    client = EntrezClient(eutils_settings, limiter=IntervalRateLimiter(50))
    first = IdResolver(eutils_settings, client).resolve_many(
        ["pmid:34527728", "10.1002/QUB2.92", "pmid:23029536"]
    )
    assert all(r.ok for r in first.values())
    calls = len(fake_eutils.requests)
    # a new resolver (a new process, say) on the same data dir: no request at all
    again = IdResolver(eutils_settings, client).resolve_many(
        ["pmid:34527728", "doi:10.1002/qub2.92", "pmid:23029536"]
    )
    assert [r.source for r in again.values()] == ["cache", "cache", "cache"]
    assert again["doi:10.1002/qub2.92"].pmcid == "PMC12806063"
    assert len(fake_eutils.requests) == calls
    assert (eutils_settings.data_dir / "idmap.sqlite3").exists()
    # misses are not cached: asked again, they go to NCBI again
    IdResolver(eutils_settings, client).resolve_many(["pmid:1"])
    assert len(fake_eutils.requests) > calls


def test_idconv_batches_hold_at_most_200_ids(resolver: IdResolver, fake_eutils: FakeEutils) -> None:
    ids = [f"pmid:{n}" for n in range(1000, 1450)]
    fake_eutils.add_idmap("PMC7000001", pmid="1001")
    out = resolver.resolve_many(ids)
    assert out["pmid:1001"].pmcid == "PMC7000001"
    assert sum(r.status == "not-found" for r in out.values()) == 449
    assert [len(r.ids()) for r in fake_eutils.requests_to("idconv")] == [200, 200, 50]


def test_bare_number_read_as_pmid_mentions_the_pmc_reading(eutils_settings: Settings) -> None:
    settings = eutils_settings.model_copy(update={"bare_digits": "pmid"})
    resolver = IdResolver(settings, EntrezClient(settings, limiter=IntervalRateLimiter(50)))
    out = resolver.resolve_many(["34527728", "8026465"])
    assert out["34527728"].pmcid == "PMC8435807"
    assert out["8026465"].status == "not-found"
    assert "if you meant PMC8026465, pass pmcid:PMC8026465" in (out["8026465"].error or "")


def test_idconv_outage_falls_back_to_elink_for_pmids(resolver: IdResolver, fake_eutils: FakeEutils) -> None:
    fake_eutils.script("idconv", *[server_error(503)] * 8)
    out = resolver.resolve_many(["pmid:23029536", "pmid:5", "doi:10.1002/qub2.92"])
    assert out["pmid:23029536"].pmcid == "PMC3460867"  # elink still answered
    assert out["pmid:5"].status == "not-found"  # elink's "no link" is a definite answer
    assert "no pubmed_pmc link" in (out["pmid:5"].error or "")
    assert out["doi:10.1002/qub2.92"].status == "failed"
    assert "HTTP 503" in (out["doi:10.1002/qub2.92"].error or "")


def test_everything_down_gives_failed_not_not_found(resolver: IdResolver, fake_eutils: FakeEutils) -> None:
    fake_eutils.script("idconv", *[server_error(500)] * 4)
    fake_eutils.script("elink", *[server_error(500)] * 4)
    out = resolver.resolve_many(["pmid:23029536", "PMC8435807"])
    assert out["pmid:23029536"].status == "failed"
    assert "elink failed" in (out["pmid:23029536"].error or "")
    assert out["PMC8435807"].ok  # other ids are not held back


def test_a_lookup_that_gave_up_says_so_not_that_the_id_is_not_in_pmc(
    resolver: IdResolver, fake_eutils: FakeEutils
) -> None:
    fake_eutils.script("idconv", *[server_error(500)] * 8)  # 4 tries of the PMID batch, 4 of the DOI batch
    fake_eutils.script("elink", *[server_error(500)] * 4)
    out = resolver.resolve_many(["pmid:23029536", "doi:10.1002/qub2.92"])
    for resolution in out.values():
        assert resolution.status == "failed"
        assert "lookup failed" in (resolution.error or "") and "not in PMC" not in (resolution.error or "")


def test_mappings_are_shared_through_postgres(
    eutils_settings: Settings, fake_eutils: FakeEutils, postgres_database: str, tmp_path: Path
) -> None:
    """With PMCQA_DATABASE_URL the id map lives in PostgreSQL: a resolver on another host (another data
    dir) reuses what the first one looked up, and no idmap.sqlite3 is written."""
    from pydantic import SecretStr

    from pmcqa.core.db import connection_pool
    from pmcqa.ingest.resolve import PostgresIdMapCache

    host_a = eutils_settings.model_copy(update={"database_url": SecretStr(postgres_database)})
    host_b = host_a.model_copy(update={"data_dir": tmp_path / "host-b"})
    client = EntrezClient(host_a, limiter=IntervalRateLimiter(50))
    first = IdResolver(host_a, client)
    assert isinstance(first.cache, PostgresIdMapCache)
    with connection_pool(host_a).connection() as conn:
        conn.execute("DELETE FROM idmap WHERE key IN ('34527728', '10.1002/qub2.92')")
    assert all(r.ok for r in first.resolve_many(["pmid:34527728", "10.1002/QUB2.92"]).values())
    calls = len(fake_eutils.requests)
    again = IdResolver(host_b, client).resolve_many(["pmid:34527728", "doi:10.1002/qub2.92"])
    assert [r.source for r in again.values()] == ["cache", "cache"]
    assert again["doi:10.1002/qub2.92"].pmcid == "PMC12806063"
    assert len(fake_eutils.requests) == calls
    assert (
        not (host_a.data_dir / "idmap.sqlite3").exists() and not (host_b.data_dir / "idmap.sqlite3").exists()
    )
