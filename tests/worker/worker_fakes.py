"""Stand-in ingestors for worker tests, run in worker subprocesses by run_fake_worker.py.

`SlowIngestor` behaves like the pipeline's contract (outcome per id, progress callback, an atomic
replace-on-write store) but spends a set time per id, so a test can SIGKILL a worker mid-batch. It also
takes one shared-rate-limiter slot per id and logs when, so tests can check the shared NCBI limit.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from pmcqa.ingest.entrez import EntrezClient

DELAY_ENV = "PMCQA_TEST_INGEST_DELAY_S"


def fake_db(data_dir: Path) -> Path:
    return Path(data_dir) / "fake-store.sqlite3"


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)  # a PostgreSQL library leaves data_dir uncreated
    conn = sqlite3.connect(path, timeout=30)
    conn.execute("pragma journal_mode=wal")
    conn.execute("create table if not exists papers (paper_id text primary key, chunks integer)")
    conn.execute("create table if not exists writes (paper_id text, pid integer, at real)")
    conn.execute("create table if not exists requests (pid integer, at real)")
    return conn


class SlowIngestor:
    def __init__(self, settings: Any, limiter: Any) -> None:
        self.db = fake_db(settings.data_dir)
        self.limiter = limiter
        self.delay = float(os.environ.get(DELAY_ENV, "0.05"))

    def ingest_ids(self, ids: list[str], refresh: bool = False, progress: Any = None) -> list[dict]:
        outcomes = []
        for requested in ids:
            self.limiter.acquire()
            now = time.time()
            time.sleep(self.delay)
            status = "not-found" if requested.endswith("9") else "ingested"
            with _connect(self.db) as conn:  # one transaction: like put_paper, all or nothing
                conn.execute("insert into requests values (?, ?)", (os.getpid(), now))
                if status == "ingested":
                    conn.execute("insert or replace into papers values (?, 3)", (requested,))
                    conn.execute("insert into writes values (?, ?, ?)", (requested, os.getpid(), now))
            outcome = {"requested": requested, "paper_id": requested, "status": status, "chunks": 3,
                       "reason": None if status == "ingested" else "no such id", "title": f"T {requested}"}
            if progress is not None:
                progress(outcome)
            outcomes.append(outcome)
        return outcomes


def factory(settings: Any, limiter: Any) -> SlowIngestor:
    return SlowIngestor(settings, limiter)


class EfetchIngestor:
    """Fetches each id with its own efetch through the real `EntrezClient` and the worker's limiter.

    Stands in for the pipeline where a test is about the NCBI traffic (many small requests), not parsing.
    """

    def __init__(self, settings: Any, limiter: Any) -> None:
        self.client = EntrezClient(settings, limiter=limiter)
        self.db = fake_db(settings.data_dir)

    def ingest_ids(self, ids: list[str], refresh: bool = False, progress: Any = None) -> list[dict]:
        outcomes = []
        for requested in ids:
            body = self.client.efetch_pmc([requested])
            status = "not-found" if b"<error" in body else "ingested"
            with _connect(self.db) as conn:
                conn.execute("insert into requests values (?, ?)", (os.getpid(), time.time()))
            outcome = {"requested": requested, "paper_id": requested, "status": status}
            if progress is not None:
                progress(outcome)
            outcomes.append(outcome)
        return outcomes


def efetch_factory(settings: Any, limiter: Any) -> EfetchIngestor:
    return EfetchIngestor(settings, limiter)
