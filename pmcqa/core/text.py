"""Text rules every layer shares: word tokens for BM25 and answer scoring, and the sentence splitter.

* **tokens** — `tokenize`: NFKC + casefold, ``\\w+`` words, stopwords dropped (`STOPWORDS`: bm25s's English
  list plus question words, auxiliaries, pronouns and quantifiers, which say nothing about what a passage
  is about), single letters dropped but single digits kept ("Table 2"'s "2"), then a light plural
  stemmer (`stem`). BM25 (`index.retrieval`) and the extractive answerer's term coverage both use it, so a
  question's terms mean the same thing to retrieval and to answer selection.
* **sentences** — `split_sentences`: stripped ``(start, end)`` character offsets into the text, so callers
  slice verbatim sentences. A sentence ends at ``. ! ?`` (plus closing quotes/brackets) followed by
  whitespace and then something that can open a sentence (an upper-case letter or a digit, maybe after an
  opening bracket or quote), or at any line break. A period does not end a sentence after an abbreviation
  ("et al.", "e.g.", "Fig.", "No.") or a single letter (initials "J. Smith", genera "E. coli", "p. 5");
  decimals ("3.5") never break because no whitespace follows the point. Linear time: the text is scanned
  once and each abbreviation check looks back a bounded number of characters.
"""

from __future__ import annotations

import re
import unicodedata

Span = tuple[int, int]

# --- tokens ------------------------------------------------------------------------------------------------

# bm25s's `STOPWORDS_EN` (Lucene's English list), written out: importing `bm25s.stopwords` imports bm25s and
# scipy (~1 s), which every command that only chunks or validates would pay. tests/core/test_text.py checks
# that this stays a superset of bm25s's list.
_STOPWORDS_EN = """
a an and are as at be but by for if in into is it no not of on or such that the their then there these they
this to was will with
"""
# Words that carry no topic in a question or a passage. Question words matter most: "What"/"Which"/"How"
# would otherwise count as unmatched question terms in the answerer's term coverage. Prepositions such as
# "after", "during", "between", "under" stay: "after infection" / "during pregnancy" carry meaning, and
# dropping them cost BM25 a little on COVID-QA dev (MRR 0.791 -> 0.787).
_STOPWORD_ADDITIONS = """
what which who whom whose when where why how
do does did done were been being has have had can could would should may might shall
its than from about also any all both each other some more most nor so while vs via
our we you your i me my he she his her them those
"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORDS_EN.split()) | frozenset(_STOPWORD_ADDITIONS.split())
_WORD = re.compile(r"\w+")


def stem(token: str) -> str:
    """A deliberately light plural stripper: "infections"/"infection" and "viruses"/"virus" meet, while short
    biomedical tokens ("sars", "cd4") and Latin-looking endings ("virus", "analysis") stay as they are."""
    if len(token) <= 4 or token.isdigit():
        return token
    if token.endswith("ies"):
        return token[:-3] + "y"
    if token.endswith(("sses", "uses")):
        return token[:-2]
    if token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def tokenize(text: str) -> list[str]:
    """Casefolded word tokens without stopwords, lightly stemmed. Single digits stay ("Table 2" matters)."""
    tokens = []
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        if word in STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        tokens.append(stem(word))
    return tokens


# --- sentences ---------------------------------------------------------------------------------------------

# Words whose trailing period is not a sentence end (compared lower-cased, leading brackets/quotes removed).
_ABBREVIATION_WORDS = """
al. e.g. i.e. fig. figs. eq. eqs. ref. refs. tab. suppl. vs. cf. viz. approx. ca. resp. no. nos. vol. pp. ch.
chap. sect. ed. eds. dr. mr. mrs. ms. prof. st. jr. inc. ltd. co. corp. dept. univ. sp. spp. subsp. ssp. var.
cv. str. gen. nov. mol. wt. conc. natl. acad. sci. proc. u.s. u.k. jan. feb. mar. apr. jun. jul. aug. sep.
sept. oct. dec.
"""
ABBREVIATIONS: frozenset[str] = frozenset(_ABBREVIATION_WORDS.split())
# How far back from a period the abbreviation check looks: longer than any abbreviation above plus an
# opening bracket, and a constant, which keeps the splitter linear in the text's length.
_ABBREVIATION_REACH = max(map(len, ABBREVIATIONS)) + 2
_OPENERS = "\"'([\u201c\u2018"
# A candidate end: terminal punctuation with closing quotes/brackets and the whitespace after it, or a bare
# line break. Whether a candidate really ends a sentence depends on what follows (`_opens_sentence`) and
# on the word before the period (`_is_abbreviation`).
_CANDIDATE_END = re.compile(r"(?P<mark>[.!?][\"')\]\u201d\u2019]*)(?P<space>\s+)|\n")


def _is_abbreviation(text: str, dot_end: int, floor: int = 0) -> bool:
    """Whether the period just before `dot_end` closes an abbreviation ("et al.", "Fig.") or an initial ("J.",
    "E. coli"). Looks back at most `_ABBREVIATION_REACH` characters, never before `floor`."""
    word_start = dot_end
    limit = max(floor, dot_end - _ABBREVIATION_REACH)
    while word_start > limit and not text[word_start - 1].isspace():
        word_start -= 1
    if word_start == limit and limit > floor and not text[limit - 1].isspace():
        return False  # a longer "word" (a URL, a chemical name): not an abbreviation
    word = text[word_start:dot_end].lstrip(_OPENERS).lower()
    return word in ABBREVIATIONS or (len(word) == 2 and word[0].isalpha())


def ends_with_abbreviation(text: str) -> bool:
    """Whether `text` ends with an abbreviation's or an initial's period ("Geocoris spp.", "E.")."""
    return text.endswith(".") and _is_abbreviation(text, len(text))


def _opens_sentence(text: str, position: int, end: int) -> bool:
    """Whether text[position:] can begin a sentence: an upper-case letter or a digit, maybe after an
    opening bracket or quote."""
    if position < end and text[position] in _OPENERS:
        position += 1
    if position >= end:
        return True
    char = text[position]
    return char.isupper() or char.isdecimal()


def split_sentences(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sentence spans of ``text[start:end]``, whitespace-stripped, as offsets into `text`, in order.

    ``text[s:e]`` of every span is the sentence verbatim; line breaks always end a sentence.
    """
    end = len(text) if end is None else end
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"span {start}:{end} is outside a text of length {len(text)}")
    cuts: list[Span] = []
    sentence_start = start
    for match in _CANDIDATE_END.finditer(text, start, end):
        mark = match.group("mark")
        if mark is None:  # a line break without terminal punctuation
            cuts.append((sentence_start, match.start()))
        else:
            mark_end = match.end("mark")
            if "\n" not in match.group("space") and (
                not _opens_sentence(text, match.end(), end)
                or (mark[0] == "." and _is_abbreviation(text, match.start() + 1, sentence_start))
            ):
                continue
            cuts.append((sentence_start, mark_end))
        sentence_start = match.end()
    cuts.append((sentence_start, end))
    spans = (strip_span(text, s, e) for s, e in cuts)
    return [span for span in spans if span[0] < span[1]]


def strip_span(text: str, start: int, end: int) -> Span:
    """Trim whitespace by moving the offsets, never by editing the text."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def has_unencodable(text: str) -> bool:
    """Whether `text` holds what no UTF-8 can carry (a lone surrogate, e.g. from JSON's "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
