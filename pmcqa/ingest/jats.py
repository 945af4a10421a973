"""JATS (PMC / publisher / OAI-PMH) XML → `ingest.models.Paper`.

Small functions, one per XML structure, each returning plain data. Everything matches on *local* element
names, so one walker serves un-namespaced efetch JATS and OAI-PMH records in a default JATS namespace.

Parsing rules (also in the README):
- Blocks in document order: title, abstracts, body, back matter, floats-group, sub-articles.
- Section paths combine label and title ("2.1 Cell culture"); an untitled, unlabelled `<sec>` adds no path
  level (its content belongs to the parent's path), so paths never contain empty parts.
- A paragraph that only shows an object's DOI as a link (eLife: "DOI: http://dx.doi.org/…" after each abstract
  and figure caption) is left out, like the <object-id> it displays (`_is_doi_display`).
- Block elements (list, table-wrap, fig, disp-formula, boxed-text, ...) nested inside `<p>` are split out as
  their own blocks; the paragraph text around them becomes separate paragraph blocks, in order. So are those
  inside list items (the list goes on in a new block). A `<fn>` inside a paragraph becomes a block after it.
- Superscripts and subscripts (<sup>/<sub>, MathML msup/msub/msubsup, footnote-marker xrefs) never merge with
  the text around them: Unicode super/subscript characters when every character has one (10⁷, Ca²⁺, CO₂),
  else ^{...} / _{...} (p27^{Kip1}, V_{max}). A footnote's own label, when it is a mark (a, †, ¤b, 12; not a
  heading like "Competing interests:"), is written the same way before the note's text ("^{a} P < 0.05"),
  so a cell's "0.01^{a}" and its note match.
- Other MathML layouts keep their structure in the same convention (`_math_items`): limits under/over a base
  are its scripts (∑_{i=1}^{n}, lim_{x→0}; an accent reads as typed, x¯); mfrac is numerator/denominator,
  a part in parentheses unless it is one token element, scripted or not (a/b, n_{sp}/N, (a+b)/2,
  (dx)/(dt): decided from the elements, `_one_token`, not the text), the whole too where it would run into
  what it multiplies or is the base of ((1/2)x, (a/b)²); msqrt is √(x); mroot its index as a superscript,
  then the root (³√(x), ^{n}√(x)); mfenced its brackets and separators ((a,b)).
- MathML reads the same pretty-printed or compact: whitespace-only text between its elements is indentation,
  not content (`_indentation`), so <mi>d</mi> <mi>M</mi> reads "dM", and operators are spaced only as the
  formula itself spaces them (a+b; an <mspace> is a space). A token's own text (<mtext> for all </mtext>,
  <mi>, <mn>, <mo>, <ms>) is kept as written. A word (a multi-letter <mi>, <mtext> or <mo>: "and", "sin",
  "log") is spaced from a name or number it would run into and after a comma or semicolon (`_word_spaces`:
  "sin x", "5 mg", ", and", "log r_{t}").
- Tables: caption line, then rowspan/colspan (and OASIS namest/nameend/spanname/colname) expanded into a full
  grid, multi-row headers joined per column with " / ", one line per body row as `header: value; header:
  value`, then table-wrap-foot lines. Group rows, header rows inside the body and row labels written once
  are carried down to the rows they govern (`_BodyLines`); header rows right below the head, before any
  data row, are the rest of the head: their labels go under the head's, which are never dropped.
- Each bibr citation is kept with its offset in its block's text (`Block.ref_mentions`), so a split block's
  pieces cite only their own references.
- A subtitle joins its title ("Title: Subtitle").
- Display formulas: `tex-math` if present, else MathML text; inline formulas: MathML text if present (reads as
  prose), else tex. Never several alternatives glued together.
- Abstracts: kind "abstract", path ["Abstract"], ["Abstract", "<sec title>"] when structured,
  ["Abstract (<abstract-type>)"] for the others; trans-abstracts are kept too.
- Back matter (ack, notes, fn-group, app-group/app, glossary, back/sec): paragraph-like text becomes kind
  "back" under its title (or "Acknowledgements", "Notes", "Footnotes", ...); the ref-list becomes
  `Paper.references`, not text. floats-group content gets part "floats". The front matter's author notes
  (competing interests, contributions, correspondence; under "Author notes" and the note's kind) and funding
  statements ("Funding") are kind "back", part "front": PLOS keeps there what eLife puts in <back>.
- Funding awards (funding-group/award-group, where eLife names its funders) follow the statements under
  "Funding" as one block, a sentence a line: "Funded by F and G (awards A and B, "N") to R, with principal
  investigator P. D." ("Funded by award A ("N") to R." without a funding-source), with the award-name N
  quoted and the award-desc D as a sentence of its own after the award's. Names read given names first
  (surname first when name-style="eastern"); a string-name or plain-text recipient as written; ids
  (institution-id, contrib-id) and attributes (xlink:href, country) are left out. An award whose funders the
  statements all name already (case- and whitespace-insensitively, as whole phrases) is left out.
- An image-only table (no <table>) is a caption block with its table-wrap-foot lines.
- Sub-articles (decision letters, author responses, peer reviews) are kept apart: kind and part
  "sub-article", `sub_article` set, section_path starting with the sub-article title.
- Restricted (publisher comment) or body-less articles: `full_text=False`, title/abstract blocks kept.

This module also owns the article facts the fetcher classifies efetch replies by (`article_pmcids`,
`article_pmcid`, `article_doi`, `is_restricted`, `has_body`, `local`); the id rules themselves are
`pmcqa.core.ids`.

Hostile input stays bounded (time and memory linear in the input):
- An article nesting elements more than `MAX_NESTING_DEPTH` (128) levels deep is a `JatsError`; text is
  gathered with a loop, not recursion, so no nesting exhausts Python's stack anywhere.
- Table spans are clamped: rowspan to the rows left in its head or body, colspan to the table's declared
  columns or its widest row. A table whose spans would still expand it far past its cells, or whose headers
  repeated on every row would multiply its text more than eightfold, is linearized plainly: one line per
  row (head rows too), cell texts joined by "; ", no span expansion and no header pairing.
- Funders are looked up in the funding statement (to leave out awards it names) only while funders ×
  statement length stays under `_FUNDER_MATCH_WORK`; past it every award is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import accumulate

from lxml import etree

from pmcqa.core.ids import canonical_pmcid
from pmcqa.core.text import ends_with_abbreviation
from pmcqa.index.models import ChunkKind, ReferenceInfo
from pmcqa.ingest.models import Block, Paper, Part, Section
from pmcqa.ingest.xml import JatsError, parse_xml

__all__ = [
    "PMCID_ID_TYPES",
    "MAX_NESTING_DEPTH",
    "RESTRICTED_MARKER",
    "JatsError",
    "article_doi",
    "article_ids",
    "article_pmcid",
    "article_pmcids",
    "articleset_errors",
    "element_text",
    "find_articles",
    "formula_text",
    "has_body",
    "is_restricted",
    "linearize_table",
    "local",
    "normalize",
    "parse_article",
    "parse_jats",
    "parse_reference",
]

RESTRICTED_MARKER = "does not allow downloading"

# Collapse only ASCII whitespace: non-breaking and thin spaces are content and must survive verbatim.
_WS = re.compile(r"[ \t\n\r\f\v]+")
# What normalising changes: runs of two or more, and single whitespace other than a space (one pass that
# leaves the many single spaces alone is several times faster than replacing each by itself).
_WS_CHANGE = re.compile(r"[ \t\n\r\f\v]{2,}|[\t\n\r\f\v]")
_WS_RUN = re.compile(r"[ \t\n\r\f\v]{2,}")

# Elements whose text is never part of prose (identifiers, image descriptions, rights statements).
_NO_TEXT = frozenset(
    {"object-id", "alt-text", "long-desc", "permissions", "sec-meta", "graphic", "inline-graphic", "ref-list"}
)
# Elements that start/end a visual block: a space goes around them so "Title</title><p>Text" doesn't glue.
_SEPARATED = frozenset(
    {
        "p", "title", "label", "caption", "list", "list-item", "def-list", "def-item", "term", "def",
        "td", "th", "tr", "row", "entry", "break", "sec", "fn", "disp-quote", "table-wrap-foot", "attrib",
        "disp-formula", "boxed-text", "fig", "table-wrap", "statement", "speech", "speaker", "verse-line",
        "fn-group",
        "mspace", "mtr", "mtd",  # MathML: a space, a table row, a cell (or pseudo-code glues into one word)
    }
)  # fmt: skip
# Block-level elements that may sit inside <p>: they are split out into their own blocks.
_BLOCK_IN_P = frozenset(
    {
        "list", "def-list", "disp-formula", "disp-formula-group", "table-wrap", "table-wrap-group",
        "fig", "fig-group", "boxed-text", "supplementary-material", "disp-quote", "statement", "media",
        "chem-struct-wrap",
    }
)  # fmt: skip
# A child with one of these names makes an unknown element a container to walk rather than a paragraph.
_CONTAINER_HINT = _BLOCK_IN_P | {"p", "sec", "title", "caption"}
# Elements rendered by `formula_text` (one alternative), not gathered as plain text.
_FORMULA_NAMES = frozenset({"inline-formula", "alternatives", "math", "tex-math"})
_SKIP_IN_WALK = _NO_TEXT | {"title", "label", "subtitle", "alternatives"}
_ARTICLE_SET = "pmc-articleset"
# Deepest element nesting inside <article> that `parse_article` accepts. The walker recurses (sections in
# sections, boxes, lists, sub-articles) up to four Python frames per level; real articles nest about 30 deep
# (MathML included), and 128 levels stay well inside Python's recursion limit of 1000 frames.
MAX_NESTING_DEPTH = 128
_TOO_DEEP = "boolean(" + "/".join(["*"] * (MAX_NESTING_DEPTH + 1)) + ")"
_PUB_DATE_PREFERENCE = ("ppub", "epub", "collection", "epub-ppub", "pub", "pmc-release")


# ----------------------------------------------------------------------------------------------- helpers


def _is_element(node: object) -> bool:
    # Comments, processing instructions and unresolved entity references have non-string tags.
    return type(getattr(node, "tag", None)) is str


def _localname(tag: str) -> str:
    # Deliberately not cached: a cache keyed by tag grows with every distinct element name ever parsed
    # (crafted uploads held hundreds of MB), and rpartition costs about as much as a cache lookup.
    return tag.rpartition("}")[2]


def local(el: etree._Element) -> str:
    """Local name of an element ("" for comments/PIs/entities), so namespaced JATS matches too."""
    tag = el.tag
    return _localname(tag) if type(tag) is str else ""


@lru_cache(maxsize=512)
def _any_namespace(names: tuple[str, ...]) -> tuple[str, ...]:
    # The names are this module's literals (a small fixed set), never names read from a document.
    return tuple(f"{{*}}{name}" for name in names)


def _children(el: etree._Element, *names: str) -> Iterator[etree._Element]:
    """Child elements (of any namespace) with one of `names`, or all child elements; lxml filters in C."""
    if not names:
        return el.iterchildren(etree.Element)
    return el.iterchildren(*_any_namespace(names))


def _child(el: etree._Element | None, *names: str) -> etree._Element | None:
    return None if el is None else next(_children(el, *names), None)


def _path(el: etree._Element | None, *steps: str) -> etree._Element | None:
    for step in steps:
        el = _child(el, step)
    return el


def _descendants(el: etree._Element, *names: str) -> Iterator[etree._Element]:
    # "{*}name" matches the name in any namespace or none, and lxml filters in C.
    return el.iter(*_any_namespace(names))


def _attr(el: etree._Element, name: str) -> str | None:
    """Attribute by local name (xlink:href, ...), so namespace prefixes don't matter."""
    for key, value in el.attrib.items():
        if etree.QName(key).localname == name:
            return value
    return None


def normalize(text: str) -> str:
    """Collapse runs of ASCII whitespace to one space and strip the ends; nothing else changes."""
    if "  " not in text and text.isprintable():  # no tab, newline or double space: nothing to collapse
        return text.strip(" ")
    return _WS_CHANGE.sub(" ", text).strip(" ")


