"""The id rules of `pmcqa.core.ids`: grammar, canonical PMCID, a file's own id, `--id`, the alias key."""

from __future__ import annotations

import re

import pytest

from pmcqa.core.ids import (
    PAPER_ID_PATTERN,
    InvalidPaperId,
    alias_key,
    canonical_pmcid,
    check_storable_id,
    given_paper_id,
    not_found_hint,
    own_paper_id,
    parse_id,
)


# --- grammar -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value", "version"),
    [
        ("PMC8026465", "PMC8026465", None),
        ("pmc8026465", "PMC8026465", None),
        ("  PMC8026465.1 ", "PMC8026465", 1),
        ("pmcid:8026465", "PMC8026465", None),
        ("PMCID: PMC8026465.3", "PMC8026465", 3),
        ("https://pmc.ncbi.nlm.nih.gov/articles/PMC8026465/", "PMC8026465", None),
        ("https://www.ncbi.nlm.nih.gov/pmc/articles/PMC8026465", "PMC8026465", None),
    ],
)
def test_pmcid_forms_are_canonical(text: str, value: str, version: int | None) -> None:
    pid = parse_id(text)
    assert (pid.kind, pid.value, pid.version, pid.bare) == ("pmcid", value, version, False)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("pmid:34527728", "pmid", "34527728"),
        ("PMID: 34527728", "pmid", "34527728"),
        ("https://pubmed.ncbi.nlm.nih.gov/34527728/", "pmid", "34527728"),
        ("10.1183/23120541.50193-2021", "doi", "10.1183/23120541.50193-2021"),
        ("doi:10.1002/qub2.92", "doi", "10.1002/qub2.92"),
        ("DOI: 10.1002/qub2.92", "doi", "10.1002/qub2.92"),
        ("https://doi.org/10.1002/qub2.92", "doi", "10.1002/qub2.92"),
        ("http://dx.doi.org/10.1002%2Fqub2.92", "doi", "10.1002/qub2.92"),
    ],
)
def test_pmid_and_doi_forms(text: str, kind: str, value: str) -> None:
    pid = parse_id(text)
    assert (pid.kind, pid.value) == (kind, value)


def test_bare_digits_follow_the_setting_and_hint_at_the_other_reading() -> None:
    as_pmc = parse_id("8026465")
    assert (as_pmc.kind, as_pmc.value, as_pmc.bare) == ("pmcid", "PMC8026465", True)
    assert not_found_hint(as_pmc) == "if you meant PMID 8026465, pass pmid:8026465"
    as_pmid = parse_id("8026465", bare_digits="pmid")
    assert (as_pmid.kind, as_pmid.value, as_pmid.bare) == ("pmid", "8026465", True)
    assert "pmcid:PMC8026465" in not_found_hint(as_pmid)
    # explicit prefixes override the setting and need no hint
    assert parse_id("pmid:8026465").kind == "pmid"
    assert parse_id("pmcid:8026465", bare_digits="pmid").kind == "pmcid"
    assert not_found_hint(parse_id("PMC8026465")) == ""


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "PMC",
        "PMCabc",
        "PMC0",
        "PMC12x",
        "pmid:abc",
        "pmid:",
        "doi:11.1000/x",
        "10.12/x",
        "hello",
        "PMC1.2.3",
        "12345678901234",
        "pmcid:",
        "isbn:123",
    ],
)
def test_malformed_ids_raise_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidPaperId, match="not a paper id") as info:
        parse_id(text)
    assert "expected PMC1234567" in str(info.value)


# --- one canonical PMCID -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("PMC8026465", "PMC8026465"),
        ("pmc8026465", "PMC8026465"),
        (" PMC8026465.2 ", "PMC8026465"),  # pub-id-type="pmcid-ver"
        ("8026465", "PMC8026465"),  # pub-id-type="pmc" and efetch <error id="..."> write digits
        ("PMC08026465", "PMC8026465"),
        ("pmcid:PMC8026465", "PMC8026465"),
        ("https://pmc.ncbi.nlm.nih.gov/articles/PMC8026465/", "PMC8026465"),
        ("pmid:8026465", None),
        ("10.1002/qub2.92", None),
        ("PMC0", None),
        ("", None),
        (None, None),
        ("PMCabc", None),
    ],
)
def test_canonical_pmcid(value: str | None, expected: str | None) -> None:
    assert canonical_pmcid(value) == expected


