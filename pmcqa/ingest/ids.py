"""Paper id grammar (PMCID, PMID, DOI) and resolution of PMIDs/DOIs to PMCIDs.

Accepted forms (case-insensitive, surrounding whitespace ignored):

* PMCID: ``PMC8026465``, ``pmc8026465``, versioned ``PMC8026465.1`` → canonical ``PMC8026465``;
  ``pmcid:8026465`` / ``pmcid:PMC8026465``; a PMC article URL (``…/articles/PMC8026465/``).
* PMID: ``pmid:12345678``; a PubMed URL (``https://pubmed.ncbi.nlm.nih.gov/12345678/``).
* DOI: ``10.1183/23120541.50193-2021``, ``doi:10.…``, ``https://doi.org/10.…`` (also dx.doi.org).
* A bare number follows the ``bare_digits`` setting: ``"pmcid"`` (default; efetch's reading) or ``"pmid"``.
  A bare number that turns out not to exist says how to ask for the other reading (`not_found_hint`).

Resolution: PMCIDs need no lookup. PMIDs and DOIs go to the PMC ID Converter (≤200 ids of one type per call);
PMIDs it cannot map fall back to elink ``pubmed_pmc``. Found mappings are cached in
``<data_dir>/idmap.sqlite3``; misses are not cached (an article may enter PMC later). Each id gets its own
`Resolution`: one bad id never fails the batch.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel

from pmcqa.core.settings import Settings

if TYPE_CHECKING:
    from pmcqa.ingest.entrez import EntrezClient

log = logging.getLogger(__name__)

IdKind = Literal["pmcid", "pmid", "doi"]
ResolutionStatus = Literal["ok", "invalid", "not-found", "failed"]

_PMC_RE = re.compile(r"^PMC(\d{1,10})(?:\.(\d{1,4}))?$", re.IGNORECASE)
_DIGITS_RE = re.compile(r"^\d{1,10}$")
_DOI_RE = re.compile(r"^10\.\d{4,9}/\S+$")
_PREFIX_RE = re.compile(r"^(pmcid|pmc|pmid|doi)\s*:\s*(.*)$", re.IGNORECASE)
_DOI_URL_RE = re.compile(r"^https?://(?:dx\.)?doi\.org/(.+)$", re.IGNORECASE)
_PMC_URL_RE = re.compile(r"^https?://[^/]*ncbi\.nlm\.nih\.gov/(?:pmc/)?articles/(PMC\d+(?:\.\d+)?)/?", re.I)
_PUBMED_URL_RE = re.compile(r"^https?://pubmed\.ncbi\.nlm\.nih\.gov/(\d+)/?$", re.IGNORECASE)

USAGE = "expected PMC1234567, pmid:12345678 or a DOI such as 10.1000/xyz"


class InvalidPaperId(ValueError):
    """The text is not a paper id in any accepted form."""


class PaperId(BaseModel, frozen=True):
    kind: IdKind
    value: str  # canonical: "PMC8026465", "12345678", or the DOI as given (compared case-insensitively)
    raw: str
    version: int | None = None  # "PMC8026465.1" -> 1
    bare: bool = False  # a bare number read per the bare_digits setting

    def __str__(self) -> str:
        return self.value if self.kind != "pmid" else f"pmid:{self.value}"


def _invalid(text: str, why: str = "") -> InvalidPaperId:
    detail = f": {why}" if why else ""
    return InvalidPaperId(f"not a paper id: {text!r}{detail} ({USAGE})")


def _pmcid(raw: str, digits: str, version: str | None = None) -> PaperId:
    number = int(digits)
    if number == 0:
        raise _invalid(raw, "PMC ids start at 1")
    return PaperId(kind="pmcid", value=f"PMC{number}", raw=raw, version=int(version) if version else None)


def _pmid(raw: str, digits: str) -> PaperId:
    if not _DIGITS_RE.match(digits) or int(digits) == 0:
        raise _invalid(raw, "a PMID is a positive number")
    return PaperId(kind="pmid", value=str(int(digits)), raw=raw)


def _doi(raw: str, doi: str) -> PaperId:
    doi = unquote(doi.strip())
    if not _DOI_RE.match(doi):
        raise _invalid(raw, "a DOI looks like 10.1234/suffix")
    return PaperId(kind="doi", value=doi, raw=raw)


def parse_id(text: str, bare_digits: Literal["pmcid", "pmid"] = "pmcid") -> PaperId:
    """Parse one paper id; raise `InvalidPaperId` with a clear message when it is malformed."""
    raw = text
    text = (text or "").strip()
    if not text:
        raise _invalid(raw, "empty")
    if match := _PREFIX_RE.match(text):
        prefix, rest = match.group(1).lower(), match.group(2).strip()
        if prefix in ("pmcid", "pmc"):
            if m := _PMC_RE.match(rest):
                return _pmcid(raw, m.group(1), m.group(2))
            if _DIGITS_RE.match(rest):
                return _pmcid(raw, rest)
            raise _invalid(raw, "a PMCID is PMC followed by digits")
        if prefix == "pmid":
            return _pmid(raw, rest)
        return _doi(raw, rest)
    if m := _PMC_RE.match(text):
        return _pmcid(raw, m.group(1), m.group(2))
    if _DIGITS_RE.match(text):
        parsed = _pmcid(raw, text) if bare_digits == "pmcid" else _pmid(raw, text)
        return parsed.model_copy(update={"bare": True})
    if m := _DOI_URL_RE.match(text):
        return _doi(raw, m.group(1))
    if m := _PMC_URL_RE.match(text):
        pm = _PMC_RE.match(m.group(1))
        assert pm is not None
        return _pmcid(raw, pm.group(1), pm.group(2))
    if m := _PUBMED_URL_RE.match(text):
        return _pmid(raw, m.group(1))
    if text.startswith("10."):
        return _doi(raw, text)
    raise _invalid(raw)


def not_found_hint(paper_id: PaperId) -> str:
    """For a bare number that was not found: how to ask for the other reading."""
    if not paper_id.bare:
        return ""
    digits = paper_id.value.removeprefix("PMC")
    if paper_id.kind == "pmcid":
        return f"if you meant PMID {digits}, pass pmid:{digits}"
    return f"if you meant PMC{digits}, pass pmcid:PMC{digits}"


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
        return self.status == "ok"


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

    @staticmethod
    def _key(kind: IdKind, value: str) -> str:
        return value.lower() if kind == "doi" else value

    def get(self, kind: IdKind, value: str) -> tuple[str, str | None, str | None] | None:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT pmcid, pmid, doi FROM idmap WHERE kind = ? AND key = ?",
                (kind, self._key(kind, value)),
            ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def put(self, pmcid: str, pmid: str | None, doi: str | None) -> None:
        rows = []
        if pmid:
            rows.append(("pmid", pmid, pmcid, pmid, doi, time.time()))
        if doi:
            rows.append(("doi", doi.lower(), pmcid, pmid, doi, time.time()))
        if not rows:
            return
        with closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO idmap VALUES (?, ?, ?, ?, ?, ?)", rows)


# --- resolver ----------------------------------------------------------------------------------------------
def _canonical_pmcid(value: Any) -> str | None:
    if value is None:
        return None
    m = _PMC_RE.match(str(value).strip())
    return f"PMC{int(m.group(1))}" if m else None


Hit = tuple[str, str | None, str | None, Literal["idconv", "elink"]]  # pmcid, pmid, doi, source


class IdResolver:
    """Turn requested ids into PMCIDs: per-id results, cached, batched by type."""

    def __init__(self, settings: Settings, client: EntrezClient | None) -> None:
        self.settings = settings
        self.client = client
        self.cache = IdMapCache(settings.data_dir / "idmap.sqlite3")

    def resolve(self, text: str) -> Resolution:
        return self.resolve_many([text])[text]

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
                out[text] = Resolution(requested=text, status="invalid", error=str(exc))
                continue
            if pid.kind == "pmcid":
                out[text] = Resolution(
                    requested=text, status="ok", paper_id=pid, pmcid=pid.value, source="input"
                )
                continue
            cached = self.cache.get(pid.kind, pid.value)
            if cached:
                out[text] = Resolution(
                    requested=text,
                    status="ok",
                    paper_id=pid,
                    pmcid=cached[0],
                    pmid=cached[1],
                    doi=cached[2],
                    source="cache",
                )
                continue
            key = pid.value.lower() if pid.kind == "doi" else pid.value
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
        key = requested.lower() if kind == "doi" else requested
        if key not in group:
            return
        pmcid = _canonical_pmcid(record.get("pmcid"))
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
                        status="ok",
                        paper_id=pid,
                        pmcid=pmcid,
                        pmid=pmid,
                        doi=doi,
                        source=source,
                    )
                    continue
                label = "PMID" if kind == "pmid" else "DOI"
                why = misses.get(key, "Identifier not found in PMC")
                message = f"{label} {pid.value} is not in PMC ({why})"
                if pid.bare:
                    message += f"; {not_found_hint(pid)}"
                status: ResolutionStatus = "failed" if key in failed else "not-found"
                out[text] = Resolution(requested=text, status=status, paper_id=pid, error=message)
        return out