def _bibr_targets(xref: etree._Element) -> list[str]:
    # rid is IDREFS: "B1 B2" cites two references.
    return (xref.get("rid") or "").split() if xref.get("ref-type") == "bibr" else []


def _bibr_ids(xref: etree._Element, refs: list[str]) -> None:
    for rid in _bibr_targets(xref):
        if rid not in refs:
            refs.append(rid)


# --------------------------------------------------------------------------------------------- text

# Where a citation sits in gathered text: (position, reference id). While text is gathered the position is
# the index of the next piece in the output list; `_settle` turns it into an offset into the final text.
Mention = tuple[int, str]

# Superscripts and subscripts: written with Unicode superscript/subscript characters when every character
# has one (digits and + − = ( ), ASCII "-" read as a minus), else as ^{...} / _{...}. Either way a number and
# its exponent, an isotope, a charge or a footnote marker never merge with the text around them.
_SUP_CHARS = str.maketrans("0123456789+-−=()", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁻⁼⁽⁾")
_SUB_CHARS = str.maketrans("0123456789+-−=()", "₀₁₂₃₄₅₆₇₈₉₊₋₋₌₍₎")
_SUP_EXPRESSIBLE = frozenset("0123456789+-−=()⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾")
_SUB_EXPRESSIBLE = frozenset("0123456789+-−=()₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎")
_SCRIPTS = {"sup": "^", "sub": "_"}
# Footnote markers are typeset as superscripts, also as a bare <xref ref-type="table-fn">a</xref>.
_FOOTNOTE_XREFS = frozenset({"fn", "table-fn"})
# MathML scripts: (base, script, script, ...) children, each script with its marker. Limits under and over
# a base (∑, lim) are written as scripts too.
_MATH_SCRIPTS = {
    "msup": ("^",),
    "msub": ("_",),
    "msubsup": ("_", "^"),
    "munder": ("_",),
    "mover": ("^",),
    "munderover": ("_", "^"),
}
# MathML layouts read with structure: scripts and limits, fractions, roots, fences.
_MATH_LAYOUTS = frozenset(_MATH_SCRIPTS) | {"mfrac", "msqrt", "mroot", "mfenced"}
# MathML token elements: their text, whitespace included, is content. Whitespace between MathML elements
# is the source's indentation and is left out (`_indentation`).
_MATH_TOKENS = frozenset({"mi", "mn", "mo", "mtext", "ms"})
# MathML elements that only hold a row of others, adding no layout: a fraction part or a word's neighbour is
# looked for through them.
_MATH_WRAPPERS = frozenset({"mrow", "mstyle", "mpadded"})
# Tokens that read as one name, number or word: one of them, scripted or not, is a fraction part that needs no
# parentheses.
_NAME_TOKENS = frozenset({"mi", "mn", "mtext", "ms"})
# Tokens that can be a word ("sin", "and", "otherwise"; an operator "log") when longer than a letter.
_WORD_TOKENS = frozenset({"mi", "mtext", "mo"})
# Separators a word keeps a space after (", and"), as prose does.
_WORD_SEPARATORS = frozenset({",", ";"})
# What an accent attribute is called on munder/mover (an accent reads as typed: x¯, v→).
_ACCENT_ATTRIBUTES = {"munder": "accentunder", "mover": "accent"}
# Text that closes a phrase: the space put after a block-like element is left out before it ("note." not
# "note .").
_CLOSING_PUNCTUATION = frozenset(".,;:!?)]")
_ASCII_WS = " \t\n\r\f\v"


class _Script:
    """A superscript or subscript being gathered: `start` is the index of its placeholder piece, set when
    the script opens; when it closes its pieces are rewritten in place (never moved, so `Mention` positions
    stay valid)."""

    __slots__ = ("marker", "start")

    def __init__(self, marker: str, start: int | None = None) -> None:
        self.marker = marker
        self.start = start

    def open(self, out: list[str]) -> None:
        self.start = len(out)
        out.append("")  # placeholder for "^{" / "_{"

    def read(self, out: list[str]) -> None:
        """As a mark among MathML nodes: open on first sight, close on the second."""
        if self.start is None:
            self.open(out)
        else:
            self.close(out)

    def close(self, out: list[str]) -> None:
        start = self.start if self.start is not None else len(out)
        content = out[start + 1 :]
        joined = "".join(content)
        bare = "".join(joined.split())
        if not bare:  # an empty (or blank) script writes nothing
            for index in range(start + 1, len(out)):
                out[index] = ""
            return
        unicode_chars = _SUP_EXPRESSIBLE if self.marker == "^" else _SUB_EXPRESSIBLE
        if all(char in unicode_chars for char in bare):
            table = _SUP_CHARS if self.marker == "^" else _SUB_CHARS
            for index in range(start + 1, len(out)):
                out[index] = "".join(out[index].split()).translate(table)
            return
        _trim_ends(out, start + 1)  # the script's own leading and trailing whitespace
        out[start] = self.marker + "{"
        out.append("}")


def _trim_ends(out: list[str], first: int) -> None:
    """Trim the leading and trailing whitespace of the text out[first:], piece by piece."""
    last = len(out) - 1
    while first <= last and not out[first].strip(_ASCII_WS):
        out[first] = ""
        first += 1
    while last >= first and not out[last].strip(_ASCII_WS):
        out[last] = ""
        last -= 1
    if first <= last:
        out[first] = out[first].lstrip(_ASCII_WS)
        out[last] = out[last].rstrip(_ASCII_WS)


class _Group:
    """A part of a MathML fraction, root or fence being gathered, like `_Script`: opened (a placeholder piece
    at `start`), then closed, when its pieces are rewritten in place as `before` + `opening` + the part +
    `closing`, or as `before` + the part when not `bracketed` (a fraction part that is one token,
    `_one_token`)."""

    __slots__ = ("before", "bracketed", "closing", "opening", "start")

    def __init__(self, before: str, bracketed: bool, opening: str = "(", closing: str = ")") -> None:
        self.before, self.bracketed = before, bracketed
        self.opening, self.closing = opening, closing
        self.start: int | None = None

    def read(self, out: list[str]) -> None:
        """Open on first sight, close on the second."""
        if self.start is None:
            self.start = len(out)
            out.append("")  # placeholder for before + opening
            return
        _trim_ends(out, self.start + 1)
        if not self.bracketed:
            out[self.start] = self.before
            return
        out[self.start] = self.before + self.opening
        out.append(self.closing)


class _Literal:
    """Text between the parts of a MathML layout: a fence's separator ("," in "(a,b)")."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def read(self, out: list[str]) -> None:
        out.append(self.text)


# The marks `_gather` reads among nodes (`read`): scripts and groups are read twice, opened then closed.
_MARKS = frozenset({_Script, _Group, _Literal})
# Names `_gather` treats otherwise than plain inline markup; every other element is just its text.
_GATHER_SPECIAL = _NO_TEXT | _FORMULA_NAMES | _SEPARATED | set(_SCRIPTS) | _MATH_LAYOUTS | {"xref"}


# How an element's content ends: nothing more, a space (left out when its tail starts with closing
# punctuation), or a script to close.
_CLOSE_SPACE = "close-space"
_Closing = _Script | str | None


def _hidden_mentions(el: etree._Element, position: int, refs: list[Mention]) -> None:
    """Citations inside what is not read as text (a formula, alt text, a skipped label) still count: they
    are placed where that element is."""
    for xref in el.iter("{*}xref"):
        refs.extend((position, rid) for rid in _bibr_targets(xref))


def _bare_marker(xref: etree._Element) -> bool:
    """A footnote xref not already inside or around a <sup>: it is written as a superscript itself."""
    parent = xref.getparent()
    if parent is not None and local(parent) in _SCRIPTS:
        return False
    return not any(_is_element(child) and local(child) in _SCRIPTS for child in xref)


_Item = etree._Element | _Script | _Group | _Literal


def _math_items(el: etree._Element, name: str) -> list[_Item] | None:
    """A MathML layout as the items to read, each part between the opening and the closing of its mark:

    - msup/msub/msubsup, and munder/mover/munderover (limits), as scripts of their base ("σ²",
      "N_{inlier}", "∑_{i=1}^{n}"); an accent (`accent="true"`, or a lone <mo> over or under the base)
      reads as typed ("x¯");
    - mfrac as numerator/denominator, each in parentheses unless one token (`_one_token`: "a/b",
      "n_{sp}/N", "(a+b)/2", "(dx)/(dt)"), the whole in parentheses too where it would run into what is
      around it (`_fraction_stands_apart`);
    - msqrt as "√(x)"; mroot as its index written as a script, then the root ("³√(x)", "^{n}√(x)");
    - mfenced as its brackets around its children, with its separators between them ("(a,b)").

    None when the element does not have the children its name promises, or is a fraction without a bar
    (linethickness 0: a binomial coefficient), or an accent: then it is read as plain markup. Whitespace
    between MathML elements is not content, so no tail is read between the parts."""
    children = [child for child in el if _is_element(child)]
    if name == "mfenced":
        return _fenced_items(el, children)
    if name == "msqrt":
        root = _Group("√", bracketed=True)
        return [root, *children, root]
    if name == "mroot":
        if len(children) != 2:
            return None
        index, root = _Script("^"), _Group("√", bracketed=True)
        return [index, children[1], index, root, children[0], root]
    if name == "mfrac":
        if len(children) != 2 or (el.get("linethickness") or "").strip().startswith("0"):
            return None
        numerator = _Group("", bracketed=not _one_token(children[0]))
        denominator = _Group("/", bracketed=not _one_token(children[1]))
        parts: list[_Item] = [numerator, children[0], numerator, denominator, children[1], denominator]
        if not _fraction_stands_apart(el):
            whole = _Group("", bracketed=True)
            parts = [whole, *parts, whole]
        return parts
    markers = _MATH_SCRIPTS[name]
    if len(children) != len(markers) + 1 or (name in _ACCENT_ATTRIBUTES and _is_accent(el, children[1])):
        return None
    items: list[_Item] = [children[0]]
    for child, marker in zip(children[1:], markers, strict=True):
        script = _Script(marker)
        items.extend((script, child, script))  # the same script: opened, then closed
    return items


def _fenced_items(fence: etree._Element, children: list[etree._Element]) -> list[_Item]:
    """mfenced: its opening and closing (default "(" and ")") around its children, separated by its
    separators in turn (default ","; the last one repeats)."""
    group = _Group("", True, fence.get("open", "("), fence.get("close", ")"))
    separators = "".join((fence.get("separators", ",")).split())
    items: list[_Item] = [group]
    for index, child in enumerate(children):
        if index and separators:
            items.append(_Literal(separators[min(index - 1, len(separators) - 1)]))
        items.append(child)
    items.append(group)
    return items


def _one_token(part: etree._Element) -> bool:
    """A fraction part that reads as one unit without parentheses: one name, number or word (<mi>, <mn>,
    an <mtext> without spaces), scripted or not ("N_{inlier}", "λ₂²"), or nothing; through wrappers (<mrow>)
    holding nothing else. Decided from the elements, not the text: "dM" (two <mi>) is two tokens."""
    node = part
    while True:
        name = local(node)
        children = [child for child in node if _is_element(child)]
        if name in _MATH_WRAPPERS and len(children) <= 1:
            if not children:
                return True
            node = children[0]
        elif name in _MATH_SCRIPTS and len(children) == len(_MATH_SCRIPTS[name]) + 1:
            node = children[0]  # the base: scripts read apart from it either way ("x_{i}", "x²")
        else:
            text = element_text(node)
            return name in _NAME_TOKENS and bool(text) and not any(char.isspace() for char in text)


def _fraction_stands_apart(fraction: etree._Element) -> bool:
    """A fraction reads unambiguously without parentheses of its own: not the base of a script ("(a/b)²")
    and not next to what it multiplies or is the argument of ("(1/2)x", "2(a/b)", "log(a/b)"); as a part of
    a fraction or root it has that part's parentheses."""
    parent = fraction.getparent()
    parent_name = local(parent) if parent is not None else ""
    if parent_name in _MATH_SCRIPTS:
        return fraction is not next(_children(parent), None)
    if parent_name in ("mfrac", "mroot"):
        return True
    neighbours = (fraction.getprevious(), fraction.getnext())
    return all(node is None or not _is_element(node) or _separates(node) for node in neighbours)


def _separates(node: etree._Element) -> bool:
    """A neighbour that keeps a fraction apart: spacing, or an operator ("=", "+", ",") other than a
    division, a function name ("log") or an invisible product or application (U+2061-U+2064)."""
    name = local(node)
    if name == "mspace":
        return True
    if name not in ("mo", "mtext"):  # a name, number or layout: it multiplies the fraction
        return False
    text = element_text(node)
    if name == "mtext":
        return not text.strip()
    return text != "/" and not text.isalpha() and not ("\u2061" <= text <= "\u2064")


def _is_word(token: etree._Element) -> bool:
    """A multi-letter <mi>, <mtext> or <mo>: a word or function name ("and", "sin", "log"), not a one-letter
    variable or a symbol."""
    text = element_text(token)
    return len(text) > 1 and any(char.isalpha() for char in text)


def _invisible(node: etree._Element) -> bool:
    """An invisible operator (function application, invisible times, U+2061-U+2064): it separates nothing."""
    text = node.text or ""
    return local(node) == "mo" and len(text) == 1 and "\u2061" <= text <= "\u2064"


def _neighbour(token: etree._Element, before: bool) -> etree._Element | None:
    """The element read right before (or after) a token in its row, through wrappers (<mrow>) and invisible
    operators, and after it into a scripted name's base; None at the edge of a row or between the parts of a
    layout (a script's base, a fraction's numerator), which are set apart by the layout itself."""
    node = token
    while True:
        sibling = node.getprevious() if before else node.getnext()
        while sibling is not None and (not _is_element(sibling) or _invisible(sibling)):
            sibling = sibling.getprevious() if before else sibling.getnext()
        parent = node.getparent()
        if parent is None:
            return None
        if sibling is not None:
            break
        if local(parent) not in _MATH_WRAPPERS:
            return None
        node = parent
    if local(parent) in _MATH_LAYOUTS and local(parent) != "msqrt":
        return None
    while True:
        name = local(sibling)
        children = [child for child in sibling if _is_element(child) and not _invisible(child)]
        if name in _MATH_WRAPPERS and children:
            sibling = children[-1] if before else children[0]
        elif not before and name in _MATH_SCRIPTS and len(children) == len(_MATH_SCRIPTS[name]) + 1:
            sibling = children[0]  # a scripted name begins with its base ("log r_{t}")
        else:
            return sibling


def _word_spaces(token: etree._Element) -> tuple[str, str]:
    """The spaces around a MathML word (`_is_word`): one on a side where a letter or digit of it would
    run into one of a neighbouring token ("sin x", "x and y", "5 mg"), and one after a comma or semicolon
    (", and"). A side that ends in a space or punctuation of its own ("skew(", "<mtext> for all </mtext>")
    is set apart already."""
    if not _is_word(token):
        return "", ""
    text = "".join(token.itertext())
    spaces = []
    for before in (True, False):
        edge = text[:1] if before else text[-1:]
        neighbour = _neighbour(token, before) if edge.isalnum() else None
        touching = ""
        if neighbour is not None and local(neighbour) in _MATH_TOKENS:
            neighbour_text = "".join(neighbour.itertext())
            touching = neighbour_text[-1:] if before else neighbour_text[:1]
        spaced = touching.isalnum() or (before and touching in _WORD_SEPARATORS)
        spaces.append(" " if spaced else "")
    return spaces[0], spaces[1]


def _is_accent(el: etree._Element, script: etree._Element) -> bool:
    """An over/under script that decorates its base (a bar, hat, arrow, brace) rather than limiting it."""
    if (el.get(_ACCENT_ATTRIBUTES[local(el)]) or "").strip().lower() == "true":
        return True
    return local(script) == "mo" and not any(_is_element(child) for child in script)


def _indentation(text: str | None, container: etree._Element | None) -> bool:
    """Whitespace-only text directly inside a MathML element other than a token: pretty-printing between
    elements ("<mi>d</mi>\n  <mi>M</mi>" reads "dM"), not content. A token's own text is kept as written."""
    if not text or text.strip(_ASCII_WS):
        return False
    return container is None or local(container) not in _MATH_TOKENS


def _close(closing: _Closing, tail: str | None, out: list[str]) -> None:
    if closing is _CLOSE_SPACE:
        if not (tail and tail[0] in _CLOSING_PUNCTUATION):
            out.append(" ")
    elif closing is not None:
        closing.close(out)  # type: ignore[union-attr]


def _gather(
    nodes: Iterator[_Item],
    out: list[str],
    refs: list[Mention],
    in_formula: bool,
    tails: bool,
    skip: frozenset[str] = frozenset(),
    mathml: bool = False,
) -> None:
    """Append the text of `nodes` and everything inside them to `out`, in document order (their own tails
    too when `tails`); `skip` names nodes to leave out (but not their tails). In `mathml`, whitespace-only
    text between elements is left out (`_indentation`).

    A loop over a stack of child iterators, not recursion, so no nesting depth can exhaust Python's stack;
    an element without children is read on the spot. Inside a formula (`in_formula`), nested formula
    elements are read as plain markup rather than re-rendered, so formula nesting cannot recurse either.
    Each bibr citation is recorded in `refs` with the index of the piece its text starts at.
    """
    # Frames: (nodes to read, how the element they belong to closes, its tail, read the nodes' tails).
    frames: list[tuple[Iterator[_Item], _Closing, str | None, bool]] = [(nodes, None, None, tails)]
    while frames:
        children, _, _, with_tails = frames[-1]
        descended = False
        for child in children:
            if type(child) in _MARKS:  # math layout marks
                child.read(out)  # type: ignore[union-attr]
                continue
            tag = child.tag
            tail = child.tail if with_tails else None
            if mathml and _indentation(tail, child.getparent()):
                tail = None
            if type(tag) is not str:  # comments, PIs and unexpanded entities carry no prose
                if tail:
                    out.append(tail)
                continue
            name = tag.rpartition("}")[2]
            text = None if mathml and _indentation(child.text, child) else child.text
            if name not in _GATHER_SPECIAL and not (skip and name in skip):  # plain inline markup (<italic>)
                before, after = _word_spaces(child) if mathml and name in _WORD_TOKENS else ("", "")
                if before:
                    out.append(before)
                if text:
                    out.append(text)
                if len(child):
                    frames.append((iter(child), _CLOSE_SPACE if after else None, tail, True))
                    descended = True
                    break
                if after:
                    out.append(after)
                if tail:
                    out.append(tail)
                continue
            skipped = skip and len(frames) == 1 and name in skip
            if name in _NO_TEXT or skipped or (name == "p" and _is_doi_display(child)):
                if not in_formula:
                    _hidden_mentions(child, len(out), refs)
                if tail:
                    out.append(tail)
                continue
            if name in _FORMULA_NAMES and not in_formula:
                _hidden_mentions(child, len(out), refs)
                out.append(formula_text(child, prefer_tex=False))
                if tail:
                    out.append(tail)
                continue
            closing: _Closing = None
            if name in _SEPARATED:
                out.append(" ")
                closing = _CLOSE_SPACE
            elif name in _SCRIPTS:
                closing = _Script(_SCRIPTS[name])
                closing.open(out)
            elif name in _MATH_LAYOUTS:
                items = _math_items(child, name)
                if items is not None:
                    frames.append((iter(items), None, tail, False))
                    descended = True
                    break
            elif name == "xref":
                position = len(out)
                refs.extend((position, rid) for rid in _bibr_targets(child))
                if child.get("ref-type") in _FOOTNOTE_XREFS and _bare_marker(child):
                    closing = _Script("^")
                    closing.open(out)
            if text:
                out.append(text)
            if len(child):
                frames.append((iter(child), closing, tail, True))
                descended = True
                break
            _close(closing, tail, out)  # no children: done with it here
            if tail:
                out.append(tail)
        if not descended:
            _, closing, tail, _ = frames.pop()
            _close(closing, tail, out)
            if tail:
                out.append(tail)


def _gather_node(node: etree._Element, out: list[str], refs: list[Mention]) -> None:
    """Append the text of one child node (without its tail) to `out`."""
    _gather(iter((node,)), out, refs, in_formula=False, tails=False)


def _gather_into(
    el: etree._Element,
    out: list[str],
    refs: list[Mention],
    skip: frozenset[str] = frozenset(),
    in_formula: bool = False,
    mathml: bool = False,
) -> None:
    """Text and tails of every descendant of `el`, in order; `skip` names direct children to leave out;
    `mathml` leaves out the whitespace between MathML elements."""
    if el.text and _is_element(el) and not (mathml and _indentation(el.text, el)):
        out.append(el.text)
    _gather(iter(el), out, refs, in_formula, tails=True, skip=skip, mathml=mathml)


def _settle(out: list[str], refs: list[Mention]) -> tuple[str, list[Mention]]:
    """The normalised text of the gathered pieces, and each mention's offset in it (one pass)."""
    raw = "".join(out)
    text = normalize(raw)
    if not refs:
        return text, []
    piece_starts = list(accumulate(map(len, out), initial=0))
    leading = _WS.match(raw)
    text_start = removed = leading.end() if leading else 0  # a leading run goes entirely
    # Only runs of two or more remove characters (each keeps one space); a single one is replaced in place.
    runs = _WS_RUN.finditer(raw, text_start)
    run = next(runs, None)
    last = max(len(text) - 1, 0)
    settled: list[Mention] = []
    for index, rid in refs:  # in document order, so raw offsets never decrease
        offset = max(piece_starts[min(index, len(out))], text_start)
        while run is not None and run.end() <= offset:
            removed += run.end() - run.start() - 1
            run = next(runs, None)
        if run is not None and run.start() < offset:  # inside a run: where the run's space ends
            offset = run.start() + 1
        settled.append((min(max(offset - removed, 0), last), rid))  # always inside the text
    return text, settled


def _mention_ids(mentions: list[Mention], ids: list[str] | None = None) -> list[str]:
    ids = [] if ids is None else ids
    seen = set(ids)
    for _, rid in mentions:
        if rid not in seen:
            seen.add(rid)
            ids.append(rid)
    return ids


def element_text(el: etree._Element | None, skip: frozenset[str] = frozenset()) -> str:
    """Whitespace-normalised text of an element, inline markup spaced as written."""
    if el is None:
        return ""
    if not len(el) and type(el.tag) is str:  # no child nodes: its own text is all (most names, years, cells)
        return normalize(el.text or "")
    out: list[str] = []
    _gather_into(el, out, [], skip)
    return normalize("".join(out))


@dataclass
class _Text:
    """Text with the bibr references it cites: `mentions` at known offsets, `refs` all of them (also those
    inside formulas and skipped parts, whose place in the text is unknown), in order of first mention."""

    text: str = ""
    refs: list[str] = field(default_factory=list)
    mentions: list[Mention] = field(default_factory=list)


def _text_and_refs(el: etree._Element, skip: frozenset[str] = frozenset()) -> _Text:
    if not len(el) and type(el.tag) is str:  # no child nodes: no citations, its own text is all
        return _Text(normalize(el.text or ""))
    out: list[str] = []
    marks: list[Mention] = []
    _gather_into(el, out, marks, skip)
    text, mentions = _settle(out, marks)
    return _Text(text, _mention_ids(mentions), mentions)


def _joined(parts: list[_Text], separator: str) -> _Text:
    """Non-empty parts joined by `separator`, mentions shifted to their place in the joined text."""
    texts: list[str] = []
    joined = _Text()
    offset = 0
    for part in parts:
        for rid in part.refs:
            if rid not in joined.refs:
                joined.refs.append(rid)
        if not part.text:
            continue
        if texts:
            offset += len(separator)
        joined.mentions.extend((offset + at, rid) for at, rid in part.mentions)
        texts.append(part.text)
        offset += len(part.text)
    joined.text = separator.join(texts)
    return joined


# ------------------------------------------------------------------------------------------- formulas


def _clean_tex(tex: str) -> str:
    # PMC tex-math often wraps the formula in a whole LaTeX document; keep only what is between
    # \begin{document} and \end{document} (the \documentclass/\usepackage preamble is noise).
    begin, end = tex.find("\\begin{document}"), tex.rfind("\\end{document}")
    if begin != -1 and end > begin:
        tex = tex[begin + len("\\begin{document}") : end]
    return normalize(tex)


def _formula_markup_text(el: etree._Element, skip: frozenset[str], mathml: bool = False) -> str:
    """element_text of a formula's chosen rendering: formula elements nested in it are plain markup."""
    out: list[str] = []
    _gather_into(el, out, [], skip, in_formula=True, mathml=mathml)
    return normalize("".join(out))


def _mathml_text(math: etree._Element) -> str:
    # <annotation> holds yet another alternative (often TeX): leave it out.
    return _formula_markup_text(math, frozenset({"annotation", "annotation-xml"}), mathml=True)


def formula_text(el: etree._Element, prefer_tex: bool = True) -> str:
    """One rendering of a formula: tex-math or MathML text (per `prefer_tex`), else its plain text."""
    name = local(el)
    tex = el if name == "tex-math" else next(_descendants(el, "tex-math"), None)
    math = el if name == "math" else next(_descendants(el, "math"), None)
    tex_text = _clean_tex("".join(tex.itertext())) if tex is not None else ""
    math_text = _mathml_text(math) if math is not None else ""
    if prefer_tex and tex_text:
        return tex_text
    if math_text:
        return math_text
    if tex_text:
        return tex_text
    return _formula_markup_text(el, frozenset({"label"}))


# --------------------------------------------------------------------------------------------- tables

_CELL_NAMES = ("td", "th", "entry")
# Work allowed per source cell and row of a table (grid slots, header matrix, header pairing). The real
# tables of the shared corpus need at most 4; crafted spans (rowspan="200" colspan="200" on every cell) would
# need thousands, so past this the table is linearized plainly.
_WORK_PER_CELL = 16
_MIN_WORK = 256
# Linearized text allowed per unit of table size (cell text characters plus 9 per cell and row, the least
# markup a <td>/<tr> takes). Headers repeated on every row multiply the text, a long header over thousands of
# one-character rows quadratically so; real tables need at most 4 (corpus), past 8 the table goes plain.
_TEXT_PER_SIZE = 8
_MARKUP_PER_ELEMENT = 9
_DIGIT = re.compile(r"\d")


class _TableTooLarge(Exception):
    """Internal: expanding or pairing this table would cost more than its size allows."""


@dataclass(frozen=True)
class _Source:
    """A source cell as read: text (whitespace, non-breaking included, trimmed off its ends), the references
    it cites, whether it reads as a header (a <th>, or all its text bold), and for OASIS entries the column
    it names (colname/namest/spanname) and the columns it spans (namest..nameend), None when not given."""

    element: etree._Element
    text: str
    refs: tuple[str, ...]
    emphasised: bool
    column: int | None = None
    columns: int | None = None


@dataclass(frozen=True)
class _Cell:
    ident: int  # position of the source cell, so a spanned cell is recognised in every grid slot it fills
    text: str
    refs: tuple[str, ...] = ()
    emphasised: bool = False


def _span(cell: etree._Element, name: str, limit: int) -> int:
    """rowspan/colspan (OASIS morerows too) clamped to [1, limit]: a span never reaches past the table."""
    value = _integer(cell.get(name))
    morerows = _integer(cell.get("morerows"))
    if value is None and name == "rowspan" and morerows is not None and morerows >= 0:
        value = morerows + 1  # OASIS: morerows="1" spans two rows
    if value is None:
        return 1
    if value == 0 and name == "rowspan":  # HTML: rowspan="0" spans to the end of its head or body
        return limit
    return min(max(value, 1), limit)


def _declared_columns(table: etree._Element) -> int:
    """Columns the table declares: OASIS tgroup/@cols, else its XHTML <col>/<colgroup> spans (0 if none)."""
    declared = max((_integer(tgroup.get("cols")) or 0 for tgroup in _children(table, "tgroup")), default=0)
    columns = 0
    for child in _children(table, "col", "colgroup"):
        members = list(_children(child, "col")) if local(child) == "colgroup" else []
        spans = [member.get("span") for member in members] or [child.get("span")]
        columns += sum(max(_integer(span) or 1, 1) for span in spans)
    return max(declared, columns)


def _integer(value: str | None) -> int | None:
    """An attribute's integer value, None when absent or not an integer (" 2 " reads as 2)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


@dataclass
class _OasisColumns:
    """A tgroup's named columns (colspec colname -> 0-based column) and named spans (spanspec)."""

    names: dict[str, int] = field(default_factory=dict)
    spans: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    @classmethod
    def of(cls, tgroup: etree._Element | None) -> _OasisColumns:
        columns = cls()
        if tgroup is None:
            return columns
        position = 0
        for spec in _children(tgroup, "colspec"):
            number = _integer(spec.get("colnum"))
            position = number - 1 if number is not None and number >= 1 else position
            name = spec.get("colname")
            if name:
                columns.names.setdefault(name, position)
            position += 1
        for spec in _children(tgroup, "spanspec"):
            if spec.get("spanname"):
                columns.spans[spec.get("spanname") or ""] = (spec.get("namest"), spec.get("nameend"))
        return columns

    def place(self, entry: etree._Element) -> tuple[int | None, int | None]:
        """(first column, columns spanned) an entry names, None where it names none."""
        if not self.names:
            return None, None
        first, last = entry.get("namest"), entry.get("nameend")
        spanname = entry.get("spanname")
        if spanname and spanname in self.spans:
            first, last = self.spans[spanname]
        start = self.names.get(first or entry.get("colname") or "")
        if start is None:
            return None, None
        end = self.names.get(last or "")
        return start, (end - start + 1 if end is not None and end >= start else None)


def _all_bold(cell: etree._Element) -> bool:
    """All of the cell's text is inside <bold> children (a sub-header row's cells, typically)."""
    if (cell.text or "").strip():
        return False
    found = False
    for child in cell:
        if (child.tail or "").strip():
            return False
        if _is_element(child):
            if local(child) != "bold":
                return False
            found = True
    return found


def _read_cell(cell: etree._Element, oasis: _OasisColumns) -> _Source:
    gathered = _text_and_refs(cell)
    column, columns = oasis.place(cell) if local(cell) == "entry" else (None, None)
    return _Source(
        cell,
        gathered.text.strip(),  # trims non-breaking spaces too: a cell's edges are layout, not content
        tuple(gathered.refs),
        local(cell) == "th" or _all_bold(cell),
        column,
        columns,
    )


def _grid_rows(rows: list[list[_Source]], max_cols: int, max_slots: int) -> Iterator[list[_Cell | None]]:
    """Expand rowspan/colspan so every row has one slot per column (None where nothing is), row by row.

    Rowspans are clamped to the rows left, colspans to `max_cols`; an OASIS entry naming a column further
    right leaves the columns before it empty. A row longer than `max_slots` raises `_TableTooLarge` before
    it is built.
    """
    pending: dict[int, tuple[int, _Cell]] = {}  # column -> (rows still to fill, cell)
    serial = 0
    for index, cells in enumerate(rows):
        rows_left = len(rows) - index
        # Spans from rows above reach at most this column; cells placed in this row only add columns
        # to the left of `col`, so the bound holds for the whole row.
        last_pending = max(pending, default=-1)
        row: list[_Cell | None] = []
        col = 0
        next_cell = 0
        while next_cell < len(cells) or col <= last_pending:
            if col in pending:
                left, cell = pending.pop(col)
                if left > 1:
                    pending[col] = (left - 1, cell)
                row.append(cell)
                col += 1
                continue
            if next_cell == len(cells):
                row.append(None)
                col += 1
                continue
            source = cells[next_cell]
            if source.column is not None and col < min(source.column, max_cols - 1):
                if col >= max_slots:
                    raise _TableTooLarge
                row.append(None)  # an OASIS entry placed further right: this column is empty
                col += 1
                continue
            next_cell += 1
            serial += 1
            cell = _Cell(serial, source.text, source.refs, source.emphasised)
            rowspan = _span(source.element, "rowspan", rows_left)
            if source.columns is not None:
                colspan = min(max(source.columns, 1), max_cols)
            else:
                colspan = _span(source.element, "colspan", max_cols)
            if len(row) + colspan > max_slots:
                raise _TableTooLarge
            for k in range(colspan):
                row.append(cell)
                if rowspan > 1:
                    pending[col + k] = (rowspan - 1, cell)
            col += colspan
        yield row


def _all_th(tr: etree._Element) -> bool:
    cells = list(_children(tr, "td", "th"))
    return bool(cells) and all(local(c) == "th" for c in cells)


def _row_group(tr: etree._Element, table: etree._Element) -> str | None:
    """Which part of `table` a row is in, "head" or "body"; None for a row of a table nested in one of its
    cells (whose text is part of that cell's text already)."""
    in_head = False
    for ancestor in tr.iterancestors():
        if ancestor is table:
            return "head" if in_head else "body"
        name = local(ancestor)
        if name in ("table", "entrytbl"):
            return None
        in_head = in_head or name == "thead"
    return None


def _table_rows(table: etree._Element) -> tuple[list[etree._Element], list[etree._Element]]:
    """(header rows, body rows) of an XHTML or OASIS table."""
    head: list[etree._Element] = []
    body: list[etree._Element] = []
    for tr in _descendants(table, "tr", "row"):
        group = _row_group(tr, table)
        if group is not None:
            (head if group == "head" else body).append(tr)
    if not head:  # no <thead>: leading rows made only of <th> are the header
        while body and _all_th(body[0]):
            head.append(body.pop(0))
    return head, body


def _column_headers(head_grid: list[list[_Cell | None]], width: int) -> list[list[str]]:
    """Header parts per column, top to bottom (a colspan header counts once per column it covers)."""
    headers: list[list[str]] = []
    for col in range(width):
        parts: list[str] = []
        for row in head_grid:
            cell = row[col] if col < len(row) else None
            if cell is not None and cell.text and cell.text not in parts:
                parts.append(cell.text)
        headers.append(parts)
    return headers


def _cell_header(headers: list[list[str]], columns: list[int]) -> str:
    # A cell spanning several columns gets the header parts they share ("Outcome" over "Dead" and
    # "Alive"); a full-width group row ("Women") shares none and stands alone.
    parts = [headers[c] if c < len(headers) else [] for c in columns]
    common = [part for part in parts[0] if all(part in other for other in parts[1:])]
    return " / ".join(common)


def _row_cells(row: list[_Cell | None]) -> dict[int, tuple[_Cell, list[int]]]:
    """The row's cells with text, left to right, each with the columns it fills in this row."""
    cells: dict[int, tuple[_Cell, list[int]]] = {}
    for col, cell in enumerate(row):
        if cell is not None and cell.text:
            if cell.ident in cells:
                cells[cell.ident][1].append(col)
            else:
                cells[cell.ident] = (cell, [col])
    return cells


_RowCells = dict[int, tuple[_Cell, list[int]]]


def _row_line(row: list[_Cell | None], headers: list[list[str]], cells: _RowCells | None = None) -> str:
    parts: list[str] = []
    for cell, cols in (cells or _row_cells(row)).values():  # dicts keep insertion order: left to right
        text, header = cell.text, _cell_header(headers, cols)
        parts.append(f"{header}: {text}" if header and header != text else text)
    return "; ".join(parts)


def _plain_lines(rows: list[list[_Source]]) -> list[tuple[str, list[str]]]:
    """The fallback: one line per row, its cells' text joined by "; ", no span expansion, no headers."""
    lines: list[tuple[str, list[str]]] = []
    for row in rows:
        line = "; ".join(cell.text for cell in row if cell.text)
        if line:
            lines.append((line, _unique_refs(cell.refs for cell in row)))
    return lines


def _unique_refs(groups: Iterable[Iterable[str]]) -> list[str]:
    return list(dict.fromkeys(rid for group in groups for rid in group))


class _BodyLines:
    """Body rows → lines, carrying down what governs them.

    - A row whose one cell spans two or more columns and the whole row is a group ("Women"): the lines
      below start with it ("Women > ...") until the next such row or a blank row.
    - A row with text only in its first column ("Sex"), or whose cells are all <th> or all bold (no digits
      outside the first column: a bold "Total" row with numbers is data), is a header row inside the body:
      its texts head their columns for the rows below ("Sex: Female; n: 1,891"), in place of the table
      head's, until the next such row, a group row or a blank row. Consecutive header rows stack (" / ").
    - Except header rows right below the table head (above the first data row) that label more than the
      first column: they are the rest of the head, typeset in the body, so their labels go under the head's,
      for every row of the table ("GLVs / (Z)-Hexen-3-ol / Day: 0.99%"): the real head is never dropped.
      (Later ones start a new panel of the table, with column headings of its own.)
    - An empty first cell in a data row repeats the first cell of the data row above ("Oral health status"
      written once for its five categories).
    Group and header rows that govern no data row are kept as lines of their own, as any row would be.
    """

    def __init__(self, headers: list[list[str]], columns: int) -> None:
        self.headers = headers
        self.columns = columns
        self.lines: list[tuple[int, str, list[str]]] = []  # (row index, line, refs); sorted at the end
        self.groups: list[_Cell] = []
        self.body_head: list[list[_Cell | None]] = []
        self.effective = headers
        self.unused: list[tuple[int, list[_Cell | None]]] = []
        self.stub: _Cell | None = None
        self.last_kind = ""
        # Below the table head, before any data row: header rows here may be the rest of the head.
        self.under_head = any(headers)
        self.work = 0  # grid slots and header parts handled: the caller bounds it by the table's size
        self.text_size = 0  # characters of the lines so far: bounded likewise

    def add(self, index: int, row: list[_Cell | None]) -> None:
        """Take the next grid row."""
        self.work += len(row)
        cells = _row_cells(row)
        if not cells:  # a blank row ends the groups above it
            self._flush_unused()
            self.groups, self.body_head, self.effective, self.stub = [], [], self.headers, None
            self.last_kind = "blank"
            return
        if len(cells) == 1 and len(row) >= 2:
            cell, cols = next(iter(cells.values()))
            if len(cols) == len(row):  # one cell spanning the whole row: a group
                if self.last_kind != "group":
                    self._flush_unused()
                    self.groups, self.body_head, self.effective, self.stub = [], [], self.headers, None
                self.groups.append(cell)
                self.unused.append((index, row))
                self.last_kind = "group"
                return
        if self._is_header_row(cells):
            if self.last_kind != "header":
                self._flush_unused(keep_groups=True)
                self.body_head = []
            self.body_head.append(row if len(cells) > 1 else row[:1])  # a first-column label heads column 0
            self.effective = self._effective_headers()
            self.work += len(row) * len(self.body_head) + len(self.effective)
            self.stub = None
            self.unused.append((index, row))
            self.last_kind = "header"
            return
        if self._continues_head():  # part of the head: it heads every row below, across groups and blanks
            self.headers = self.effective
        self.under_head = False
        first = row[0] if row else None
        if self.stub is not None and (first is None or not first.text) and len(row) >= 2:
            row = [self.stub, *row[1:]]  # the row's label is the one written above it
            cells = _row_cells(row)
        elif first is not None and first.text:
            self.stub = first
        line = _row_line(row, self.effective, cells)
        refs = _unique_refs(cell.refs for cell, _ in cells.values())
        if self.groups:
            line = " > ".join(group.text for group in self.groups) + " > " + line
            refs = _unique_refs([[r for group in self.groups for r in group.refs], refs])
        self._line(index, line, refs)
        self.work += sum(map(len, self.effective))  # the header parts a row's cells may compare
        self.unused.clear()  # every group and header row above now governs a line
        self.last_kind = "data"

    def _line(self, index: int, line: str, refs: list[str]) -> None:
        self.lines.append((index, line, refs))
        self.text_size += len(line)

    def _is_header_row(self, cells: dict[int, tuple[_Cell, list[int]]]) -> bool:
        if self.columns < 2:
            return False
        if len(cells) == 1:
            return 0 in next(iter(cells.values()))[1]
        if not all(cell.emphasised for cell, _ in cells.values()):
            return False
        return not any(_DIGIT.search(cell.text) for cell, cols in cells.values() if 0 not in cols)

    def _continues_head(self) -> bool:
        return self.under_head and any(len(row) > 1 for row in self.body_head)

    def _effective_headers(self) -> list[list[str]]:
        """The column headers for the rows below the header rows in `body_head`: under the head's when they
        continue the head, else in place of the head's in the columns they label."""
        width = max(len(self.headers), max(map(len, self.body_head)))
        body = _column_headers(self.body_head, width)
        continues_head = self._continues_head()
        effective: list[list[str]] = []
        for col, labels in enumerate(body):
            head = self.headers[col] if col < len(self.headers) else []
            if continues_head:
                effective.append(head + [label for label in labels if label not in head])
            else:
                effective.append(labels or head)
        return effective

    def _flush_unused(self, keep_groups: bool = False) -> None:
        """Group/header rows that governed no data row become lines of their own (a kept group stays
        pending: it may still govern rows below the next header row)."""
        kept: list[tuple[int, list[_Cell | None]]] = []
        for index, row in self.unused:
            if keep_groups and any(row[0] is group for group in self.groups):
                kept.append((index, row))
                continue
            line = _row_line(row, self.headers)
            if line:
                self._line(index, line, _unique_refs(c.refs for c, _ in _row_cells(row).values()))
        self.unused = kept

    def finish(self) -> list[tuple[str, list[str]]]:
        self.groups = []
        self._flush_unused()
        return [(line, refs) for _, line, refs in sorted(self.lines, key=lambda item: item[0]) if line]


def _table_lines(table: etree._Element) -> list[tuple[str, list[str]]]:
    """`linearize_table`'s lines, each with the references its cells cite."""
    head_rows, body_rows = _table_rows(table)
    oasis: dict[etree._Element | None, _OasisColumns] = {}

    def read_row(tr: etree._Element) -> list[_Source]:
        section = tr.getparent()
        tgroup = section.getparent() if section is not None else None
        if tgroup is None or local(tgroup) != "tgroup":
            tgroup = None
        if tgroup not in oasis:
            oasis[tgroup] = _OasisColumns.of(tgroup)
        return [_read_cell(cell, oasis[tgroup]) for cell in _children(tr, *_CELL_NAMES)]

    head_cells = [read_row(tr) for tr in head_rows]
    body_cells = [read_row(tr) for tr in body_rows]
    n_cells = sum(map(len, head_cells)) + sum(map(len, body_cells))
    budget = _WORK_PER_CELL * (n_cells + len(head_rows) + len(body_rows)) + _MIN_WORK
    text_chars = sum(len(cell.text) for row in head_cells + body_cells for cell in row)
    size = text_chars + _MARKUP_PER_ELEMENT * (n_cells + len(head_rows) + len(body_rows))
    text_budget = _TEXT_PER_SIZE * size
    widest = max(map(len, head_cells + body_cells), default=0)
    max_cols = max(_declared_columns(table), widest, 1)
    try:
        head_grid = list(_grid_rows(head_cells, max_cols, budget))
        work = sum(map(len, head_grid))
        width = max(map(len, head_grid), default=0)
        if work > budget or width * len(head_grid) > budget:
            raise _TableTooLarge
        headers = _column_headers(head_grid, width)
        body = _BodyLines(headers, max_cols)
        for index, row in enumerate(_grid_rows(body_cells, max_cols, budget)):
            body.add(index, row)
            if work + body.work > budget or body.text_size > text_budget:
                raise _TableTooLarge
        lines = body.finish()
        if body.text_size > text_budget:
            raise _TableTooLarge
    except _TableTooLarge:
        return _plain_lines(head_cells + body_cells)
    if not body_rows and head_grid:  # a header-only table: keep its text
        line = "; ".join(" / ".join(h) for h in headers if h)
        return [(line, _unique_refs(c.refs for row in head_cells for c in row))] if line else []
    return lines


def linearize_table(table: etree._Element) -> list[str]:
    """Lines for one <table>: one per body row, `header: value; ...`, headers joined per column.

    Group rows, header rows inside the body and row labels written once are carried down to the rows they
    govern (`_BodyLines`). Spans are clamped to the table (rowspan to the rows left in its head or body,
    colspan to the declared or widest row's cell count; OASIS namest/nameend/spanname spans and colname
    positions are expanded), and the work is bounded by the table's size: a table whose spans would expand
    it far past its cells, or whose repeated headers would multiply its text more than eightfold, is
    linearized plainly (one line per row, head rows included, cell texts joined by "; "), so time and text
    stay linear in the input.
    """
    return [line for line, _ in _table_lines(table)]


# ---------------------------------------------------------------------------------------- references


_NAME_ELEMENTS = ("name", "string-name", "collab", "name-alternatives")
_CITATION_ELEMENTS = ("element-citation", "mixed-citation", "nlm-citation", "citation")
_CITATION_TITLES = ("article-title", "chapter-title", "data-title")


def _surnames(names: Iterable[etree._Element]) -> list[str]:
    """Surnames of name-like elements (a collab's whole text; a name without <surname> its whole text)."""
    found: list[str] = []
    for el in names:
        if local(el) == "name-alternatives":
            preferred = _child(el, "name", "string-name")
            el = preferred if preferred is not None else el
        if local(el) == "collab":
            text = element_text(el)
        else:
            text = element_text(_child(el, "surname")) or element_text(el)
        if text:
            found.append(text)
    return found


def _citation_authors(groups: list[etree._Element], names: list[etree._Element]) -> list[str]:
    """The author group's surnames (else the first group's); old NLM citations put <name> directly in the
    citation (`names`)."""
    authors = [g for g in groups if g.get("person-group-type") in (None, "author")]
    if authors or groups:
        return [name for g in (authors or groups[:1]) for name in _surnames(_children(g, *_NAME_ELEMENTS))]
    return _surnames(names)


def parse_reference(ref: etree._Element, index: int = 0) -> ReferenceInfo:
    """One <ref> → ReferenceInfo (first citation of a citation-alternatives). One pass over the children of
    the ref and of its citation: a paper has hundreds of references."""
    citation = label = alternatives = None
    for child in _children(ref):
        name = local(child)
        if name in _CITATION_ELEMENTS:
            citation = citation if citation is not None else child
        elif name == "label":
            label = label if label is not None else child
        elif name == "citation-alternatives":
            alternatives = alternatives if alternatives is not None else child
    if citation is None:
        citation = _child(alternatives, "element-citation", "mixed-citation")
    ref_id = ref.get("id") or f"ref-{index + 1}"
    label_text = element_text(label) or None
    if citation is None:
        return ReferenceInfo(id=ref_id, label=label_text)
    groups: list[etree._Element] = []
    names: list[etree._Element] = []
    fields: dict[str, etree._Element] = {}  # the first year, title and source
    pub_ids: dict[str | None, str] = {}
    for child in _children(citation):
        name = local(child)
        if name == "person-group":
            groups.append(child)
        elif name in _NAME_ELEMENTS:
            names.append(child)
        elif name == "pub-id":
            pub_ids[child.get("pub-id-type")] = element_text(child)
        elif name in _CITATION_TITLES:
            fields.setdefault("title", child)
        elif name in ("year", "source"):
            fields.setdefault(name, child)
    return ReferenceInfo(
        id=ref_id,
        label=label_text,
        authors=_citation_authors(groups, names),
        year=element_text(fields.get("year")) or None,
        title=element_text(fields.get("title")) or None,
        source=element_text(fields.get("source")) or None,
        doi=pub_ids.get("doi") or None,
        pmid=pub_ids.get("pmid") or None,
    )


def _references(article: etree._Element) -> list[ReferenceInfo]:
    back = _child(article, "back")
    if back is None:
        return []
    refs = [r for r in _descendants(back, "ref") if local(r.getparent()) == "ref-list"]
    return [parse_reference(r, i) for i, r in enumerate(refs)]


# ------------------------------------------------------------------------------------------ walking


@dataclass(frozen=True)
class _Ctx:
    """Where the walker is: section path, part, and which kind paragraph-like text gets."""

    path: tuple[str, ...] = ()
    part: Part = "body"
    para_kind: ChunkKind = "paragraph"
    force_kind: ChunkKind | None = None  # abstracts and sub-articles: every block gets this kind
    sub_article: str | None = None
    sections: list[Section] | None = field(default=None, compare=False)  # sink for the body section tree

    def deeper(self, heading: str) -> _Ctx:
        return replace(self, path=(*self.path, heading)) if heading else self


@dataclass
class _Out:
    blocks: list[Block] = field(default_factory=list)

    def emit(
        self,
        ctx: _Ctx,
        kind: ChunkKind,
        text: str | _Text,
        label: str | None = None,
        xml_id: str | None = None,
    ) -> None:
        """A block of `text` (with the references it cites, when a `_Text`); empty text emits nothing."""
        cited = text if isinstance(text, _Text) else _Text(text)
        if not cited.text:
            return  # empty blocks would only produce empty chunks
        self.blocks.append(
            Block(
                kind=ctx.force_kind or kind,
                text=cited.text,
                section_path=list(ctx.path),
                part=ctx.part,
                ref_ids=list(cited.refs),
                ref_mentions=list(cited.mentions),
                label=label or None,
                xml_id=xml_id,
                sub_article=ctx.sub_article,
            )
        )

    def prefix(self, index: int, text: str) -> None:
        """Put `text` and a space before the text of block `index`, its citations' offsets moved along."""
        block = self.blocks[index]
        shift = len(text) + 1
        moved = [(at + shift, rid) for at, rid in block.ref_mentions]
        self.blocks[index] = block.model_copy(update={"text": f"{text} {block.text}", "ref_mentions": moved})


def with_subtitle(title: str, subtitle: str) -> str:
    """A title and its subtitle as one heading: "Title: Subtitle" ("Title? Subtitle" after punctuation)."""
    if not subtitle:
        return title
    if not title:
        return subtitle
    return f"{title} {subtitle}" if title[-1] in ".:;?!" else f"{title}: {subtitle}"


# What a label is typeset with after it ("Figure 11.", "Table 2:", "Box 1."), not part of its name.
_LABEL_PUNCTUATION = re.compile(r"[\s.:]+$")


def _untypeset(title: str) -> str:
    """A heading without the period or colon typeset after it (PLOS's run-in "PCR.", "Background:"); an
    abbreviation keeps its period ("Assay of predation by Geocoris spp.")."""
    if title.endswith(":") or (title.endswith(".") and not ends_with_abbreviation(title)):
        return title[:-1].rstrip()
    return title


def heading(el: etree._Element) -> tuple[str, str]:
    """(label, title) of a sec/app/boxed-text/..., title falling back to caption/title; a subtitle joins
    the title. Neither keeps the punctuation typeset after it ("Box 1." "Statistical analysis." read "Box 1"
    "Statistical analysis", as float labels do), so section paths name sections as the paper cites them."""
    label = _LABEL_PUNCTUATION.sub("", element_text(_child(el, "label")))
    title = element_text(_child(el, "title"))
    if not title:
        title = element_text(_path(el, "caption", "title"))
    return label, _untypeset(with_subtitle(title, element_text(_child(el, "subtitle"))))


def _combined(label: str, title: str) -> str:
    return " ".join(part for part in (label, title) if part)


def _is_walk_block(el: etree._Element) -> bool:
    name = local(el)
    return (
        name in _SKIP_IN_WALK
        or name in _HANDLERS
        or name in _BLOCK_IN_P
        or any(local(c) in _CONTAINER_HINT for c in _children(el))
    )


def _walk(container: etree._Element, ctx: _Ctx, out: _Out) -> None:
    """Walk a container (body, sec, abstract, back, ...): block children go to their handlers; loose text
    and inline children (rare, e.g. `<abstract>Abstract text.</abstract>`) become paragraph blocks."""
    _walk_mixed(container, ctx, out, _is_walk_block)


def _walk_element(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
    name = local(el)
    if name in _SKIP_IN_WALK:
        return
    handler = _HANDLERS.get(name)
    if handler is not None:
        handler(el, ctx, out)
    elif any(local(c) in _CONTAINER_HINT for c in _children(el)):
        _walk(el, ctx, out)
    else:
        out.emit(ctx, ctx.para_kind, _text_and_refs(el), xml_id=el.get("id"))


def _walk_sec(sec: etree._Element, ctx: _Ctx, out: _Out) -> None:
    label, title = heading(sec)
    inner = ctx.deeper(_combined(label, title))  # untitled and unlabelled: no new path level
    if ctx.sections is not None:
        node = Section(
            label=label or None, title=title or None, sec_type=sec.get("sec-type"), path=list(inner.path)
        )
        ctx.sections.append(node)
        inner = replace(inner, sections=node.children)
    _walk(sec, inner, out)


def _is_doi_display(p: etree._Element) -> bool:
    """eLife's "<p><bold>DOI:</bold> <ext-link ...>http://dx.doi.org/…</ext-link></p>" after an abstract or
    a figure caption: the object's DOI shown as a link (its <object-id> is left out already), no prose."""
    if (p.text or "").strip() or len(p) != 2:
        return False
    bold, link = p
    return (
        local(bold) == "bold"
        and (bold.text or "").strip() == "DOI:"
        and not (bold.tail or "").strip()
        and local(link) == "ext-link"
        and link.get("ext-link-type") == "doi"
        and not (link.tail or "").strip()
    )


def _walk_p(p: etree._Element, ctx: _Ctx, out: _Out) -> None:
    """A paragraph; block elements nested in it become their own blocks between the text segments. A DOI
    shown as a link (`_is_doi_display`) is left out."""
    if _is_doi_display(p):
        return
    if next(_children(p, *_BLOCK_IN_P, "fn"), None) is None:  # the usual one: text and inline markup only
        pieces: list[str] = []
        marks: list[Mention] = []
        _gather_into(p, pieces, marks)
        text, mentions = _settle(pieces, marks)
        out.emit(ctx, ctx.para_kind, _Text(text, _mention_ids(mentions), mentions), xml_id=p.get("id"))
        return
    _walk_mixed(p, ctx, out, lambda child: local(child) in _BLOCK_IN_P)


def _walk_mixed(el: etree._Element, ctx: _Ctx, out: _Out, is_block: Callable[[etree._Element], bool]) -> None:
    """Emit runs of text + inline children as paragraph blocks, and block children through their handlers,
    in document order. A footnote (<fn>) inside the text is taken out of it and becomes a block of its own
    after the paragraph, so it neither interrupts the sentence around it nor leaves a gap there."""
    pieces: list[str] = [el.text or ""]
    marks: list[Mention] = []
    footnotes: list[etree._Element] = []
    xml_id = el.get("id") if local(el) == "p" else None

    def flush() -> None:
        text, mentions = _settle(pieces, marks)
        out.emit(ctx, ctx.para_kind, _Text(text, _mention_ids(mentions), mentions), xml_id=xml_id)
        pieces.clear()
        marks.clear()

    for child in el:
        if _is_element(child) and is_block(child):
            flush()
            _walk_element(child, ctx, out)
        elif _is_element(child) and local(child) == "fn":
            footnotes.append(child)
        else:
            _gather_node(child, pieces, marks)
        if child.tail:
            pieces.append(child.tail)
    flush()
    for footnote in footnotes:
        out.emit(ctx, ctx.para_kind, _footnote_text(footnote), xml_id=footnote.get("id"))


class _ListBlocks:
    """A list as blocks: one line per item (label first, nested lists after their item, def-list items as
    `term: definition`). A table, figure, formula or box inside an item ends the list block so far and
    becomes its own block; the list goes on in a new block after it."""

    def __init__(self, ctx: _Ctx, out: _Out, xml_id: str | None) -> None:
        self.ctx, self.out, self.xml_id = ctx, out, xml_id
        self.lines: list[_Text] = []
        self.pieces: list[str] = []
        self.marks: list[Mention] = []

    def end_line(self) -> None:
        text, mentions = _settle(self.pieces, self.marks)
        if text:
            self.lines.append(_Text(text, _mention_ids(mentions), mentions))
        self.pieces, self.marks = [], []

    def flush(self) -> None:
        self.end_line()
        joined = _joined(self.lines, "\n")
        if joined.text:
            self.out.emit(self.ctx, "list", joined, xml_id=self.xml_id)
            self.xml_id = None  # the list's id names its first block
        self.lines = []

    def add_list(self, lst: etree._Element) -> None:
        title = _text_and_refs(_child(lst, "title")) if _child(lst, "title") is not None else _Text()
        if title.text:
            self.lines.append(title)
        for item in _children(lst, "list-item", "def-item"):
            self.add_item(item)

    def add_item(self, item: etree._Element) -> None:
        nested: list[etree._Element] = []
        self.pieces.append(item.text or "")
        for child in item:
            name = local(child) if _is_element(child) else ""
            if name in ("list", "def-list"):
                nested.append(child)
            elif name == "def":
                while self.pieces and not self.pieces[-1].strip(_ASCII_WS):
                    self.pieces.pop()  # "term: definition", never "term : definition"
                if self.pieces:
                    self.pieces[-1] = self.pieces[-1].rstrip(_ASCII_WS)
                self.pieces.append(":")
                self.add_inline(child)
            elif name == "p":  # read as <p> reads inline, but a block inside it becomes its own block
                self.pieces.append(" ")
                self.pieces.append(child.text or "")
                for grandchild in child:
                    self.add_inline(grandchild)
                    if grandchild.tail:
                        self.pieces.append(grandchild.tail)
                if (child.tail or "")[:1] not in _CLOSING_PUNCTUATION:
                    self.pieces.append(" ")
            else:
                self.add_inline(child)
            if child.tail:
                self.pieces.append(child.tail)
        self.end_line()
        for lst in nested:
            self.add_list(lst)

    def add_inline(self, node: etree._Element) -> None:
        if _is_element(node) and local(node) in _BLOCK_IN_P and local(node) not in ("list", "def-list"):
            self.flush()
            _walk_element(node, self.ctx, self.out)
            return
        _gather_node(node, self.pieces, self.marks)


def _walk_list(lst: etree._Element, ctx: _Ctx, out: _Out) -> None:
    blocks = _ListBlocks(ctx, out, lst.get("id"))
    blocks.add_list(lst)
    blocks.flush()


def _float_label(el: etree._Element) -> tuple[str, str]:
    """(label as written, label as named) of a float: the name without the trailing dot or colon eLife and
    others typeset after it, so a citation's label reads "Figure 11" as the paper cites it ("(1)" stays)."""
    written = element_text(_child(el, "label"))
    return written, _LABEL_PUNCTUATION.sub("", written)


def _caption_text(el: etree._Element) -> tuple[str, _Text]:
    """(label, "label caption-text attribution" with its references) of a fig/table-wrap/media/...: the
    label named (`_float_label`), the text as written."""
    written, label = _float_label(el)
    parts = [_Text(written)] + [_text_and_refs(part) for part in _children(el, "caption", "attrib")]
    return label, _joined(parts, " ")


def _walk_caption(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
    """A figure-like float: its caption block, then anything else it holds (e.g. a <p> with a
    supplementary-material in eLife figures) as blocks of their own."""
    label, caption = _caption_text(el)
    out.emit(ctx, "caption", caption, label=label, xml_id=el.get("id"))
    for child in _children(el):
        if local(child) not in ("caption", "attrib"):
            _walk_element(child, ctx, out)


# What an author note says, by its `fn-type`: the heading its block is filed under.
_AUTHOR_NOTE_HEADINGS = {
    "conflict": "Competing interests",
    "coi-statement": "Competing interests",
    "con": "Author contributions",
    "financial-disclosure": "Funding",
    "supported-by": "Funding",
    "present-address": "Current address",
    "current-aff": "Current address",
    "equal": "Equal contribution",
    "deceased": "Deceased",
}


def _walk_fn(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
    """A footnote walked as a block (fn-group, author notes): its kind (`fn-type`: competing interests,
    contributions, ...) names it, so "Competing interests" is not lost behind "Footnotes"; its marker label
    starts its first block (`_footnote_text`)."""
    first = len(out.blocks)
    heading = _AUTHOR_NOTE_HEADINGS.get(el.get("fn-type") or "", "")
    if ctx.path and ctx.path[-1].casefold() == heading.casefold():
        heading = ""  # its group's title says it already (eLife's "Competing interests" fn-group)
    _walk(el, ctx.deeper(heading), out)
    label = _marker_label(el)
    if label is not None and len(out.blocks) > first:
        out.prefix(first, _marker_text(label))


# The longest mark a footnote label is read as a marker of: "a", "†", "¤b", "12", "**" (comma-separated
# marks too: "a,b"). A longer label is a heading ("Competing interests:"), not a marker.
_MAX_MARK = 3


def _marker_label(note: etree._Element) -> etree._Element | None:
    """The note's <label> when it is the note's marker (short marks, `_MAX_MARK`), else None."""
    label = _child(note, "label")
    if label is None:
        return None
    marks = "".join(label.itertext()).split()
    return label if len(marks) == 1 and all(len(mark) <= _MAX_MARK for mark in marks[0].split(",")) else None


def _marker_text(label: etree._Element) -> str:
    """A marker label written as the markers that point at it are in the text: a superscript ("^{a}",
    "¹", "^{†}"), or as it is when it has its own <sup>."""
    if next(_descendants(label, *_SCRIPTS), None) is not None:
        return element_text(label)
    out: list[str] = []
    script = _Script("^")
    _gather(iter((script, label, script)), out, [], in_formula=False, tails=False)
    return normalize("".join(out))


def _footnote_text(note: etree._Element) -> _Text:
    """A footnote read as one text: its marker label first, written as the markers pointing at it are, so a
    reader can match a cell's "0.01^{a}" with "^{a} P < 0.05" (the label read as plain "a" before)."""
    label = _marker_label(note)
    if label is None:
        return _text_and_refs(note)
    return _joined([_Text(_marker_text(label)), _text_and_refs(note, skip=frozenset({"label"}))], " ")


def _walk_corresp(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
    out.emit(ctx.deeper("Correspondence"), ctx.para_kind, _text_and_refs(el), xml_id=el.get("id"))


def _walk_supplementary(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
    written, label = _float_label(el)
    text = _joined([_Text(written), _text_and_refs(el, skip=frozenset({"label"}))], " ")
    out.emit(ctx, "supplementary", text, label=label, xml_id=el.get("id"))


def _table_footer(wrap: etree._Element) -> list[_Text]:
    lines: list[_Text] = []
    for foot in _children(wrap, "table-wrap-foot"):
        for child in _children(foot):
            members = list(_children(child, "fn")) if local(child) == "fn-group" else [child]
            lines.extend(text for text in (_footnote_text(m) for m in members) if text.text)
    return lines


def _tables(wrap: etree._Element) -> list[etree._Element]:
    """The tables of a table-wrap: one per <alternatives> (XHTML and OASIS versions are the same table),
    never a table nested inside another chosen one."""
    chosen: list[etree._Element] = []
    # Sets, not scans of `chosen`: a table-wrap of thousands of tables must not take quadratic time.
    chosen_set: set[etree._Element] = set()
    parents_of_chosen: set[etree._Element] = set()
    for table in _descendants(wrap, "table"):
        parent = table.getparent()
        if local(parent) == "alternatives" and parent in parents_of_chosen:
            continue
        if any(ancestor in chosen_set for ancestor in table.iterancestors()):
            continue
        chosen.append(table)
        chosen_set.add(table)
        parents_of_chosen.add(parent)
    return chosen


def _walk_table(wrap: etree._Element, ctx: _Ctx, out: _Out) -> None:
    label, caption = _caption_text(wrap)
    tables = _tables(wrap)
    if not tables:  # an image-only table: its caption and footnotes are all the text there is
        text = _joined([caption, *_table_footer(wrap)], "\n")
        out.emit(ctx, "caption", text, label=label, xml_id=wrap.get("id"))
        return
    lines = [caption]
    for table in tables:
        # A row's references are placed at the start of its line: split tables keep them with their rows.
        lines.extend(_Text(line, refs, [(0, rid) for rid in refs]) for line, refs in _table_lines(table))
    lines.extend(_table_footer(wrap))
    text = _joined(lines, "\n")
    for xref in _descendants(wrap, "xref"):  # header cells' citations too: they belong to the whole table
        _bibr_ids(xref, text.refs)
    out.emit(ctx, "table", text, label=label, xml_id=wrap.get("id"))


def _walk_formula(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
    written, label = _float_label(el)
    text = _combined(formula_text(el, prefer_tex=True), written)  # label after the formula, as typeset
    out.emit(ctx, "formula", text, label=label, xml_id=el.get("id"))


def _walk_boxed(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
    label, title = heading(el)
    kind: ChunkKind = "boxed-text" if ctx.para_kind == "paragraph" else ctx.para_kind
    inner = replace(ctx.deeper(_combined(label, title)), para_kind=kind, sections=None)
    for child in _children(el):
        if local(child) == "caption":
            _walk(child, inner, out)  # caption paragraphs of a box are box text; its title is the heading
        else:
            _walk_element(child, inner, out)


def _titled(default: str) -> Callable[[etree._Element, _Ctx, _Out], None]:
    """Handler for back-matter containers (ack, notes, app, ...): title (or `default`) joins the path."""

    def handler(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
        label, title = heading(el)
        name = _combined(label, title) or default
        _walk(el, replace(ctx.deeper(name), sections=None), out)

    return handler


def _skip(_el: etree._Element, _ctx: _Ctx, _out: _Out) -> None:
    return None


_HANDLERS: dict[str, Callable[[etree._Element, _Ctx, _Out], None]] = {
    "sec": _walk_sec,
    "p": _walk_p,
    "list": _walk_list,
    "def-list": _walk_list,
    "fig": _walk_caption,
    "media": _walk_caption,
    "chem-struct-wrap": _walk_caption,
    "fig-group": _walk_caption,  # the group's caption, then its members
    "table-wrap-group": _walk_caption,
    "disp-formula-group": _walk_caption,
    "table-wrap": _walk_table,
    "disp-formula": _walk_formula,
    "boxed-text": _walk_boxed,
    "supplementary-material": _walk_supplementary,
    "ack": _titled("Acknowledgements"),
    "notes": _titled("Notes"),
    "fn-group": _titled("Footnotes"),
    "fn": _walk_fn,
    "corresp": _walk_corresp,  # in author notes
    "glossary": _titled("Glossary"),
    "app-group": _titled(""),
    "app": _titled("Appendix"),
    "bio": _titled("Biography"),
    "statement": _titled(""),  # "Theorem 1": its label/title joins the path like a small section
    "ref-list": _skip,
    "sub-article": _skip,  # handled separately, never inside body text
    "response": _skip,
}


# ------------------------------------------------------------------------------------------ metadata


# Article-id types that carry the article's PMCID, by preference: the 2026 vintage writes `pmcid` ("PMC123")
# and `pmcid-ver` ("PMC123.1"), the older one `pmc` (digits); `pmcaid` (digits) is the last resort.
PMCID_ID_TYPES = ("pmcid", "pmcid-ver", "pmc", "pmcaid")


def _article_meta(article: etree._Element) -> etree._Element | None:
    return _path(article, "front", "article-meta")


def article_ids(article: etree._Element) -> dict[str, str]:
    """The article's own ids from front/article-meta: ``pub-id-type`` -> first non-empty value."""
    meta = _article_meta(article)
    ids: dict[str, str] = {}
    for el in _children(meta, "article-id") if meta is not None else ():
        kind, value = (el.get("pub-id-type") or "").lower(), element_text(el)
        if value and kind not in ids:
            ids[kind] = value
    return ids


def article_pmcids(article: etree._Element) -> set[str]:
    """Every PMCID the article names for itself (both id vintages), canonical: efetch replies are matched to
    the requested ids by these, never by position."""
    meta = _article_meta(article)
    found: set[str] = set()
    for el in _children(meta, "article-id") if meta is not None else ():
        if (el.get("pub-id-type") or "").lower() in PMCID_ID_TYPES and (pmcid := canonical_pmcid(el.text)):
            found.add(pmcid)
    return found


def article_pmcid(article: etree._Element, ids: dict[str, str] | None = None) -> str | None:
    """The article's PMCID (canonical), by `PMCID_ID_TYPES` preference; None for publisher JATS."""
    ids = article_ids(article) if ids is None else ids
    return next((pmcid for kind in PMCID_ID_TYPES if (pmcid := canonical_pmcid(ids.get(kind)))), None)


def article_doi(article: etree._Element, ids: dict[str, str] | None = None) -> str | None:
    return (article_ids(article) if ids is None else ids).get("doi")


def _year(meta: etree._Element | None) -> str | None:
    """Year of the first pub-date by preference; never fails when only one kind (or an empty one) exists."""
    if meta is None:
        return None
    found: dict[str, str] = {}
    for date in _children(meta, "pub-date"):
        year = element_text(_child(date, "year"))
        kind = date.get("pub-type") or date.get("date-type") or ""
        if year and kind not in found:
            found[kind] = year
    for kind in _PUB_DATE_PREFERENCE:
        if kind in found:
            return found[kind]
    return next(iter(found.values()), None)


def _license(meta: etree._Element | None) -> str | None:
    """ali:license_ref, else license/@xlink:href, else @license-type, else the licence text."""
    permissions = _child(meta, "permissions")
    for lic in _children(permissions, "license") if permissions is not None else ():
        ref = element_text(_child(lic, "license_ref"))
        value = ref or _attr(lic, "href") or lic.get("license-type") or element_text(lic)
        if value:
            return value
    for custom in _descendants(meta, "custom-meta") if meta is not None else ():  # 2026 PMC flag
        if element_text(_child(custom, "meta-name")) == "pmc-license-ref":
            return element_text(_child(custom, "meta-value")) or None
    return None


def _journal(front: etree._Element | None) -> str | None:
    jmeta = _child(front, "journal-meta")
    if jmeta is None:
        return None
    title = element_text(_path(jmeta, "journal-title-group", "journal-title")) or element_text(
        _child(jmeta, "journal-title")
    )
    if title:
        return title
    ids = {el.get("journal-id-type"): element_text(el) for el in _children(jmeta, "journal-id")}
    return ids.get("nlm-ta") or ids.get("iso-abbrev") or next(iter(ids.values()), None)


def is_restricted(article: etree._Element) -> bool:
    """The publisher-restricted marker comment (right after <article> in efetch replies)."""
    return any(RESTRICTED_MARKER in (c.text or "") for c in article.iter(etree.Comment))


# Why an article without body is stored `no-full-text`: one wording, fetched by id or given as a file.
NO_BODY = "the article has no body text (front matter only)"


def has_body(article: etree._Element) -> bool:
    """The article has a <body> element (front-matter-only articles, e.g. publish-on-accept, have none)."""
    return _child(article, "body") is not None


# ------------------------------------------------------------------------------------- article parts


def _article_title(meta: etree._Element | None) -> str:
    """The title with its subtitle (the title block's text; `Paper.title` is the title alone)."""
    group = _child(meta, "title-group")
    title = element_text(_child(group, "article-title"))
    return with_subtitle(title, element_text(_child(group, "subtitle")))


def _abstract_name(abstract: etree._Element) -> str:
    kind = abstract.get("abstract-type")
    if local(abstract) == "trans-abstract":
        lang = _attr(abstract, "lang")
        return f"Abstract ({kind or 'translated'}{', ' + lang if lang else ''})"
    return f"Abstract ({kind})" if kind else "Abstract"


def _abstract_blocks(meta: etree._Element | None, out: _Out) -> None:
    if meta is None:
        return
    for abstract in _children(meta, "abstract", "trans-abstract"):
        ctx = _Ctx(
            path=(_abstract_name(abstract),), part="front", para_kind="abstract", force_kind="abstract"
        )
        _walk(abstract, ctx, out)


# Identifiers (a Crossref Funder ID, ROR, Ringgold; an ORCID) are not prose: left out of funders and names.
_INSTITUTION_IDS = frozenset({"institution-id"})
_RECIPIENT_IDS = frozenset({"contrib-id", "institution-id"})
# What names an award's recipient or investigator: a person (as in references) or an institution.
_RECIPIENT_ELEMENTS = (*_NAME_ELEMENTS, "institution", "institution-wrap")
# Statement characters scanned for funder names, summed over the funders: the shared corpus needs at most
# 2·10⁴, the limit costs about 50 ms. Past it (a crafted article: thousands of funders and a huge statement
# would take minutes) every award is written, none left out as said already.
_FUNDER_MATCH_WORK = 1_000_000


def _listed(items: list[str]) -> str:
    """Items as English lists them: "A", "A and B", "A, B and C"."""
    return f"{', '.join(items[:-1])} and {items[-1]}" if len(items) > 1 else "".join(items)


def _plural(word: str, items: list[str]) -> str:
    return f"{word}s" if len(items) > 1 else word


def _folded(text: str) -> str:
    """Text compared case- and whitespace-insensitively."""
    return " ".join(text.split()).casefold()


def _funder_names(source: etree._Element) -> list[str]:
    """A funding-source's funders: each institution-wrap's text without its ids, else the source's own text
    (attributes such as xlink:href or country are not prose)."""
    holders = list(_children(source, "institution-wrap")) or [source]
    names = (element_text(holder, _INSTITUTION_IDS) for holder in holders)
    return [name for name in names if name]


def _person_name(el: etree._Element) -> str:
    """A recipient as a reader writes it: a <name> given names first ("Rosanna A. Alegado"; surname first when
    name-style="eastern"), a string-name, collab or institution as written, without ids."""
    if local(el) == "name-alternatives":
        preferred = _child(el, "name", "string-name")
        el = preferred if preferred is not None else el
    if local(el) == "name":
        given, surname = element_text(_child(el, "given-names")), element_text(_child(el, "surname"))
        if given or surname:
            order = (surname, given) if el.get("name-style") == "eastern" else (given, surname)
            parts = (element_text(_child(el, "prefix")), *order, element_text(_child(el, "suffix")))
            return " ".join(part for part in parts if part)
    return element_text(el, _INSTITUTION_IDS)


def _recipients(holders: Iterable[etree._Element]) -> list[str]:
    """Who principal-award-recipient / principal-investigator elements name: their names and institutions,
    else (a plain-text recipient) their text without ids."""
    found: list[str] = []
    for holder in holders:
        named = list(_children(holder, *_RECIPIENT_ELEMENTS))
        names = [_person_name(el) for el in named] if named else [element_text(holder, _RECIPIENT_IDS)]
        found.extend(name for name in names if name)
    return found


def _award_sentence(award: etree._Element, funders: list[str]) -> str:
    """One award-group as a sentence: "Funded by F (award A, "N") to R, with principal investigator P.";
    "Funded by award A ("N") to R." without a funder; the award-desc follows as a sentence of its own; ""
    when it names nothing."""
    ids = [text for text in map(element_text, _children(award, "award-id")) if text]
    names = [f'"{text}"' for text in map(element_text, _children(award, "award-name")) if text]
    descriptions = [text for text in map(element_text, _children(award, "award-desc")) if text]
    recipients = _recipients(_children(award, "principal-award-recipient"))
    investigators = _recipients(_children(award, "principal-investigator"))
    detail = _award_detail(ids, names)
    if funders:
        sentence = f"Funded by {_listed(funders)}" + (f" ({detail})" if detail else "")
    elif ids and names:  # no funder whose parentheses would hold the name: it gets its own
        sentence = f"Funded by {_award_detail(ids, [])} ({_listed(names)})"
    elif detail:
        sentence = f"Funded by {detail}"
    elif recipients or investigators or descriptions:
        sentence = "Funding awarded"
    else:
        return ""
    if recipients:
        sentence += f" to {_listed(recipients)}"
    if investigators:
        sentence += f", with {_plural('principal investigator', investigators)} {_listed(investigators)}"
    return " ".join(_sentence_end(text) for text in (sentence, *descriptions))


def _award_detail(ids: list[str], names: list[str]) -> str:
    """What an award is called: "awards A and B", "award A, "N"", "award "N"" or ""."""
    if not ids:
        return f"award {_listed(names)}" if names else ""
    numbered = f"{_plural('award', ids)} {_listed(ids)}"
    return f"{numbered}, {_listed(names)}" if names else numbered


def _sentence_end(text: str) -> str:
    """Text ending as a sentence: a period added unless it ends with one (or ! or ?)."""
    return text if text.endswith((".", "!", "?")) else f"{text}."


# "Howard Hughes Medical Institute (HHMI)": the acronym a funder's name gives itself.
_OWN_ACRONYM = re.compile(r"\s*\(([A-Z][A-Za-z]*[A-Z])\)\s*$")
# Words an acronym skips ("National Institutes of Health" is NIH).
_ACRONYM_SKIPS = frozenset({"of", "for", "and", "the", "on", "in", "at", "to", "&"})


def _acronyms(name: str) -> set[str]:
    """Acronyms a statement may use for a funder of three or more words: the one its name gives, and the
    initials of its words when every other word is one acronyms skip ("National Science Foundation": NSF)."""
    found: set[str] = set()
    given = _OWN_ACRONYM.search(name)
    if given:
        found.add(given.group(1))
        name = name[: given.start()]
    words = [word for word in name.replace(",", " ").split() if word.casefold() not in _ACRONYM_SKIPS]
    if len(words) >= 3 and all(word[0].isupper() for word in words):
        found.add("".join(word[0] for word in words))
    return found


def _said(funder: str, statements: list[str], folded: list[str]) -> bool:
    """Whether a funding statement names `funder` as a whole phrase ("NIH" is not in "NIHR"): by its name,
    compared folded and with or without a leading "The", or by its acronym, as written (case matters: "NSF",
    not "nsf")."""
    name = _OWN_ACRONYM.sub("", funder)
    names = {_folded(name), _folded(name.removeprefix("The ").removeprefix("the "))}
    phrase = re.compile("|".join(rf"(?<!\w){re.escape(each)}(?!\w)" for each in sorted(names) if each))
    acronyms = _acronyms(funder)
    acronym = re.compile("|".join(rf"(?<!\w){re.escape(each)}(?!\w)" for each in sorted(acronyms)))
    return any(phrase.search(text) for text in folded) or bool(
        acronyms and any(acronym.search(statement) for statement in statements)
    )


def _award_sentences(meta: etree._Element, statements: list[str]) -> list[str]:
    """A sentence per award-group, in order, leaving out an award whose funders the funding statements
    (`statements`) all name already: the statement says it, in the authors' words."""
    awards = [
        (award, [name for source in _children(award, "funding-source") for name in _funder_names(source)])
        for award in _descendants(meta, "award-group")
    ]
    work = sum(len(funders) for _, funders in awards) * sum(map(len, statements))
    compare = statements if work <= _FUNDER_MATCH_WORK else []
    folded = [_folded(statement) for statement in compare]
    sentences: list[str] = []
    for award, funders in awards:
        if funders and compare and all(_said(funder, compare, folded) for funder in funders):
            continue
        sentence = _award_sentence(award, funders)
        if sentence:
            sentences.append(sentence)
    return sentences


def _front_note_blocks(meta: etree._Element | None, out: _Out) -> None:
    """Author notes (competing interests, contributions, correspondence) and the funding statement: many
    publishers (PLOS) keep them in the front matter, others (eLife) in <back>, which is walked anyway. The
    funding-group's awards follow the statement, one sentence a line (`_award_sentences`): eLife names its
    funders only there, the statement says "The funders had no role ..."."""
    if meta is None:
        return
    ctx = _Ctx(path=("Author notes",), part="front", para_kind="back")
    for notes in _children(meta, "author-notes"):
        _walk(notes, ctx, out)  # footnotes filed by kind (`_walk_fn`), correspondence, paragraphs
    funding = replace(ctx, path=("Funding",))
    statements: list[str] = []
    for statement in _descendants(meta, "funding-statement"):
        text = _text_and_refs(statement)
        out.emit(funding, "back", text, xml_id=statement.get("id"))
        statements.append(text.text)
    out.emit(funding, "back", "\n".join(_award_sentences(meta, statements)))


def _sub_article_blocks(article: etree._Element, out: _Out, prefix: tuple[str, ...] = ()) -> None:
    """Decision letters, author responses, reviews: apart from the paper's own claims, tagged as such."""
    for sub in _children(article, "sub-article", "response"):
        stub = _child(sub, "front-stub", "front")
        meta = _child(stub, "article-meta") if stub is not None and local(stub) == "front" else stub
        title = _article_title(meta)
        name = title or sub.get("article-type") or local(sub)
        ctx = _Ctx(
            path=(*prefix, name),
            part="sub-article",
            para_kind="sub-article",
            force_kind="sub-article",
            sub_article=sub.get("id") or sub.get("article-type") or name,
        )
        for part in _children(sub, "body", "back", "floats-group"):
            _walk(part, ctx, out)
        _sub_article_blocks(sub, out, ctx.path)


def _check_depth(article: etree._Element) -> None:
    # One XPath, evaluated in C in time linear in the tree: is any element nested one level too deep?
    if article.xpath(_TOO_DEEP):
        raise JatsError(
            f"elements nested more than {MAX_NESTING_DEPTH} levels deep inside <article>: "
            "over the parser's nesting limit"
        )


def parse_article(article: etree._Element) -> Paper:
    """One <article> element (any namespace) → Paper; `JatsError` when it nests past `MAX_NESTING_DEPTH`."""
    _check_depth(article)
    front = _child(article, "front")
    meta = _child(front, "article-meta")
    ids = article_ids(article)
    title = element_text(_path(meta, "title-group", "article-title"))
    restricted = is_restricted(article)
    out = _Out()
    out.emit(_Ctx(part="front"), "title", _article_title(meta), xml_id=None)
    _abstract_blocks(meta, out)
    _front_note_blocks(meta, out)
    sections: list[Section] = []
    body = _child(article, "body")
    n_before_body = len(out.blocks)
    if body is not None:
        _walk(body, _Ctx(sections=sections), out)
    has_body_text = len(out.blocks) > n_before_body
    back = _child(article, "back")
    if back is not None:
        _walk(back, _Ctx(part="back", para_kind="back"), out)
    for floats in _children(article, "floats-group"):
        _walk(floats, _Ctx(part="floats"), out)
    _sub_article_blocks(article, out)
    return Paper(
        pmcid=article_pmcid(article, ids),
        pmid=ids.get("pmid"),
        doi=article_doi(article, ids),
        title=title,
        journal=_journal(front),
        year=_year(meta),
        license=_license(meta),
        article_type=article.get("article-type"),
        full_text=has_body_text and not restricted,
        restricted=restricted,
        sections=sections,
        blocks=out.blocks,
        references=_references(article),
    )


# -------------------------------------------------------------------------------------- documents


def find_articles(root: etree._Element) -> list[etree._Element]:
    """The <article> elements of a bare article, a pmc-articleset or an OAI-PMH envelope (any namespace)."""
    if local(root) == "article":
        return [root]
    if local(root) == _ARTICLE_SET:
        return list(_children(root, "article"))
    found = [
        el
        for el in _descendants(root, "article")
        if not any(local(a) == "article" for a in el.iterancestors())
    ]
    if not found and local(root) != "OAI-PMH":
        # The detail only: callers say it is no JATS article ("not a JATS article: root element <html> ...").
        raise JatsError(f"root element <{local(root)}> holds no <article>")
    return found


def articleset_errors(root: etree._Element) -> list[tuple[str, str]]:
    """(id, message) for each error child: efetch `<error id>`, old `<Reply Id error>`, OAI `<error code>`."""
    errors: list[tuple[str, str]] = []
    holders = [root] + [c for c in _children(root) if local(c) in ("GetRecord", "ListRecords")]
    for holder in holders:
        for child in _children(holder):
            name = local(child)
            if name == "error":
                errors.append((child.get("id") or child.get("code") or "", element_text(child)))
            elif name == "Reply" and child.get("error"):
                errors.append((child.get("Id") or "", child.get("error") or ""))
    return errors


def parse_jats(data: bytes) -> list[Paper]:
    """Bytes of a bare article, a pmc-articleset (errors are not papers) or an OAI-PMH record → Papers.

    Raises `JatsError` (a ValueError), and nothing else, for unusable input: empty, malformed or truncated
    XML, another XML vocabulary, or an article nesting past `MAX_NESTING_DEPTH`.
    """
    return [parse_article(article) for article in find_articles(parse_xml(data))]
