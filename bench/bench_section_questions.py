"""Questions a researcher asks about a paper's own sections (funding, competing interests, author
contributions, ...): does retrieval find the section, and does back matter stay out of questions about the
findings? BM25 over chunk text alone, BM25 that reads the heading right above each chunk too
(`retrieval.lexical_text`), BM25 that also meets that heading by Snowball stem ("funded" meets "Funding":
`retrieval.heading_stem_terms`), and back matter the question does not ask about ranked last
(`Retriever._back_matter_last`), side by side in one run.

    .venv/bin/python bench/bench_section_questions.py [FOLDER] [--store-dir DIR] [--answers]

Every JATS file of FOLDER is parsed and chunked with the production chunker into a temporary store (or
`--store-dir`, kept for reruns). For each paper and each kind below whose heading the paper has, each of the
kind's questions is asked of that paper; a question scores a hit@k when a chunk under a matching heading is
among the top k passages. The questions are written as researchers ask them, some sharing a word with the
usual heading ("competing interests"), some none ("Who designed the study?" of "Author contributions").
Gold is structural (a chunk under the heading), so an answer stated elsewhere too (funding in the
acknowledgements) counts as a miss: the figures compare the two settings, they do not grade answers.

With --answers, the questions are also answered by the extractive backend with the production retrieval, with
the answer rules off and on, side by side in one run: a question naming the back-matter section of its best
passage answered from that section (`ExtractiveBackend.named_sections`), and a question asking only what the
paper found answered with the closing sentences of its abstract (`findings_abstract`, in retrieval and in the
backend). Each table row says how often the answer quotes the section asked about, quotes something else, or
abstains; for the findings questions "the section" is back matter (which never answers them), and on papers
with a structured abstract it is the abstract's conclusions.

COVID-QA's papers have only "Title", "Metadata", "Abstract" and "Body" for headings and no back matter; its
`pmcqa eval` figures with and without the heading are in the README ("Retrieval").
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pmcqa.app.answering.extractive import Decision, ExtractiveBackend
from pmcqa.app.corpus_report import corpus_files
from pmcqa.app.evaluation import reserved_pmcid
from pmcqa.core.ids import own_paper_id
from pmcqa.core.settings import Settings
from pmcqa.index.embedding import Embedder
from pmcqa.index.library import open_library
from pmcqa.index.models import Chunk
from pmcqa.index.retrieval import Mode, Retriever, asks_for_findings, is_main_abstract
from pmcqa.index.store import PaperStore
from pmcqa.ingest.chunking import Chunker
from pmcqa.ingest.jats import parse_jats

DEFAULT_FOLDER = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "jats"
TOP_K = (1, 3, 8)

# kind: (heading pattern, questions as researchers ask them)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "funding": (
        r"\bfunding\b|financial (support|disclosure)",
        ("Who funded this work?", "What was the source of funding for this study?"),
    ),
    "competing interests": (
        r"competing interest|conflicts? of interest|declaration of interest",
        ("Do the authors declare any competing interests?", "Are there any conflicts of interest?"),
    ),
    "author contributions": (
        r"author.{0,3} contributions?",
        ("What did each author contribute?", "Who designed the study?"),
    ),
    "acknowledgements": (
        r"acknowledge?ments?",
        ("Whom do the authors acknowledge?", "Who do the authors thank?"),
    ),
    "data availability": (
        r"data (availability|access)|availability of data",
        ("Where are the data available?", "Are the data publicly available?"),
    ),
    "statistical analysis": (
        r"statistical analys[ie]s|statistics",
        ("How was the statistical analysis done?", "Which statistical tests were used?"),
    ),
    "limitations": (
        r"\blimitations?\b",
        ("What are the limitations of this study?",),
    ),
}


# Questions about the paper's findings, which back matter (acknowledgements, funding, author notes: chunks of
# kind "back") never answers: how often such a chunk reaches their top 3 is the cost of reading headings.
FINDINGS_QUESTIONS = (
    "What did the authors find?",
    "What do the authors conclude?",
    "What is the main finding of this study?",
    "What methods did the authors use?",
    "What is the aim of this paper?",
)


def build(folder: Path, settings: Settings, store: PaperStore, embedder: Embedder) -> dict[str, list[Chunk]]:
    """Parse, chunk and store every file (skipping papers the store already holds); paper id -> chunks."""
    chunker = Chunker(settings)
    items = []
    for position, path in enumerate(corpus_files(folder)):
        try:
            papers = parse_jats(path.read_bytes())
        except Exception as exc:  # a file the parser refuses is reported, the rest go on
            print(f"skipped {path.name}: {exc}", file=sys.stderr)
            continue
        for paper in papers[:1]:  # the article itself (sub-articles are in its blocks)
            paper_id = own_paper_id(paper.pmcid, paper.doi) or reserved_pmcid(path.stem, position)
            if store.get_paper(paper_id) is None:
                record, chunks = chunker.chunk(paper, paper_id, "bench")
                items.append((record, chunks, None))
    if items:
        chunks = sum(len(c) for _, c, _ in items)
        print(f"embedding {chunks} chunks of {len(items)} papers ...", file=sys.stderr)
        store.put_papers(items, embedder)
    return {paper_id: store.get_chunks(paper_id) for paper_id in store.paper_ids()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--store-dir", type=Path, default=None)
    parser.add_argument("--answers", action="store_true", help="answer with the extractive backend too")
    args = parser.parse_args()
    if not args.folder.is_dir():
        print(f"no JATS folder at {args.folder}", file=sys.stderr)
        return 2

    data_dir = args.store_dir or Path(tempfile.mkdtemp(prefix="pmcqa-bench-sections-"))
    settings = Settings(data_dir=data_dir)
    embedder = Embedder(settings)
    store = open_library(settings, writable=True, embedder=embedder).store
    papers = build(args.folder, settings, store, embedder)

    def retriever(
        heading: bool, heading_stems: bool, back_matter_last: bool, findings_abstract: bool = False
    ) -> Retriever:
        return Retriever(
            store,
            embedder,
            settings,
            lexical_heading=heading,
            lexical_heading_stems=heading_stems,
            back_matter_last=back_matter_last,
            findings_abstract=findings_abstract,
        )

    # (mode, what BM25 reads, retriever); back matter goes last, and a question asking for the findings names
    # the abstract, in the hybrid ranking only
    runs: list[tuple[Mode, str, Retriever]] = [
        ("lexical", "text", retriever(False, False, False)),
        ("lexical", "heading + text", retriever(True, False, False)),
        ("lexical", "heading + stems + text", retriever(True, True, False)),
        ("hybrid", "text", retriever(False, False, False)),
        ("hybrid", "heading + text", retriever(True, False, False)),
        ("hybrid", "heading + text, back matter last", retriever(True, False, True)),
        ("hybrid", "heading + stems + text, back matter last", retriever(True, True, True)),
        (
            "hybrid",
            "heading + stems + text, back matter last, findings: abstract",
            retriever(True, True, True, True),
        ),
    ]

    # (kind, mode, setting) -> [questions, hits at each k]
    results: dict[tuple[str, str, str], list[int]] = {}
    for kind, paper_id, question, gold in _section_questions(papers):
        for mode, setting, run in runs:
            ranking = run.rank(paper_id, question, mode)
            assert ranking is not None
            ranked = [p.chunk.chunk_id for p in ranking.passages(max(TOP_K))]
            row = results.setdefault((kind, mode, setting), [0] * (1 + len(TOP_K)))
            row[0] += 1
            for i, k in enumerate(TOP_K, start=1):
                row[i] += bool(gold.intersection(ranked[:k]))

    # (mode, setting) -> [questions, those with back matter in their top 3]
    intrusions: dict[tuple[str, str], list[int]] = {}
    for paper_id in papers:
        for question in FINDINGS_QUESTIONS:
            for mode, setting, run in runs:
                ranking = run.rank(paper_id, question, mode)
                assert ranking is not None
                row = intrusions.setdefault((mode, setting), [0, 0])
                row[0] += 1
                row[1] += any(p.chunk.kind == "back" for p in ranking.passages(3))

    table = Table(title=f"Section questions: {len(papers)} papers of {args.folder}")
    for column in ("kind", "mode", "BM25 reads", "questions", *(f"hit@{k}" for k in TOP_K)):
        table.add_column(column, justify="left" if column in ("kind", "mode", "BM25 reads") else "right")
    totals: dict[tuple[str, str], list[int]] = {}
    for (kind, mode, setting), row in results.items():
        table.add_row(kind, mode, setting, str(row[0]), *(f"{hits / row[0]:.3f}" for hits in row[1:]))
        total = totals.setdefault((mode, setting), [0] * len(row))
        for i, value in enumerate(row):
            total[i] += value
    for (mode, setting), row in totals.items():
        table.add_row("all", mode, setting, str(row[0]), *(f"{hits / row[0]:.3f}" for hits in row[1:]))
    Console(width=170).print(table)
    control = Table(title="Findings questions with back matter in their top 3 (lower is better)")
    for column in ("mode", "BM25 reads", "questions", "back matter in top 3"):
        control.add_column(column, justify="left" if column in ("mode", "BM25 reads") else "right")
    for (mode, setting), (asked, intruded) in intrusions.items():
        control.add_row(mode, setting, str(asked), f"{intruded / asked:.3f}")
    Console(width=170).print(control)
    if args.answers:
        answer_tables(papers, store, settings, embedder)
    store.close()
    return 0


FINDINGS = "findings"
STRUCTURED = "findings, structured abstract"
OUTCOMES = ("quotes the section", "quotes elsewhere", "abstained")
# The part of a structured abstract where it states its conclusion: the gold of a findings question there.
CONCLUSIONS = re.compile(r"conclusion|significance|interpretation|implication", re.IGNORECASE)


def _outcome(decision: Decision | None, backend: ExtractiveBackend, gold: set[str]) -> str:
    """What an answer quotes: a chunk of `gold` (of a findings question: back matter), other text, nothing."""
    if decision is None or decision.confidence < backend.min_confidence:
        return "abstained"
    chosen = {decision.sentences[i].chunk.chunk_id for i in decision.chosen}
    return "quotes the section" if chosen & gold else "quotes elsewhere"


def _section_questions(papers: dict[str, list[Chunk]]) -> list[tuple[str, str, str, set[str]]]:
    """(kind, paper id, question, gold chunk ids) of each kind's questions, asked of every paper with a chunk
    under a heading of that kind (the gold)."""
    questions: list[tuple[str, str, str, set[str]]] = []
    for kind, (pattern, asked) in KINDS.items():
        heading = re.compile(pattern, re.IGNORECASE)
        for paper_id, chunks in papers.items():
            gold = {c.chunk_id for c in chunks if any(heading.search(part) for part in c.section_path)}
            questions.extend((kind, paper_id, question, gold) for question in asked if gold)
    return questions


def _questions(papers: dict[str, list[Chunk]]) -> list[tuple[str, str, str, set[str]]]:
    """(kind, paper id, question, gold chunk ids) of every question the answer tables ask."""
    questions = _section_questions(papers)
    for paper_id, chunks in papers.items():
        back = {c.chunk_id for c in chunks if c.kind == "back"}  # "gold" of a findings question: back matter
        questions.extend((FINDINGS, paper_id, question, back) for question in FINDINGS_QUESTIONS)
        conclusions = {
            c.chunk_id
            for c in chunks
            if is_main_abstract(c) and len(c.section_path) > 1 and CONCLUSIONS.search(c.section_path[-1])
        }
        if conclusions:  # a structured abstract: its conclusions answer what the paper found
            asked = [question for question in FINDINGS_QUESTIONS if asks_for_findings(question)]
            questions.extend((STRUCTURED, paper_id, question, conclusions) for question in asked)
    return questions


def answer_tables(
    papers: dict[str, list[Chunk]], store: PaperStore, settings: Settings, embedder: Embedder
) -> None:
    """Answer every question with the production retrieval, the answer rules off and on: a question naming a
    back-matter section answered from it (`ExtractiveBackend.named_sections`), a question asking what the
    paper found answered from its abstract (`findings_abstract`, in retrieval and in the backend)."""
    backend = ExtractiveBackend(settings, embedder)
    retrievers = {
        setting: Retriever(store, embedder, settings, findings_abstract=setting == "on")
        for setting in ("off", "on")
    }
    counts: dict[tuple[str, str], dict[str, int]] = {}  # (kind, rules) -> outcome -> questions
    ruled = {kind: [0, 0] for kind in ("section", "findings")}  # answers by a rule, and quoting the gold
    for kind, paper_id, question, gold in _questions(papers):
        record = store.get_paper(paper_id)
        assert record is not None
        for setting, run in retrievers.items():
            backend.named_sections = backend.findings_abstract = setting == "on"
            decision = backend.decide(question, run.retrieve(paper_id, question), record)
            outcome = _outcome(decision, backend, gold)
            for row_kind in (kind, "all section questions") if kind in KINDS else (kind,):
                row = counts.setdefault((row_kind, setting), dict.fromkeys(OUTCOMES, 0))
                row[outcome] += 1
            if setting == "on" and decision is not None and kind != FINDINGS:
                rule = decision.rule
                if rule in ruled and (rule == "findings") == (kind == STRUCTURED):
                    ruled[rule][0] += 1
                    ruled[rule][1] += outcome == "quotes the section"

    table = Table(
        title="Extractive answers with the production retrieval ('the section' of a findings question: back "
        "matter; of a findings question on a structured abstract: its conclusions)"
    )
    for column in ("kind", "answer rules", "questions", *OUTCOMES):
        table.add_column(column, justify="left" if column in ("kind", "answer rules") else "right")
    order = [*KINDS, "all section questions", FINDINGS, STRUCTURED]
    for (kind, setting), row in sorted(
        counts.items(), key=lambda item: (order.index(item[0][0]), item[0][1])
    ):
        total = sum(row.values())
        table.add_row(kind, setting, str(total), *(f"{row[name] / total:.3f}" for name in OUTCOMES))
    Console(width=150).print(table)
    for rule, (answers, right) in ruled.items():
        constant = "NAMED_SECTION_CONFIDENCE" if rule == "section" else "FINDINGS_CONFIDENCE"
        gold = "the section asked about" if rule == "section" else "the abstract's conclusions"
        print(
            f"answers by the {rule} rule: {answers}; share quoting {gold}: {right / max(answers, 1):.3f} "
            f"({constant})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
