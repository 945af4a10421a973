"""JATS (PMC / publisher / OAI-PMH) XML → `ingest.models.Paper`.

Small functions, one per XML structure, each returning plain data. Everything matches on *local* element
names, so one walker serves un-namespaced efetch JATS and OAI-PMH records in a default JATS namespace.

Parsing rules (also in the README):
- Blocks in document order: title, abstracts, body, back matter, floats-group, sub-articles.
- Section paths combine label and title ("2.1 Cell culture"); an untitled, unlabelled `<sec>` adds no path
  level (its content belongs to the parent's path), so paths never contain empty parts.
- Block elements (list, table-wrap, fig, disp-formula, boxed-text, ...) nested inside `<p>` are split out as
  their own blocks; the paragraph text around them becomes separate paragraph blocks, in order.
- Tables: caption line, then rowspan/colspan expanded into a full grid, multi-row headers joined per column
  with " / ", one line per body row as `header: value; header: value`, then table-wrap-foot lines.
- Display formulas: `tex-math` if present, else MathML text; inline formulas: MathML text if present (reads as
  prose), else tex. Never several alternatives glued together.
- Abstracts: kind "abstract", path ["Abstract"], ["Abstract", "<sec title>"] when structured,
  ["Abstract (<abstract-type>)"] for the others; trans-abstracts are kept too.
- Back matter (ack, notes, fn-group, app-group/app, glossary, back/sec): paragraph-like text becomes kind
  "back" under its title (or "Acknowledgements", "Notes", "Footnotes", ...); the ref-list becomes
  `Paper.references`, not text. floats-group content gets part "floats".
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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from lxml import etree

from pmcqa.core.ids import canonical_pmcid
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


def _children(el: etree._Element, *names: str) -> Iterator[etree._Element]:
    if not names:
        return (c for c in el if type(c.tag) is str)
    return (c for c in el if type(c.tag) is str and _localname(c.tag) in names)


def _child(el: etree._Element | None, *names: str) -> etree._Element | None:
    return None if el is None else next(_children(el, *names), None)


def _path(el: etree._Element | None, *steps: str) -> etree._Element | None:
    for step in steps:
        el = _child(el, step)
    return el


def _descendants(el: etree._Element, *names: str) -> Iterator[etree._Element]:
    # "{*}name" matches the name in any namespace or none, and lxml filters in C.
    return el.iter(*(f"{{*}}{name}" for name in names))


def _attr(el: etree._Element, name: str) -> str | None:
    """Attribute by local name (xlink:href, ...), so namespace prefixes don't matter."""
    for key, value in el.attrib.items():
        if etree.QName(key).localname == name:
            return value
    return None


def normalize(text: str) -> str:
    """Collapse runs of ASCII whitespace to one space and strip the ends; nothing else changes."""
    return _WS.sub(" ", text).strip(" ")


def _bibr_ids(xref: etree._Element, refs: list[str]) -> None:
    # rid is IDREFS: "B1 B2" cites two references.
    if xref.get("ref-type") == "bibr":
        for rid in (xref.get("rid") or "").split():
            if rid not in refs:
                refs.append(rid)


# --------------------------------------------------------------------------------------------- text


def _push_children(stack: list[etree._Element | str], el: etree._Element, skip: frozenset[str]) -> None:
    # Reversed, so the stack pops them in document order, each child before its tail.
    for child in reversed(el):
        if child.tail:
            stack.append(child.tail)
        if not (skip and _is_element(child) and local(child) in skip):
            stack.append(child)


