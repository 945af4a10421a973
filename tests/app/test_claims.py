"""The claim check's parts: splitting answers into claims, the facts check, the unsupported-claim policy, and
the answer's deadline."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fakes.slow_embedder import SlowEmbedder
from fakes.tiny_gpt_oss import sample_paper

from pmcqa.app.answering.base import ABSTAIN_ANSWER, Citation, Claim, Draft
from pmcqa.app.answering.citations import finalize
from pmcqa.app.answering.claims import (
    NOT_CHECKED,
    apply_policy,
    check_claims,
    missing_facts,
    names,
    quantities,
    split_claims,
)
from pmcqa.app.answering.postprocess import build_draft


def test_split_claims_moves_markers_after_a_period_onto_the_claim() -> None:
    answer = (
        "Both protocols generated immature tissue [1]; about 20% of adult factors [2]. [3] "
        "The SARS-CoV-2 spike binds ACE2 [4, 5]. Nothing cited here."
    )
    claims = split_claims(answer)
    assert [c.text for c in claims] == [
        "Both protocols generated immature tissue; about 20% of adult factors.",
        "The SARS-CoV-2 spike binds ACE2.",
        "Nothing cited here.",
    ]
    assert [c.excerpts for c in claims] == [[1, 2, 3], [4, 5], []]
    assert answer[slice(*claims[0].span)].endswith("[3]")


def test_numbers_units_and_names() -> None:
    assert quantities("21 % of 1,000 patients after 3-4 weeks, 5 mg/kg, COVID-19") == [
        ("21", "%", "21 %"),
        ("1000", "patient", "1,000 patients"),
        ("3", None, "3"),
        ("4", "week", "4 weeks"),  # both ends of a range; the 19 of COVID-19 is a name's, not a number
        ("5", "mg/kg", "5 mg/kg"),
    ]
    assert quantities("stored at −80 °C, age range 19–70") == [
        ("-80", "°c", "−80 °C"),
        ("19", None, "19"),
        ("70", None, "70"),
    ]
    assert names("The SARS-CoV-2 virus binds ACE2 in Wuhan. However Spo0A matters.") == [
        "SARS-CoV-2",
        "ACE2",
        "Wuhan",
        "Spo0A",
    ]


@pytest.mark.parametrize(
    ("claim", "cited", "problem"),
    [
        ("About 21% of adults.", "about 21 percent of adults were infected", None),
        ("About 12% of adults.", "about 21% of adults were infected", "number 12%"),
        ("It lasted 5 days.", "the dose was 5 mg", "5 days"),
        ("1,000 samples were tested.", "1000 samples were tested", None),
        ("Cases rose in Wuhan.", "cases rose in the city", "Wuhan"),
        ("ACE2 is the receptor.", "the receptor is ace2", None),
        ("Patients were aged 19-90.", "the age range was 19–70 years", "number 90"),  # a range's far end
        ("Patients were aged 19-70.", "the age range was 19–70 years", None),
        ("It took 3-6 weeks.", "recovery took 3-4 weeks", "number 6 weeks"),
        ("Samples were kept at -80 °C.", "samples were kept at 80 °C", "number -80 °C"),  # the sign counts
        ("Samples were kept at −80 °C.", "samples were kept at -80 °C", None),
        ("CD4 cells fell.", "CD45 cells fell", "CD4"),  # a whole word, not part of a longer one
        ("H1N1 spread.", "H1N10 spread", "H1N1"),
        ("COVID-19 patients recovered.", "most COVID-19 cases recovered", None),
    ],
)
def test_missing_facts(claim: str, cited: str, problem: str | None) -> None:
    reason = missing_facts(claim, cited)
    if problem is None:
        assert reason is None
    else:
        assert reason is not None and problem in reason


def _citation(chunk_id: str) -> Citation:
    return Citation(chunk_id=chunk_id, section="Results", quote="q", start=0, end=1)


ANSWER = "Organoids are immature [1]. They expressed 12% of adult factors [2]."
CLAIMS = [
    Claim(text="Organoids are immature.", citations=[0], supported=True, reason="ok"),
    Claim(text="They expressed 12% of adult factors.", citations=[1], supported=False, reason="number 12%"),
]
CITATIONS = [_citation("c0"), _citation("c1")]


def test_policy_flag_keeps_the_claim_and_says_so() -> None:
    checked = apply_policy(Draft(answer=ANSWER), CITATIONS, CLAIMS, "flag", ABSTAIN_ANSWER)
    assert checked.answer.startswith(ANSWER) and "Not verified: 1 of 2 statements" in checked.answer
    assert checked.citations == CITATIONS and not checked.abstained
    assert "flagged" in checked.steps[0] and "number 12%" in checked.steps[0]


def test_policy_drop_removes_the_claim_and_its_citation() -> None:
    checked = apply_policy(Draft(answer=ANSWER), CITATIONS, CLAIMS, "drop", ABSTAIN_ANSWER)
    assert checked.answer == "Organoids are immature [1]."
    assert [c.chunk_id for c in checked.citations] == ["c0"]
    assert [c.citations for c in checked.claims] == [[0], []]
    everything_wrong = [c.model_copy(update={"supported": False}) for c in CLAIMS]
    gone = apply_policy(Draft(answer=ANSWER), CITATIONS, everything_wrong, "drop", ABSTAIN_ANSWER)
    assert gone.abstained and gone.answer == ABSTAIN_ANSWER and gone.citations == []


def test_policy_keep_leaves_the_answer() -> None:
    checked = apply_policy(Draft(answer=ANSWER), CITATIONS, CLAIMS, "keep", ABSTAIN_ANSWER)
    assert checked.answer == ANSWER and checked.citations == CITATIONS
    assert "not supported" in checked.steps[0]


# --- the deadline -------------------------------------------------------------------------------------------

FAITHFUL = (
    "Both Morizane and Takasato protocols generated immature tissue [1]. "
    "Organoids expressed about 20% of adult transcription factors [2]."
)


class NoEmbedder:
    def embed_documents(self, texts: list[str]) -> np.ndarray:
        raise AssertionError("the claim check embedded after its deadline")


def test_claims_past_the_deadline_are_not_checked_and_never_pass() -> None:
    paper, passages = sample_paper()
    draft = build_draft("", FAITHFUL, passages, "test-model")
    citations = finalize(draft, paper, passages)
    claims = check_claims(draft, citations, passages, NoEmbedder(), deadline=time.monotonic())
    assert [(c.checked, c.supported, c.reason) for c in claims] == [(False, False, NOT_CHECKED)] * 2
    flagged = apply_policy(draft, citations, claims, "flag", ABSTAIN_ANSWER)
    assert "Not verified: 2 of 2 statements could not be checked in time" in flagged.answer
    dropped = apply_policy(draft, citations, claims, "drop", ABSTAIN_ANSWER)
    assert dropped.abstained and dropped.answer == ABSTAIN_ANSWER


def test_the_claim_check_stops_at_the_deadline(embedder) -> None:
    # Each claim embeds its own new texts: the first, begun in time, is judged; the second's turn is too late.
    paper, passages = sample_paper()
    draft = build_draft("", FAITHFUL, passages, "test-model")
    citations = finalize(draft, paper, passages)
    slow = SlowEmbedder(embedder, per_call_s=0.6)
    claims = check_claims(draft, citations, passages, slow, deadline=time.monotonic() + 0.3)
    assert [(c.checked, c.supported, c.citations) for c in claims] == [(True, True, [0]), (False, False, [1])]
    assert claims[1].reason == NOT_CHECKED and slow.calls == [1]  # one call: the claim is its cited sentence
    unlimited = check_claims(draft, citations, passages, embedder)
    assert [(c.checked, c.supported) for c in unlimited] == [(True, True), (True, True)]
