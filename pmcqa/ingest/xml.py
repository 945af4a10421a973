"""Safe XML parsing for everything that arrives from NCBI or from a user's file.

One parser configuration for the whole service: no network, no DTD loading, no entity expansion (so XXE and
"billion laughs" documents parse harmlessly), `huge_tree` for very large articles, and comments kept because
the only signal of a publisher-restricted PMC article is an XML comment.

Each document is parsed in a short-lived thread of its own: libxml2 interns every element and attribute name
in a dictionary per thread that is never shrunk, so documents crafted with millions of distinct names would
grow a long-lived server or worker thread for good. A parse thread's dictionary is freed with the thread
and the tree (which holds a reference to it); the tree is then used from the calling thread as usual.
"""

from __future__ import annotations

import threading

from lxml import etree

__all__ = ["JatsError", "parse_xml"]


class JatsError(ValueError):
    """The input is not usable XML/JATS (malformed, truncated, empty or another XML vocabulary)."""


def _make_parser() -> etree.XMLParser:
    # A fresh parser per call: lxml parsers are not thread-safe and these options are cheap to build.
    return etree.XMLParser(
        resolve_entities=False,  # never expand internal or external entities (XXE, billion laughs)
        no_network=True,  # never fetch a DTD or entity over the network
        load_dtd=False,  # the PMC DOCTYPE names a remote DTD; we neither load nor validate it
        dtd_validation=False,
        huge_tree=True,  # big supplementary-heavy articles exceed libxml2's default limits
        remove_comments=False,  # the "does not allow downloading" comment marks restricted articles
        remove_blank_text=False,  # whitespace between inline elements is content ("The <i>TP53</i> gene")
        recover=False,  # truncated XML must fail loudly, not come back silently half-parsed
    )


def parse_xml(data: bytes) -> etree._Element:
    """Parse bytes into the root element, raising `JatsError` for empty, malformed or truncated input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"parse_xml expects bytes, got {type(data).__name__}")
    if not bytes(data).strip():
        raise JatsError("empty XML document")
    try:
        return _parse_in_own_thread(bytes(data))
    except etree.XMLSyntaxError as exc:
        raise JatsError(f"malformed or truncated XML: {exc}") from exc


def _parse_in_own_thread(data: bytes) -> etree._Element:
    roots: list[etree._Element] = []
    errors: list[BaseException] = []

    def parse() -> None:
        try:
            roots.append(etree.fromstring(data, _make_parser()))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=parse, name="pmcqa-parse-xml", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return roots[0]
