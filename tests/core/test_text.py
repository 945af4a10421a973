"""The shared text rules: the tokenizer (BM25 and answer scoring) and the sentence splitter (chunker and
extractive answerer)."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import pytest
from bm25s.stopwords import STOPWORDS_EN

from pmcqa.core.text import STOPWORDS, Span, split_sentences, stem, tokenize

# --- tokens ------------------------------------------------------------------------------------------------


def test_stopwords_extend_the_bm25s_english_list_with_question_words() -> None:
    assert set(STOPWORDS_EN) <= STOPWORDS
    assert {"what", "which", "how", "why", "does", "were"} <= STOPWORDS
    # Content words a question is about are never dropped.
    assert not {"virus", "table", "patients", "incubation"} & STOPWORDS


def test_tokenize_drops_stopwords_and_single_letters_but_keeps_single_digits() -> None:
    assert tokenize("What does Table 2 show, and which of the a/b groups did it use?") == [
        "table",
        "2",
        "show",
        "group",
        "use",
    ]
    assert tokenize("How was SARS-CoV-2 detected in 3 of 12 CD4 cells?") == [
        "sars",
        "cov",
        "2",
        "detected",
        "3",
        "12",
        "cd4",
        "cell",
    ]
    assert tokenize("") == [] and tokenize("What is it? How?") == []


def test_tokenize_normalizes_unicode_and_case() -> None:
    # NFKC folds the "fi" ligature and full-width forms; casefold folds "ß" and capitals.
    assert tokenize("\ufb01brosis") == tokenize("Fibrosis") == ["fibrosis"]
    assert tokenize("\uff34\uff41\uff42\uff4c\uff45 \uff12") == ["table", "2"]
    assert tokenize("STRASSE") == tokenize("Straße")


@pytest.mark.parametrize(
    ("word", "stemmed"),
    [
        ("infections", "infection"),
        ("viruses", "virus"),
        ("virus", "virus"),
        ("studies", "study"),
        ("classes", "class"),
        ("analysis", "analysis"),
        ("sars", "sars"),  # short tokens stay
        ("rats", "rats"),  # four letters: too short to strip safely
        ("12345", "12345"),
    ],
)
def test_light_stemmer(word: str, stemmed: str) -> None:
    assert stem(word) == stemmed


# --- sentences ---------------------------------------------------------------------------------------------


def sentences_of(text: str) -> list[str]:
    spans = split_sentences(text)
    return [text[start:end] for start, end in spans]


def test_sentences_keep_abbreviations_initials_genera_and_decimals() -> None:
    text = (
        "Cells were grown as by Smith et al. (2004). The mean was 3.5 ± 0.2 mg (Fig. 2A). "
        "E. coli strains, e.g. K12, i.e. the lab strain, were used (cf. Ref. 12). J. Smith and "
        "A. B. Jones agreed. See No. 5 and p. 7. Was it fast? Yes! “Quoted.” Then (Brackets) followed."
    )
    assert sentences_of(text) == [
        "Cells were grown as by Smith et al. (2004).",
        "The mean was 3.5 ± 0.2 mg (Fig. 2A).",
        "E. coli strains, e.g. K12, i.e. the lab strain, were used (cf. Ref. 12).",
        "J. Smith and A. B. Jones agreed.",
        "See No. 5 and p. 7.",
        "Was it fast?",
        "Yes!",
        "“Quoted.”",
        "Then (Brackets) followed.",
    ]


def test_sentences_end_only_before_something_that_opens_a_sentence() -> None:
    # Lower case after the period ("mRNA", "p < 0.05. the") continues the sentence; a digit or a non-ASCII
    # capital begins one.
    text = "It rose. mRNA fell. 12 mice died. Étude two. (Σ) held. (see below) ok."
    assert sentences_of(text) == [
        "It rose. mRNA fell.",
        "12 mice died.",
        "Étude two.",
        "(Σ) held. (see below) ok.",
    ]


def test_line_breaks_always_end_a_sentence() -> None:
    text = "Authors: Smith, J.\nDate: 2020\n\n  Table row 1 | 2\nSee Fig.\nNext line"
    assert sentences_of(text) == [
        "Authors: Smith, J.",
        "Date: 2020",
        "Table row 1 | 2",
        "See Fig.",
        "Next line",
    ]


def test_offsets_slice_the_text_exactly_within_a_window() -> None:
    text = "Header. First one here. Second one, e.g. this. Trailer."
    start = text.index("First")
    end = text.index(" Trailer")
    spans = split_sentences(text, start, end)
    assert [text[s:e] for s, e in spans] == ["First one here.", "Second one, e.g. this."]
    assert all(start <= s < e <= end for s, e in spans)
    assert split_sentences("   \n  ") == []
    with pytest.raises(ValueError, match="outside a text of length"):
        split_sentences(text, 5, len(text) + 1)


class _CountingText(str):
    """A text that counts the characters read through indexing and slicing (the splitter's own reads)."""

    read = 0

    def __getitem__(self, key: int | slice) -> str:  # type: ignore[override]
        piece = str.__getitem__(self, key)
        _CountingText.read += len(piece)
        return piece


def _characters_read(text: str) -> tuple[int, list[Span]]:
    _CountingText.read = 0
    spans = split_sentences(_CountingText(text))
    return _CountingText.read, spans


def test_splitting_is_linear_in_the_text_length() -> None:
    # Abbreviations, initials and candidate ends everywhere: a splitter that re-reads the text before each
    # period (text[:dot]) reads quadratically many characters here.
    unit = "Wu et al. found E. coli in 3.5% (Fig. 2) of J. Smith's samples. Then it rose! x. Y. It ended. "
    small, large = unit * 200, unit * 800
    read_small, spans_small = _characters_read(small)
    read_large, spans_large = _characters_read(large)
    assert len(spans_large) == 4 * len(spans_small) > 0
    assert read_small <= 4 * len(small) and read_large <= 4 * len(large)
    assert read_large <= 4.5 * read_small  # four times the text, about four times the work


def test_real_contexts_split_into_verbatim_stripped_non_overlapping_sentences(shared_data: Path) -> None:
    articles = json.loads((shared_data / "covid-qa/dev.json").read_text())["data"]
    for article in articles:
        text = article["paragraphs"][0]["context"]
        spans = split_sentences(text)
        assert spans and all(a_end <= b_start for (_, a_end), (b_start, _) in pairwise(spans))
        pieces = [text[s:e] for s, e in spans]
        assert all(piece == piece.strip() and "\n" not in piece for piece in pieces)
        # Nothing is lost: the sentences hold every non-space character of the text, in order.
        assert re.sub(r"\s", "", "".join(pieces)) == re.sub(r"\s", "", text)
