"""Resolution of PMIDs and DOIs to PMCIDs (the id grammar itself is `pmcqa.core.ids`).

PMCIDs need no lookup. PMIDs and DOIs go to the PMC ID Converter (≤200 ids of one type per call); PMIDs it
cannot map fall back to elink ``pubmed_pmc``. Found mappings are cached in ``<data_dir>/idmap.sqlite3``, or
in the library's PostgreSQL database (table ``idmap``) when ``PMCQA_DATABASE_URL`` is set, so that every host
shares them; misses are not cached (an article may enter PMC later). Each id gets its own `Resolution`: one
bad id never fails the batch.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from pmcqa.core.db import connection_pool, ensure_postgres_schema, postgres_url
from pmcqa.core.ids import IdKind, InvalidPaperId, PaperId, canonical_pmcid, not_found_hint, parse_id
from pmcqa.core.settings import Settings
from pmcqa.core.status import ResolutionStatus, Status
from pmcqa.ingest.entrez import EntrezClient

log = logging.getLogger(__name__)


class Resolution(BaseModel):
    requested: str
    status: ResolutionStatus
    paper_id: PaperId | None = None
    pmcid: str | None = None
    pmid: str | None = None
    doi: str | None = None
    source: Literal["input", "cache", "idconv", "elink"] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS


def _key(kind: IdKind, value: str) -> str:
    """How a requested id is keyed in a batch and in the cache: DOIs compare case-insensitively."""
    return value.lower() if kind == "doi" else value


# --- persistent mapping cache ------------------------------------------------------------------------------
class IdMapCache:
    """PMID/DOI -> PMCID mappings in a small SQLite file (one short connection per call: thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS idmap (kind TEXT NOT NULL, key TEXT NOT NULL,"
                " pmcid TEXT NOT NULL,"
                " pmid TEXT, doi TEXT, updated REAL NOT NULL, PRIMARY KEY (kind, key))"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, kind: IdKind, value: str) -> tuple[str, str | None, str | None] | None:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT pmcid, pmid, doi FROM idmap WHERE kind = ? AND key = ?",
                (kind, _key(kind, value)),
            ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def put(self, pmcid: str, pmid: str | None, doi: str | None) -> None:
        rows = _idmap_rows(pmcid, pmid, doi)
        if not rows:
            return
        with closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO idmap VALUES (?, ?, ?, ?, ?, ?)", rows)


class PostgresIdMapCache:
    """The same mappings in the library's PostgreSQL database (table `idmap`, made by its migrations)."""

    def __init__(self, settings: Settings) -> None:
        ensure_postgres_schema(settings)
        self._pool = connection_pool(settings)

    def get(self, kind: IdKind, value: str) -> tuple[str, str | None, str | None] | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT pmcid, pmid, doi FROM idmap WHERE kind = %s AND key = %s", (kind, _key(kind, value))
            ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def put(self, pmcid: str, pmid: str | None, doi: str | None) -> None:
        rows = _idmap_rows(pmcid, pmid, doi)
        if not rows:
            return
        with self._pool.connection() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO idmap(kind, key, pmcid, pmid, doi, updated) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (kind, key) DO UPDATE SET pmcid = excluded.pmcid, pmid = excluded.pmid,"
                " doi = excluded.doi, updated = excluded.updated",
                rows,
            )


def _idmap_rows(pmcid: str, pmid: str | None, doi: str | None) -> list[tuple[str, str, str, Any, Any, float]]:
    """The cache rows of one mapping: one per id it can be looked up by."""
    rows: list[tuple[str, str, str, Any, Any, float]] = []
    if pmid:
        rows.append(("pmid", pmid, pmcid, pmid, doi, time.time()))
    if doi:
        rows.append(("doi", _key("doi", doi), pmcid, pmid, doi, time.time()))
    return rows


def open_idmap_cache(settings: Settings) -> IdMapCache | PostgresIdMapCache:
    """The id map of the library `settings` name: PostgreSQL when `database_url` is set, else SQLite."""
    if postgres_url(settings) is not None:
        return PostgresIdMapCache(settings)
    return IdMapCache(settings.idmap_path)


# --- resolver ----------------------------------------------------------------------------------------------
Hit = tuple[str, str | None, str | None, Literal["idconv", "elink"]]  # pmcid, pmid, doi, source