def _drain(stack: list[etree._Element | str], out: list[str], refs: list[str], in_formula: bool) -> None:
    """Work off `stack`, whose top is next in document order: strings (tails, closing spaces) go to `out`
    as they are; an element's text goes out and its children go on the stack. A loop, not recursion, so
    no nesting depth can exhaust Python's stack. Inside a formula (`in_formula`), nested formula elements
    are read as plain markup rather than re-rendered, so formula nesting cannot recurse either."""
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        if not _is_element(item):
            continue  # comments, PIs and unexpanded entities carry no prose
        name = local(item)
        if name in _NO_TEXT:
            continue
        if name in _FORMULA_NAMES and not in_formula:
            out.append(formula_text(item, prefer_tex=False))
            continue
        if name in _SEPARATED:
            out.append(" ")
            stack.append(" ")  # popped after the element's content
        if name == "xref":
            _bibr_ids(item, refs)
        if item.text:
            out.append(item.text)
        _push_children(stack, item, frozenset())


def _gather_node(node: etree._Element, out: list[str], refs: list[str]) -> None:
    """Append the text of one child node (without its tail) to `out`."""
    _drain([node], out, refs, in_formula=False)


def _gather_into(
    el: etree._Element,
    out: list[str],
    refs: list[str],
    skip: frozenset[str] = frozenset(),
    in_formula: bool = False,
) -> None:
    """Text and tails of every descendant of `el`, in order; `skip` names direct children to leave out."""
    if el.text and _is_element(el):
        out.append(el.text)
    stack: list[etree._Element | str] = []
    _push_children(stack, el, skip)
    _drain(stack, out, refs, in_formula)


def element_text(el: etree._Element | None, skip: frozenset[str] = frozenset()) -> str:
    """Whitespace-normalised text of an element, inline markup spaced as written."""
    if el is None:
        return ""
    out: list[str] = []
    _gather_into(el, out, [], skip)
    return normalize("".join(out))