# --- a file's paper id -------------------------------------------------------------------------------------
def test_own_paper_id_is_the_pmcid_else_the_doi() -> None:
    assert own_paper_id("PMC12", "10.1/x") == "PMC12"
    assert own_paper_id("PMC12.1", None) == "PMC12"
    assert own_paper_id(None, " 10.1371/journal.pone.0008519 ") == "10.1371/journal.pone.0008519"
    assert own_paper_id("", "10.1000/x") == "10.1000/x"
    assert own_paper_id(None, None) is None
    assert own_paper_id(None, "  ") is None


@pytest.mark.parametrize(
    "doi",
    [
        "../../../etc/passwd",
        "10.1/x",  # not a DOI a request could name either
        "10.1234/../../../etc/passwd",
        "10.1234/a/./b",
        "10.1234/x/..",
        "10.1234/a\x00b",
        "10.1234/\ud800",
        "10.1234/a\u200bb",
        "10.1234/" + "x" * 300,
    ],
)
def test_a_file_doi_that_is_no_valid_id_is_not_its_id(doi: str) -> None:
    # The same rule as a request id: what is stored must be nameable again in GET/DELETE /papers/{id}.
    assert own_paper_id(None, doi) is None
    with pytest.raises(InvalidPaperId):
        parse_id(doi)
    with pytest.raises(InvalidPaperId):
        check_storable_id(doi)
    assert own_paper_id("PMC5", doi) == "PMC5"  # a PMCID still names the paper


def test_storable_ids_are_canonical_pmcids_and_valid_dois() -> None:
    assert check_storable_id("PMC8026465") == "PMC8026465"
    assert check_storable_id("10.1371/journal.pone.0008519") == "10.1371/journal.pone.0008519"
    for text in ("pmc8026465", "PMC8026465.1", "8026465", "pmid:123", "doi:10.1000/x", "banana"):
        with pytest.raises(InvalidPaperId):
            check_storable_id(text)
    with pytest.raises(InvalidPaperId, match="cannot be named in a URL"):  # GET /papers/{id}/text takes it
        check_storable_id("10.1234/text")
    assert check_storable_id("10.1234/texts") == "10.1234/texts"


@pytest.mark.parametrize(
    "text",
    [
        "PMC8026465",
        " pmc8026465.2 ",
        "pmcid:8026465",
        "PMCID: PMC8026465.3",
        "pmid:34527728",
        "8026465",
        "10.1183/23120541.50193-2021",
        "doi:10.1002/qub2.92",
        "https://doi.org/10.1002/qub2.92",
        "https://pmc.ncbi.nlm.nih.gov/articles/PMC8026465/",
        "https://pubmed.ncbi.nlm.nih.gov/34527728/",
    ],
)
def test_the_documented_pattern_matches_every_accepted_form(text: str) -> None:
    parse_id(text)
    assert re.match(PAPER_ID_PATTERN, text)


@pytest.mark.parametrize("text", ["", "banana", "PMC", "pmid:abc", "11.1000/x", "10.12/x", "PMC12x"])
def test_the_documented_pattern_refuses_what_is_no_id_in_outline(text: str) -> None:
    assert not re.match(PAPER_ID_PATTERN, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pmc999", "PMC999"),
        ("PMC999.3", "PMC999"),
        ("999", "PMC999"),  # a bare number given for a file is a PMCID
        ("doi:10.1002/qub2.92", "10.1002/qub2.92"),
        ("https://doi.org/10.1002/qub2.92", "10.1002/qub2.92"),
    ],
)
def test_given_paper_id_takes_a_pmcid_or_a_doi(text: str, expected: str) -> None:
    assert given_paper_id(text) == expected


@pytest.mark.parametrize("text", ["pmid:123", "https://pubmed.ncbi.nlm.nih.gov/123/", "not an id", ""])
def test_given_paper_id_refuses_pmids_and_junk(text: str) -> None:
    with pytest.raises(InvalidPaperId):
        given_paper_id(text)


# --- the store's alias key ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spellings", "key"),
    [
        (["901", "pmid:901", "PMID: 901"], "pmid:901"),
        (["10.1/X1", "doi:10.1/x1", "https://doi.org/10.1/X1", "http://dx.doi.org/10.1/X1"], "doi:10.1/x1"),
        (["PMC1", "pmc1", "PMC1.4", "pmcid:PMC1"], "PMC1"),
        (["paper-a", "PAPER-A"], "PAPER-A"),
    ],
)
def test_alias_key_is_one_key_per_id(spellings: list[str], key: str) -> None:
    assert {alias_key(spelling) for spelling in spellings} == {key}