class IdResolver:
    """Turn requested ids into PMCIDs: per-id results, cached, batched by type."""

    def __init__(self, settings: Settings, client: EntrezClient | None) -> None:
        self.settings = settings
        self.client = client
        self.cache = open_idmap_cache(settings)

    def resolve_many(self, ids: Iterable[str]) -> dict[str, Resolution]:
        out: dict[str, Resolution] = {}
        pending: dict[IdKind, dict[str, list[tuple[str, PaperId]]]] = {"pmid": {}, "doi": {}}
        seen: set[str] = set()
        for text in ids:
            if text in seen:
                continue
            seen.add(text)
            try:
                pid = parse_id(text, self.settings.bare_digits)
            except InvalidPaperId as exc:
                out[text] = Resolution(requested=text, status=Status.INVALID, error=str(exc))
                continue
            if pid.kind == "pmcid":
                out[text] = Resolution(
                    requested=text, status=Status.SUCCESS, paper_id=pid, pmcid=pid.value, source="input"
                )
                continue
            cached = self.cache.get(pid.kind, pid.value)
            if cached:
                out[text] = Resolution(
                    requested=text,
                    status=Status.SUCCESS,
                    paper_id=pid,
                    pmcid=cached[0],
                    pmid=cached[1],
                    doi=cached[2],
                    source="cache",
                )
                continue
            key = _key(pid.kind, pid.value)
            pending[pid.kind].setdefault(key, []).append((text, pid))
        for kind, group in pending.items():
            if group:
                out.update(self._resolve_remote(kind, group))
        return out

    def _resolve_remote(
        self, kind: IdKind, group: dict[str, list[tuple[str, PaperId]]]
    ) -> dict[str, Resolution]:
        found: dict[str, Hit] = {}  # key -> (pmcid, pmid, doi, source)
        misses: dict[str, str] = {}  # key -> why
        if self.client is None:
            return self._finish(kind, group, found, {k: "no NCBI client configured" for k in group}, set())
        failed: set[str] = set()
        values = [entries[0][1].value for entries in group.values()]
        try:
            records = self.client.idconv(values, kind)
        except Exception as exc:  # transport trouble: the elink fallback (PMIDs) may still work
            log.warning("idconv failed: %s", exc)
            records, failed = [], set(group)
            misses.update({key: f"ID Converter failed: {exc}" for key in group})
        for record in records:
            self._take_record(kind, record, group, found, misses)
        if kind == "pmid":
            left = [key for key in group if key not in found]
            if left:
                self._elink_fallback(left, found, misses, failed)
        for pmcid, pmid, doi, _source in found.values():
            self.cache.put(pmcid, pmid, doi)
        return self._finish(kind, group, found, misses, failed)

    @staticmethod
    def _take_record(
        kind: IdKind,
        record: dict[str, Any],
        group: dict[str, list[tuple[str, PaperId]]],
        found: dict[str, Hit],
        misses: dict[str, str],
    ) -> None:
        requested = str(record.get("requested-id") or record.get(kind) or "").strip()
        key = _key(kind, requested)
        if key not in group:
            return
        pmcid = canonical_pmcid(record.get("pmcid"))
        pmid = str(record["pmid"]) if record.get("pmid") else None
        doi = str(record["doi"]) if record.get("doi") else None
        if pmcid and record.get("status") != "error":
            found[key] = (pmcid, pmid, doi, "idconv")
        else:
            misses[key] = str(record.get("errmsg") or "Identifier not found in PMC")

    def _elink_fallback(
        self,
        pmids: list[str],
        found: dict[str, Hit],
        misses: dict[str, str],
        failed: set[str],
    ) -> None:
        assert self.client is not None
        try:
            links = self.client.elink_pubmed_pmc(pmids)
        except Exception as exc:
            log.warning("elink fallback failed: %s", exc)
            for pmid in pmids:
                misses[pmid] = f"{misses.get(pmid, 'not mapped')}; elink failed: {exc}"
            return
        for pmid in pmids:
            pmcids = links.get(pmid) or []
            if pmcids:
                found[pmid] = (pmcids[0], pmid, None, "elink")
                failed.discard(pmid)
            else:  # elink answered: no pubmed_pmc link is a definite "not in PMC"
                failed.discard(pmid)
                misses[pmid] = "no pubmed_pmc link (elink)"

    @staticmethod
    def _finish(
        kind: IdKind,
        group: dict[str, list[tuple[str, PaperId]]],
        found: dict[str, Hit],
        misses: dict[str, str],
        failed: set[str],
    ) -> dict[str, Resolution]:
        out: dict[str, Resolution] = {}
        for key, entries in group.items():
            for text, pid in entries:
                if key in found:
                    pmcid, pmid, doi, source = found[key]
                    out[text] = Resolution(
                        requested=text,
                        status=Status.SUCCESS,
                        paper_id=pid,
                        pmcid=pmcid,
                        pmid=pmid,
                        doi=doi,
                        source=source,
                    )
                    continue
                label = "PMID" if kind == "pmid" else "DOI"
                why = misses.get(key, "Identifier not found in PMC")
                status: ResolutionStatus = Status.FAILED if key in failed else Status.NOT_FOUND
                if status == Status.FAILED:  # NCBI was not reached: nothing is known about the id
                    message = f"{label} {pid.value}: the lookup failed, NCBI could not be reached ({why})"
                else:
                    message = f"{label} {pid.value} is not in PMC ({why})"
                    if pid.bare:
                        message += f"; {not_found_hint(pid)}"
                out[text] = Resolution(requested=text, status=status, paper_id=pid, error=message)
        return out
