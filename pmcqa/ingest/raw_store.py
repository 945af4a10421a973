"""Where fetched articles' raw XML is kept: a local folder (embedded default) or an S3-compatible bucket.

`PMCQA_RAW_STORE` chooses: unset (or a path) keeps one file per PMCID under ``data_dir/raw`` (or that path);
``s3://bucket/prefix`` keeps one object per PMCID in that bucket, so workers on several hosts share one cache
without a shared disk (`PMCQA_S3_ENDPOINT_URL` points at a non-AWS server such as MinIO; credentials come
from boto3's usual chain: environment, config files, instance roles). Both stores write a whole article or
nothing: the local one through a temporary file and a rename, S3 because a PUT is atomic per object.

The store is a cache of NCBI's replies, not the library: losing it costs a re-fetch, never a paper.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from pmcqa.core.extras import require_extra
from pmcqa.core.settings import Settings


class RawStore(Protocol):
    def get(self, pmcid: str) -> bytes | None: ...

    def put(self, pmcid: str, data: bytes) -> str: ...

    def describe(self) -> str: ...


class LocalRawStore:
    """One file per PMCID under `raw_dir`, written atomically so a crash never leaves half a file."""

    def __init__(self, raw_dir: Path) -> None:
        self.raw_dir = raw_dir

    def path(self, pmcid: str) -> Path:
        return self.raw_dir / f"{pmcid}.xml"

    def describe(self) -> str:
        return str(self.raw_dir)

    def get(self, pmcid: str) -> bytes | None:
        try:
            return self.path(pmcid).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, pmcid: str, data: bytes) -> str:
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        target = self.path(pmcid)
        fd, tmp = tempfile.mkstemp(dir=self.raw_dir, prefix=f".{pmcid}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)  # atomic on POSIX: readers see the old file or the new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(target)


class S3RawStore:
    """One object per PMCID, ``s3://bucket/prefix/PMC….xml``, through boto3 (the `s3` extra)."""

    def __init__(self, url: str, endpoint_url: str | None = None, client: Any = None) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"PMCQA_RAW_STORE={url!r}: expected s3://bucket or s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if client is None:
            require_extra("s3", "PMCQA_RAW_STORE=s3://…")
            import boto3  # deferred: only networked deployments install it

            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client

    def key(self, pmcid: str) -> str:
        return f"{self.prefix}/{pmcid}.xml" if self.prefix else f"{pmcid}.xml"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def get(self, pmcid: str) -> bytes | None:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key(pmcid))
        except (self.client.exceptions.NoSuchKey, self.client.exceptions.NoSuchBucket):
            return None
        body: bytes = reply["Body"].read()
        return body

    def put(self, pmcid: str, data: bytes) -> str:
        key = self.key(pmcid)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/xml")
        except self.client.exceptions.NoSuchBucket:
            # A fresh deployment (e.g. the compose file's MinIO): the first write creates the bucket. Another
            # worker may create it at the same moment, which S3 answers with "already owned by you".
            with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
                self.client.create_bucket(Bucket=self.bucket)
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/xml")
        return f"s3://{self.bucket}/{key}"


def local_raw_dir(settings: Settings) -> Path | None:
    """The folder the raw store `settings.raw_store` names (default ``data_dir/raw``); None for a bucket."""
    location = settings.raw_store
    if location and location.startswith("s3://"):
        return None
    return Path(location) if location else settings.raw_dir


def open_raw_store(settings: Settings) -> RawStore:
    """The raw store `settings.raw_store` names (default: ``data_dir/raw``)."""
    folder = local_raw_dir(settings)
    if folder is None:
        return S3RawStore(str(settings.raw_store), endpoint_url=settings.s3_endpoint_url)
    return LocalRawStore(folder)