def _text_and_refs(el: etree._Element, skip: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    out: list[str] = []
    refs: list[str] = []
    _gather_into(el, out, refs, skip)
    for xref in _descendants(el, "xref"):  # also xrefs inside skipped/formula parts: all descendants count
        _bibr_ids(xref, refs)
    return normalize("".join(out)), refs


# ------------------------------------------------------------------------------------------- formulas


def _clean_tex(tex: str) -> str:
    # PMC tex-math often wraps the formula in a whole LaTeX document; keep only what is between
    # \begin{document} and \end{document} (the \documentclass/\usepackage preamble is noise).
    begin, end = tex.find("\\begin{document}"), tex.rfind("\\end{document}")
    if begin != -1 and end > begin:
        tex = tex[begin + len("\\begin{document}") : end]
    return normalize(tex)


def _formula_markup_text(el: etree._Element, skip: frozenset[str]) -> str:
    """element_text of a formula's chosen rendering: formula elements nested in it are plain markup."""
    out: list[str] = []
    _gather_into(el, out, [], skip, in_formula=True)
    return normalize("".join(out))


def _mathml_text(math: etree._Element) -> str:
    # <annotation> holds yet another alternative (often TeX): leave it out.
    return _formula_markup_text(math, frozenset({"annotation", "annotation-xml"}))


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


class _TableTooLarge(Exception):
    """Internal: expanding or pairing this table would cost more than its size allows."""


@dataclass(frozen=True)
class _Cell:
    ident: int  # position of the source cell, so a spanned cell is recognised in every grid slot it fills
    text: str


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


def _grid_rows(
    rows: list[list[etree._Element]], texts: list[list[str]], max_cols: int, max_slots: int
) -> Iterator[list[_Cell | None]]:
    """Expand rowspan/colspan so every row has one slot per column (None where nothing is), row by row.

    Rowspans are clamped to the rows left, colspans to `max_cols`; a row longer than `max_slots` raises
    `_TableTooLarge` before it is built.
    """
    pending: dict[int, tuple[int, _Cell]] = {}  # column -> (rows still to fill, cell)
    serial = 0
    for index, (cells, cell_texts) in enumerate(zip(rows, texts, strict=True)):
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
            source, text = cells[next_cell], cell_texts[next_cell]
            next_cell += 1
            serial += 1
            cell = _Cell(serial, text)
            rowspan, colspan = _span(source, "rowspan", rows_left), _span(source, "colspan", max_cols)
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


def _row_line(row: list[_Cell | None], headers: list[list[str]]) -> str:
    columns: dict[int, list[int]] = {}  # cell ident -> the columns it fills in this row
    cells: dict[int, _Cell] = {}
    for col, cell in enumerate(row):
        if cell is not None and cell.text:
            columns.setdefault(cell.ident, []).append(col)
            cells[cell.ident] = cell
    parts: list[str] = []
    for ident, cols in columns.items():  # dicts keep insertion order: left to right
        text, header = cells[ident].text, _cell_header(headers, cols)
        parts.append(f"{header}: {text}" if header and header != text else text)
    return "; ".join(parts)


def _plain_lines(texts: list[list[str]]) -> list[str]:
    """The fallback: one line per row, its cells' text joined by "; ", no span expansion, no headers."""
    return [line for line in ("; ".join(t for t in row if t) for row in texts) if line]


def linearize_table(table: etree._Element) -> list[str]:
    """Lines for one <table>: one per body row, `header: value; ...`, headers joined per column.

    Spans are clamped to the table (rowspan to the rows left in its head or body, colspan to the declared
    or widest row's cell count), and the work is bounded by the table's size: a table whose spans would
    expand it far past its cells, or whose repeated headers would multiply its text more than eightfold, is
    linearized plainly (one line per row, head rows included, cell texts joined by "; "), so time and text
    stay linear in the input.
    """
    head_rows, body_rows = _table_rows(table)
    head_cells = [list(_children(tr, *_CELL_NAMES)) for tr in head_rows]
    body_cells = [list(_children(tr, *_CELL_NAMES)) for tr in body_rows]
    head_texts = [[element_text(cell) for cell in row] for row in head_cells]
    body_texts = [[element_text(cell) for cell in row] for row in body_cells]
    n_cells = sum(map(len, head_cells)) + sum(map(len, body_cells))
    budget = _WORK_PER_CELL * (n_cells + len(head_rows) + len(body_rows)) + _MIN_WORK
    text_chars = sum(len(text) for row in head_texts + body_texts for text in row)
    size = text_chars + _MARKUP_PER_ELEMENT * (n_cells + len(head_rows) + len(body_rows))
    text_budget = _TEXT_PER_SIZE * size
    widest = max(map(len, head_cells + body_cells), default=0)
    max_cols = max(_declared_columns(table), widest, 1)
    try:
        head_grid = list(_grid_rows(head_cells, head_texts, max_cols, budget))
        work = sum(map(len, head_grid))
        width = max(map(len, head_grid), default=0)
        if work > budget or width * len(head_grid) > budget:
            raise _TableTooLarge
        headers = _column_headers(head_grid, width)
        header_parts = sum(map(len, headers))
        lines: list[str] = []
        text_size = 0
        for row in _grid_rows(body_cells, body_texts, max_cols, budget):
            work += len(row) + header_parts  # slots, and the header parts a row's cells may compare
            line = _row_line(row, headers)
            text_size += len(line)
            if work > budget or text_size > text_budget:
                raise _TableTooLarge
            lines.append(line)
    except _TableTooLarge:
        return _plain_lines(head_texts + body_texts)
    if not body_rows and head_grid:  # a header-only table: keep its text
        lines = ["; ".join(" / ".join(h) for h in headers if h)]
    return [line for line in lines if line]


# ---------------------------------------------------------------------------------------- references


def _surnames(holder: etree._Element) -> list[str]:
    names: list[str] = []
    for el in _children(holder, "name", "string-name", "collab", "name-alternatives"):
        if local(el) == "name-alternatives":
            preferred = _child(el, "name", "string-name")
            el = preferred if preferred is not None else el
        if local(el) == "collab":
            text = element_text(el)
        else:
            text = element_text(_child(el, "surname")) or element_text(el)
        if text:
            names.append(text)
    return names


def _citation_authors(citation: etree._Element) -> list[str]:
    groups = list(_children(citation, "person-group"))
    authors = [g for g in groups if g.get("person-group-type") in (None, "author")]
    if authors or groups:
        return [name for g in (authors or groups[:1]) for name in _surnames(g)]
    return _surnames(citation)  # old NLM citations put <name> directly in the citation


def parse_reference(ref: etree._Element, index: int = 0) -> ReferenceInfo:
    """One <ref> → ReferenceInfo (first citation of a citation-alternatives)."""
    citation = _child(ref, "element-citation", "mixed-citation", "nlm-citation", "citation")
    if citation is None:
        citation = _child(_child(ref, "citation-alternatives"), "element-citation", "mixed-citation")
    label = element_text(_child(ref, "label")) or None
    ref_id = ref.get("id") or f"ref-{index + 1}"
    if citation is None:
        return ReferenceInfo(id=ref_id, label=label)
    pub_ids = {p.get("pub-id-type"): element_text(p) for p in _children(citation, "pub-id")}
    return ReferenceInfo(
        id=ref_id,
        label=label,
        authors=_citation_authors(citation),
        year=element_text(_child(citation, "year")) or None,
        title=element_text(_child(citation, "article-title", "chapter-title", "data-title")) or None,
        source=element_text(_child(citation, "source")) or None,
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
        text: str,
        refs: list[str] | None = None,
        label: str | None = None,
        xml_id: str | None = None,
    ) -> None:
        if not text:
            return  # empty blocks would only produce empty chunks
        self.blocks.append(
            Block(
                kind=ctx.force_kind or kind,
                text=text,
                section_path=list(ctx.path),
                part=ctx.part,
                ref_ids=list(refs or []),
                label=label or None,
                xml_id=xml_id,
                sub_article=ctx.sub_article,
            )
        )


def heading(el: etree._Element) -> tuple[str, str]:
    """(label, title) of a sec/app/boxed-text/..., title falling back to caption/title."""
    label = element_text(_child(el, "label"))
    title = element_text(_child(el, "title"))
    if not title:
        title = element_text(_path(el, "caption", "title"))
    return label, title


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
        text, refs = _text_and_refs(el)
        out.emit(ctx, ctx.para_kind, text, refs, xml_id=el.get("id"))


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


def _walk_p(p: etree._Element, ctx: _Ctx, out: _Out) -> None:
    """A paragraph; block elements nested in it become their own blocks between the text segments."""
    _walk_mixed(p, ctx, out, lambda child: local(child) in _BLOCK_IN_P)


def _walk_mixed(el: etree._Element, ctx: _Ctx, out: _Out, is_block: Callable[[etree._Element], bool]) -> None:
    """Emit runs of text + inline children as paragraph blocks, and block children through their handlers,
    in document order."""
    pieces: list[str] = [el.text or ""]
    refs: list[str] = []
    xml_id = el.get("id") if local(el) == "p" else None

    def flush() -> None:
        out.emit(ctx, ctx.para_kind, normalize("".join(pieces)), refs.copy(), xml_id=xml_id)
        pieces.clear()
        refs.clear()

    for child in el:
        if _is_element(child) and is_block(child):
            flush()
            _walk_element(child, ctx, out)
        else:
            _gather_node(child, pieces, refs)
            if _is_element(child):  # xrefs the text gathering skipped (e.g. inside formulas) still count
                for xref in _descendants(child, "xref"):
                    _bibr_ids(xref, refs)
        if child.tail:
            pieces.append(child.tail)
    flush()


def _list_lines(lst: etree._Element, refs: list[str]) -> list[str]:
    """One line per list item (label first); nested lists follow their item; def-list items as `term: def`."""
    lines: list[str] = []
    title = element_text(_child(lst, "title"))
    if title:
        lines.append(title)
    for item in _children(lst, "list-item", "def-item"):
        nested: list[str] = []
        pieces: list[str] = [item.text or ""]
        for child in item:
            if _is_element(child) and local(child) in ("list", "def-list"):
                nested.extend(_list_lines(child, refs))
            elif _is_element(child) and local(child) == "def":
                pieces.append(":")
                _gather_node(child, pieces, refs)
            else:
                _gather_node(child, pieces, refs)
            if child.tail:
                pieces.append(child.tail)
        line = normalize("".join(pieces)).replace(" :", ":")
        if line:
            lines.append(line)
        lines.extend(nested)
    return lines


def _walk_list(lst: etree._Element, ctx: _Ctx, out: _Out) -> None:
    refs: list[str] = []
    lines = _list_lines(lst, refs)
    for xref in _descendants(lst, "xref"):
        _bibr_ids(xref, refs)
    out.emit(ctx, "list", "\n".join(lines), refs, xml_id=lst.get("id"))


def _caption_text(el: etree._Element) -> tuple[str, str, list[str]]:
    """(label, "label caption-text attribution", refs) of a fig/table-wrap/media/..."""
    label = element_text(_child(el, "label"))
    texts: list[str] = [label]
    refs: list[str] = []
    for part in _children(el, "caption", "attrib"):
        text, part_refs = _text_and_refs(part)
        texts.append(text)
        refs.extend(r for r in part_refs if r not in refs)
    return label, " ".join(t for t in texts if t), refs


def _walk_caption(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
    """A figure-like float: its caption block, then anything else it holds (e.g. a <p> with a
    supplementary-material in eLife figures) as blocks of their own."""
    label, text, refs = _caption_text(el)
    out.emit(ctx, "caption", text, refs, label=label, xml_id=el.get("id"))
    for child in _children(el):
        if local(child) not in ("caption", "attrib"):
            _walk_element(child, ctx, out)


def _walk_supplementary(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
    label = element_text(_child(el, "label"))
    text, refs = _text_and_refs(el, skip=frozenset({"label"}))
    out.emit(ctx, "supplementary", _combined(label, text), refs, label=label, xml_id=el.get("id"))


def _table_footer(wrap: etree._Element) -> list[str]:
    lines: list[str] = []
    for foot in _children(wrap, "table-wrap-foot"):
        for child in _children(foot):
            members = list(_children(child, "fn")) if local(child) == "fn-group" else [child]
            lines.extend(text for text in (element_text(m) for m in members) if text)
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
    label, caption, refs = _caption_text(wrap)
    tables = _tables(wrap)
    if not tables:  # an image-only table: all we have is its caption
        out.emit(ctx, "caption", caption, refs, label=label, xml_id=wrap.get("id"))
        return
    lines = [caption] if caption else []
    for table in tables:
        lines.extend(linearize_table(table))
    lines.extend(_table_footer(wrap))
    for xref in _descendants(wrap, "xref"):
        _bibr_ids(xref, refs)
    out.emit(ctx, "table", "\n".join(lines), refs, label=label, xml_id=wrap.get("id"))


def _walk_formula(el: etree._Element, ctx: _Ctx, out: _Out) -> None:
    label = element_text(_child(el, "label"))
    text = _combined(formula_text(el, prefer_tex=True), label)  # label after the formula, as typeset
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


def has_body(article: etree._Element) -> bool:
    """The article has a <body> element (front-matter-only articles, e.g. publish-on-accept, have none)."""
    return _child(article, "body") is not None


# ------------------------------------------------------------------------------------- article parts


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


def _sub_article_blocks(article: etree._Element, out: _Out, prefix: tuple[str, ...] = ()) -> None:
    """Decision letters, author responses, reviews: apart from the paper's own claims, tagged as such."""
    for sub in _children(article, "sub-article", "response"):
        stub = _child(sub, "front-stub", "front")
        meta = _child(stub, "article-meta") if stub is not None and local(stub) == "front" else stub
        title = element_text(_path(meta, "title-group", "article-title")) if meta is not None else ""
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
    out.emit(_Ctx(part="front"), "title", title, xml_id=None)
    _abstract_blocks(meta, out)
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
        raise JatsError(f"not a JATS document: root element <{local(root)}> holds no <article>")
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
