"""Every paper-id rule, as pure functions (no network): the id grammar, the canonical PMCID, a file's own id,
the id given for a file (``--id``) and the store's alias key. Resolving PMIDs/DOIs to PMCIDs over the network
is `pmcqa.ingest.resolve`.

Accepted forms (case-insensitive, surrounding whitespace ignored):

* PMCID: ``PMC8026465``, ``pmc8026465``, versioned ``PMC8026465.1`` → canonical ``PMC8026465``;
  ``pmcid:8026465`` / ``pmcid:PMC8026465``; a PMC article URL (``…/articles/PMC8026465/``).
* PMID: ``pmid:12345678``; a PubMed URL (``https://pubmed.ncbi.nlm.nih.gov/12345678/``).
* DOI: ``10.1183/23120541.50193-2021``, ``doi:10.…``, ``https://doi.org/10.…`` (also dx.doi.org).
* A bare number follows the ``bare_digits`` setting: ``"pmcid"`` (default; efetch's reading) or ``"pmid"``.
  A bare number that turns out not to exist says how to ask for the other reading (`not_found_hint`).

A DOI is ``10.<4-9 digits>/<suffix>`` of at most `MAX_DOI_CHARS` characters, without whitespace, control or
other non-printing characters (lone surrogates included), and without ``.`` or ``..`` path segments: every
stored id must be something a client can name again in a URL (``GET /papers/{id}``), so such a DOI is refused
wherever it comes from: a request, ``--id``, or a file's own article ids. `PAPER_ID_PATTERN` is the grammar's
outline as one regular expression (the OpenAPI schema documents it; the checks above come on top).

A paper read from a file is stored under the ``--id`` given for it (a PMCID or a DOI, `given_paper_id`), else
under its own id (`own_paper_id`): its PMCID, else its valid DOI. A file that carries neither needs ``--id``.
Every id a paper is stored under passes `check_storable_id`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal
from urllib.parse import unquote

from pydantic import BaseModel

IdKind = Literal["pmcid", "pmid", "doi"]
BareDigits = Literal["pmcid", "pmid"]

_PMC_RE = re.compile(r"^PMC(\d{1,10})(?:\.(\d{1,4}))?$", re.IGNORECASE)
_DIGITS_RE = re.compile(r"^\d{1,10}$")
_DOI_RE = re.compile(r"^10\.\d{4,9}/\S+$")
_PREFIX_RE = re.compile(r"^(pmcid|pmc|pmid|doi)\s*:\s*(.*)$", re.IGNORECASE)
_DOI_URL_RE = re.compile(r"^https?://(?:dx\.)?doi\.org/(.+)$", re.IGNORECASE)
_PMC_URL_RE = re.compile(r"^https?://[^/]*ncbi\.nlm\.nih\.gov/(?:pmc/)?articles/(PMC\d+(?:\.\d+)?)/?", re.I)
_PUBMED_URL_RE = re.compile(r"^https?://pubmed\.ncbi\.nlm\.nih\.gov/(\d+)/?$", re.IGNORECASE)

USAGE = "expected PMC1234567, pmid:12345678 or a DOI such as 10.1000/xyz"
NO_OWN_ID = (
    "the file carries no PMCID or DOI usable as its id; give one (--id on the command line, ?id= over HTTP)"
)
MAX_ID_CHARS = 300  # the longest id text read at all (a DOI URL included)
MAX_DOI_CHARS = 200
TEXT_ROUTE_SUFFIX = "/text"  # GET /papers/{id}/text: no stored id may end so

# The accepted forms in outline (case-insensitive prefixes spelled out: JSON Schema patterns have no flags).
_CI_PMC = "[Pp][Mm][Cc]"
PAPER_ID_PATTERN = (
    r"^\s*(?:"
    rf"{_CI_PMC}\d{{1,10}}(?:\.\d{{1,4}})?"  # PMC8026465, PMC8026465.1
    rf"|{_CI_PMC}(?:[Ii][Dd])?\s*:\s*(?:{_CI_PMC}\d{{1,10}}(?:\.\d{{1,4}})?|\d{{1,10}})"  # pmcid:…
    r"|[Pp][Mm][Ii][Dd]\s*:\s*\d{1,10}"  # pmid:12345678
    r"|\d{1,10}"  # a bare number (PMCID or PMID per bare_digits)
    r"|(?:[Dd][Oo][Ii]\s*:\s*|[Hh][Tt][Tt][Pp][Ss]?://(?:[Dd][Xx]\.)?[Dd][Oo][Ii]\.[Oo][Rr][Gg]/)?"
    r"10\.\d{4,9}/\S+"  # a DOI, bare, doi:-prefixed or as a doi.org URL
    r"|[Hh][Tt][Tt][Pp][Ss]?://\S*ncbi\.nlm\.nih\.gov/\S*"  # a PMC article or PubMed URL
    r")\s*$"
)


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


def doi_problem(doi: str) -> str | None:
    """Why `doi` (already unquoted and stripped) cannot be a paper id, or None when it can."""
    if not _DOI_RE.match(doi):
        return "a DOI looks like 10.1234/suffix"
    if len(doi) > MAX_DOI_CHARS:
        return f"a DOI has at most {MAX_DOI_CHARS} characters"
    if any(unicodedata.category(char)[0] in "CZ" for char in doi):
        return "a DOI has no control, separator or other non-printing characters"
    if any(segment in (".", "..") for segment in doi.split("/")):
        return "a DOI has no '.' or '..' path segments"
    return None


def _doi(raw: str, doi: str) -> PaperId:
    doi = unquote(doi.strip())
    if why := doi_problem(doi):
        raise _invalid(raw, why)
    return PaperId(kind="doi", value=doi, raw=raw)


def parse_id(text: str, bare_digits: BareDigits = "pmcid") -> PaperId:
    """Parse one paper id; raise `InvalidPaperId` with a clear message when it is malformed."""
    raw = text
    text = (text or "").strip()
    if not text:
        raise _invalid(raw, "empty")
    if len(text) > MAX_ID_CHARS:
        raise InvalidPaperId(f"not a paper id: {len(text)} characters, more than {MAX_ID_CHARS} ({USAGE})")
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


def canonical_pmcid(value: object) -> str | None:
    """``"PMC8026465"`` for any PMCID spelling (``pmc8026465``, ``PMC8026465.1``, bare ``8026465`` as JATS
    ``pub-id-type="pmc"`` and efetch ``<error id>`` write it, ``pmcid:…``, a PMC URL); None for anything
    else."""
    if value is None:
        return None
    try:
        parsed = parse_id(str(value), bare_digits="pmcid")
    except InvalidPaperId:
        return None
    return parsed.value if parsed.kind == "pmcid" else None


def given_paper_id(text: str) -> str:
    """The id given for a local file (``--id``): a PMCID or a DOI, canonical. A PMID is refused: a stored
    paper is known by its PMCID, else its DOI. Raises `InvalidPaperId`."""
    parsed = parse_id(text, bare_digits="pmcid")
    if parsed.kind == "pmid":
        raise InvalidPaperId(f"{text!r} is a PMID: a paper is stored under its PMCID or DOI")
    return parsed.value


def own_paper_id(pmcid: str | None, doi: str | None) -> str | None:
    """A paper's own id from its article ids: the PMCID, else the DOI (publisher JATS, e.g. PLOS, has no
    PMCID); None when it carries neither, or only a DOI that is no valid id (then the caller asks for
    ``--id``, see `NO_OWN_ID`)."""
    found = canonical_pmcid(pmcid)
    if found:
        return found
    if not doi or not doi.strip():
        return None
    try:
        return _doi(doi, doi).value
    except InvalidPaperId:
        return None


def check_storable_id(paper_id: str) -> str:
    """`paper_id` if a paper may be stored under it (a canonical PMCID or a valid DOI, as `given_paper_id`
    returns them); raises `InvalidPaperId` otherwise. The store calls it for every paper it writes."""
    parsed = parse_id(paper_id, bare_digits="pmcid")
    if parsed.kind == "pmid" or parsed.bare or parsed.value != paper_id:
        raise InvalidPaperId(f"{paper_id!r} is not a canonical PMCID or DOI; papers are stored under one")
    if paper_id.endswith(TEXT_ROUTE_SUFFIX):  # GET /papers/{id}/text would take it for that route
        raise InvalidPaperId(
            f"a paper cannot be stored under {paper_id!r}: an id ending in {TEXT_ROUTE_SUFFIX!r} cannot be "
            "named in a URL (GET /papers/{id}/text); give it another id (its PMCID)"
        )
    return paper_id


_DOI_PREFIXES = ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "http://dx.doi.org/", "doi:")


def paper_key(text: str, bare_digits: BareDigits = "pmcid") -> str:
    """What every spelling of one requested paper shares (PMC5, pmc5, its URL, a bare 5 read per
    `bare_digits`; a DOI in any case or with a resolver prefix): for telling repeated requests apart. A
    malformed id keys as its stripped text."""
    try:
        return alias_key(str(parse_id(text, bare_digits)))
    except InvalidPaperId:
        return text.strip()


def alias_key(value: str) -> str:
    """The store's alias key: ``pmid:<digits>`` (a bare number is a PMID here: aliases are PMIDs and DOIs),
    ``doi:<lower-case DOI>`` without a resolver prefix, a PMCID canonical, anything else upper-case.

    Lenient on purpose (any ``10.x/…`` is a DOI): it must key whatever a stored record carries."""
    text = value.strip()
    lowered = text.lower()
    for prefix in _DOI_PREFIXES:
        if lowered.startswith(prefix):
            return "doi:" + lowered[len(prefix) :].strip()
    if lowered.startswith("10.") and "/" in lowered:
        return "doi:" + lowered
    if lowered.startswith("pmid:"):
        return "pmid:" + text[5:].strip()
    if text.isdigit():
        return "pmid:" + text
    return canonical_pmcid(text) or text.upper()
