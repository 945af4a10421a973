"""The raw XML store on a local folder and on a real S3 server (moto's server mode on 127.0.0.1, through
boto3's real HTTP client): the same contract, and the fetcher reading what an earlier fetch stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pmcqa.core.settings import Settings
from pmcqa.ingest.entrez import EntrezClient, IntervalRateLimiter
from pmcqa.ingest.fetch import Fetcher
from pmcqa.ingest.raw_store import LocalRawStore, RawStore, S3RawStore, open_raw_store

ARTICLE = b"<article><front><article-meta><article-id pub-id-type='pmc'>123</article-id></article-meta>"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server", reason="moto (dev extra) runs the local S3 server")
    pytest.importorskip("boto3", reason="boto3 (the s3 extra) is the S3 client")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request) -> Settings:  # type: ignore[no-untyped-def]
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    bucket = f"raw-{request.node.name.replace('_', '-')[:40].lower()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return Settings(data_dir=tmp_path, raw_store=f"s3://{bucket}/pmc", s3_endpoint_url=s3_endpoint)


def check_contract(store: RawStore) -> None:
    assert store.get("PMC123") is None
    where = store.put("PMC123", ARTICLE)
    assert "PMC123" in where
    assert store.get("PMC123") == ARTICLE
    store.put("PMC123", ARTICLE + b"<!-- v2 -->")  # a refresh replaces the whole article
    assert store.get("PMC123") == ARTICLE + b"<!-- v2 -->"
    assert store.get("PMC124") is None


def test_local_store_keeps_one_file_per_article_and_no_temporary_files(tmp_path: Path) -> None:
    store = open_raw_store(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalRawStore) and store.raw_dir == tmp_path / "raw"
    check_contract(store)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["PMC123.xml"]


def test_a_folder_setting_moves_the_local_store(tmp_path: Path) -> None:
    store = open_raw_store(Settings(data_dir=tmp_path / "data", raw_store=str(tmp_path / "elsewhere")))
    check_contract(store)
    assert (tmp_path / "elsewhere" / "PMC123.xml").exists() and not (tmp_path / "data" / "raw").exists()


def test_s3_store_keeps_one_object_per_article_under_the_prefix(s3_settings: Settings) -> None:
    import boto3

    store = open_raw_store(s3_settings)
    assert isinstance(store, S3RawStore) and store.describe() == s3_settings.raw_store
    check_contract(store)
    listed = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url).list_objects_v2(Bucket=store.bucket)
    assert [item["Key"] for item in listed["Contents"]] == ["pmc/PMC123.xml"]


def test_two_hosts_share_articles_through_the_bucket(s3_settings: Settings, tmp_path: Path) -> None:
    """Two processes with their own empty data dirs see each other's articles: nothing on a shared disk."""
    first = open_raw_store(s3_settings.model_copy(update={"data_dir": tmp_path / "host-a"}))
    second = open_raw_store(s3_settings.model_copy(update={"data_dir": tmp_path / "host-b"}))
    first.put("PMC777", ARTICLE)
    assert second.get("PMC777") == ARTICLE
    assert not (tmp_path / "host-a").exists() and not (tmp_path / "host-b").exists()


def test_the_first_write_creates_a_missing_bucket(s3_settings: Settings) -> None:
    store = open_raw_store(s3_settings.model_copy(update={"raw_store": "s3://fresh-deployment/raw"}))
    assert store.get("PMC123") is None  # no bucket yet: nothing cached, not an error
    store.put("PMC123", ARTICLE)
    assert store.get("PMC123") == ARTICLE


def test_a_bucket_url_without_a_bucket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="s3://bucket"):
        S3RawStore("s3://", client=object())


def test_a_worker_on_another_host_reads_what_the_first_fetched(
    s3_settings: Settings, eutils_settings: Settings, fake_eutils, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Real efetch through the fake E-utilities server into the bucket; a second fetcher with its own empty
    data dir gets the article from the bucket without asking NCBI again."""
    shared = {"raw_store": s3_settings.raw_store, "s3_endpoint_url": s3_settings.s3_endpoint_url}
    hosts = [eutils_settings.model_copy(update={**shared, "data_dir": tmp_path / name}) for name in "ab"]
    first, second = (Fetcher(s, EntrezClient(s, limiter=IntervalRateLimiter(50))) for s in hosts)
    fetched = first.fetch_many(["PMC8435807"])["PMC8435807"]
    assert fetched.status == "ok" and not fetched.from_cache
    again = second.fetch_many(["PMC8435807"])["PMC8435807"]
    assert again.status == "ok" and again.from_cache and again.xml == fetched.xml
    assert len(fake_eutils.requests_to("efetch")) == 1
