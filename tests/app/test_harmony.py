"""Harmony prompt rendering, completion parsing, step splitting and Draft post-processing (no model)."""

from __future__ import annotations

from dataclasses import astuple

import pytest
from fakes.tiny_gpt_oss import build_tokenizer, sample_paper

from pmcqa.app.answering import harmony, prompts
from pmcqa.app.answering.base import ABSTAIN_ANSWER
from pmcqa.app.answering.postprocess import (
    StreamAssembler,
    build_draft,
    cited_numbers,
    drop_unknown_citations,
    is_abstention,
)

DATE = "2026-11-28"

# The official openai/gpt-oss-20b template's render (doc §1), effort low, fixed date.
OFFICIAL_RENDER = (
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\nCurrent date: 2026-11-28\n\nReasoning: low\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
    "<|start|>developer<|message|># Instructions\n\n"
    "You are a scholarly Q & A extraction agent. Only use the provided paper. Be concise and precise."
    "\n\n<|end|>"
    "<|start|>user<|message|>Paper: <text>\n\nQuestion: Q?<|end|><|start|>assistant"
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


# --- prompt -------------------------------------------------------------------------------------------------


def test_template_reproduces_the_official_render(tokenizer) -> None:
    messages = [
        {"role": "system", "content": prompts.DEVELOPER_PROMPT},
        {"role": "user", "content": "Paper: <text>\n\nQuestion: Q?"},
    ]
    assert harmony.render_prompt(tokenizer, messages, "low", current_date=DATE) == OFFICIAL_RENDER


def test_template_renders_effort_and_training_turns(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A", "thinking": "1) t"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, current_date=DATE, reasoning_effort="high")
    assert "Reasoning: high" in text
    assert text.endswith(
        "<|start|>assistant<|channel|>analysis<|message|>1) t<|end|>"
        "<|start|>assistant<|channel|>final<|message|>A<|return|>"
    )


def test_fallback_template_when_checkpoint_has_none(tokenizer) -> None:
    bare = build_tokenizer()
    bare.chat_template = None
    messages = [{"role": "user", "content": "Q?"}]
    assert harmony.render_prompt(bare, messages, "low", DATE) == harmony.render_prompt(
        tokenizer, messages, "low", DATE
    )


def test_developer_prompt_is_verbatim_training_text() -> None:
    assert prompts.DEVELOPER_PROMPT == (
        "You are a scholarly Q & A extraction agent. Only use the provided paper. Be concise and precise."
    )


def test_user_message_labels_excerpts_by_number_and_section() -> None:
    paper, passages = sample_paper()
    user = harmony.build_user_message("  How do the protocols compare? ", passages, paper)
    assert user.startswith("Paper: Kidney organoids\n\nExcerpts:\n")
    assert "[1] (Results > Kidney organoids) Both Morizane and Takasato protocols" in user
    assert "[2] (Discussion) Organoids expressed about 20%" in user
    assert "\n\nQuestion: How do the protocols compare?\n\n" in user
    assert user.endswith(prompts.CITATION_INSTRUCTION)


def test_the_papers_own_reference_markers_never_read_as_excerpt_labels() -> None:
    paper, passages = sample_paper()
    chunk = passages[0].chunk
    quoted = chunk.model_copy(update={"text": "Lombardi et al. [1] found XMRV [2, 3]; others did not [4–6]."})
    text = harmony.format_excerpts([passages[0].model_copy(update={"chunk": quoted})])
    assert text.startswith("[1] (") and text.count("[") == 1  # the excerpt label is the only bracketed number
    assert "Lombardi et al. (ref. 1) found XMRV (ref. 2, 3); others did not (ref. 4–6)." in text


def test_neighbours_are_joined_in_document_order() -> None:
    paper, passages = sample_paper()
    first, second = passages
    merged = second.model_copy(update={"neighbours": [first.chunk]})
    text = harmony.format_excerpts([merged])
    assert text.index("Both Morizane") < text.index("Organoids expressed")
    assert text.startswith("[1] (Discussion) ")


def test_rendered_prompt_has_control_tokens_only_at_turn_boundaries(tokenizer) -> None:
    paper, passages = sample_paper()
    messages = harmony.build_messages("How do the protocols compare?", passages, paper)
    text = harmony.render_prompt(tokenizer, messages, "low", DATE)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert harmony.prompt_skeleton(tokenizer, ids) == [
        *("<|start|>", "system", "<|message|>", "<|end|>"),
        *("<|start|>", "developer", "<|message|>", "<|end|>"),
        *("<|start|>", "user", "<|message|>", "<|end|>"),
        *("<|start|>", "assistant"),
    ]
    harmony.verify_prompt_structure(tokenizer, ids)
    developer = text.split("<|start|>developer<|message|>")[1].split("<|end|>")[0]
    assert developer == f"# Instructions\n\n{prompts.DEVELOPER_PROMPT}\n\n"
    user = text.split("<|start|>user<|message|>")[1].split("<|end|>")[0]
    assert "[1] (Results > Kidney organoids)" in user
    assert "Reasoning: low" in text


# --- parsing ------------------------------------------------------------------------------------------------

ANALYSIS = "<|channel|>analysis<|message|>Steps:\n1) Locate the section.\n2) Quote it.<|end|>"
FINAL_OPEN = "<|start|>assistant<|channel|>final<|message|>"


@pytest.mark.parametrize(
    ("text", "final", "complete", "stop"),
    [
        (ANALYSIS + FINAL_OPEN + "It repairs DNA [1].<|return|>", "It repairs DNA [1].", True, "<|return|>"),
        (ANALYSIS + FINAL_OPEN + "It repairs DNA [1].<|end|>", "It repairs DNA [1].", True, "<|end|>"),
        (ANALYSIS + FINAL_OPEN + "It repairs D", "It repairs D", False, None),  # max_new_tokens hit
        (ANALYSIS, None, False, None),  # never reached final
        ("<|channel|>analysis<|message|>Steps:\n1) Locate the", None, False, None),  # cut inside analysis
    ],
)
def test_parse_completion_cases(text: str, final: str | None, complete: bool, stop: str | None) -> None:
    parsed = harmony.parse_completion(text)
    assert parsed.final == final
    assert parsed.complete is complete
    assert parsed.truncated is (not complete)
    assert parsed.stop == stop
    assert parsed.analysis.startswith("Steps:\n1) Locate the")


def test_parse_final_only_and_with_prefix() -> None:
    parsed = harmony.parse_completion("<|start|>assistant<|channel|>final<|message|>Yes.<|return|>")
    assert (parsed.analysis, parsed.final, parsed.complete) == ("", "Yes.", True)


def test_parse_skips_commentary_and_constrain_headers() -> None:
    text = (
        "<|channel|>analysis<|message|>a<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.x <|constrain|>json<|message|>{}<|call|>"
        "<|start|>assistant<|channel|>analysis<|message|>b<|end|>"
        "<|start|>assistant<|channel|>final<|message|>c<|return|>"
    )
    parsed = harmony.parse_completion(text)
    assert (parsed.analysis, parsed.final, parsed.complete) == ("a\nb", "c", True)


def test_parse_plain_and_collapsed_text() -> None:
    assert harmony.parse_completion("Just an answer.") == harmony.Completion(
        "", "Just an answer.", False, None
    )
    assert harmony.parse_completion("Just an answer.<|return|>").complete
    collapsed = harmony.parse_completion("analysis1. Find it.assistantfinalIt repairs DNA.")
    assert (collapsed.analysis, collapsed.final) == ("1. Find it.", "It repairs DNA.")


def test_parse_partial_holds_back_half_tags() -> None:
    text = ANALYSIS + FINAL_OPEN + "It rep<|ret"
    assert harmony.parse_partial(text).final == "It rep"
    assert harmony.parse_partial("<|channel|>analysis<|message|>Step<").analysis == "Step"


@pytest.mark.parametrize(
    ("text", "whole", "partial"),
    [
        # no <|message|>: plain text once over; streaming, a header or collapsed analysis may be beginning
        ("<|channel|>analysis", ("", "analysis", False, None), ("", None, False, None)),
        (" ana", ("", "ana", False, None), ("", None, False, None)),
        ("analysis 1) Read.", ("", "analysis 1) Read.", False, None), ("", None, False, None)),
        ("analysis 1) Read.assistantfinal", ("1) Read.", "", True, None), ("1) Read.", "", True, None)),
        ("analysis a <|assistantfinal", ("a <|", "", True, None), ("", None, False, None)),
        # plain text is complete when a stop token ends it; a half tag is text once the reply is over
        ("Yes.<|return|>  ", ("", "Yes.", True, "<|return|>"), ("", "Yes.", True, "<|return|>")),
        ("Yes.<|return|> no", ("", "Yes. no", False, None), ("", "Yes. no", False, None)),
        ("<|return|>", ("", None, False, "<|return|>"), ("", None, False, None)),
        ("Yes.<|ret", ("", "Yes.<|ret", False, None), ("", "Yes.", False, None)),
        # harmony: a final message cut by <|start|> is not closed; text before the first header is skipped
        (f"{FINAL_OPEN}Yes.<|start|>assistant", ("", "Yes.", False, None), None),
        (
            "Sure. <|channel|>final<|message|>Yes.<|end|>",
            ("", "Yes.", True, "<|end|>"),
            ("", "Yes.", True, "<|end|>"),
        ),
        (f"{FINAL_OPEN}Yes <|ret", ("", "Yes <|ret", False, None), ("", "Yes", False, None)),
    ],
)
def test_parse_corners(text: str, whole: tuple, partial: tuple | None) -> None:
    assert astuple(harmony.parse_completion(text)) == whole
    assert astuple(harmony.parse_partial(text)) == (partial or whole)


def test_should_stop_on_end_only_after_final() -> None:
    assert not harmony.should_stop_on_end(ANALYSIS)
    assert harmony.should_stop_on_end(ANALYSIS + FINAL_OPEN + "x<|end|>")
    assert not harmony.should_stop_on_end(ANALYSIS + FINAL_OPEN + "x")
    assert "<|end|>" not in harmony.eos_tokens()


# --- steps --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("analysis", "steps"),
    [
        ("Steps:\n1) Locate the section.\n2) Find Wu et al.", ["Locate the section.", "Find Wu et al."]),
        ("Steps: 1) Locate it. 2) Quote it. 3) Done.", ["Locate it.", "Quote it.", "Done."]),
        (
            "1. Read Table 2. It shows p < 0.05.\n2. Compare.",
            ["Read Table 2. It shows p < 0.05.", "Compare."],
        ),
        ("We need the ratio.\n1) Find it.\n2) Divide.", ["We need the ratio.", "Find it.", "Divide."]),
        ("- first\n- second\n\nthird", ["first", "second", "third"]),
        ("Figure 2. shows it. 3. lines", ["Figure 2. shows it. 3. lines"]),
        ("", []),
    ],
)
def test_split_steps(analysis: str, steps: list[str]) -> None:
    assert harmony.split_steps(analysis) == steps


# --- post-processing ----------------------------------------------------------------------------------------


def test_citations_expand_dedupe_and_drop_unknown() -> None:
    assert cited_numbers("A [2]. B [1, 3]. C [2-4] [2].") == [2, 1, 3, 4]
    assert drop_unknown_citations("A [1]. B [7]. C [1, 9].", 2) == "A [1]. B. C [1]."
    assert drop_unknown_citations("x [0] y", 2) == "x y"


def test_build_draft_cites_whole_chunks_of_given_passages() -> None:
    paper, passages = sample_paper()
    draft = build_draft("Steps:\n1) Find [2].\n2) Quote [5].", "Immature tissue [1] [7] [2].", passages, "m")
    assert draft.steps == ["Find [2].", "Quote."]
    assert draft.answer == "Immature tissue [1] [2]."
    assert [(span.chunk_id, span.start, span.end) for span in draft.cited] == [
        (passages[0].chunk.chunk_id, passages[0].chunk.start, passages[0].chunk.end),
        (passages[1].chunk.chunk_id, passages[1].chunk.start, passages[1].chunk.end),
    ]
    for span in draft.cited:  # whole chunk spans point into the canonical text
        chunk = next(p.chunk for p in passages if p.chunk.chunk_id == span.chunk_id)
        assert paper.text[span.start : span.end] == chunk.text
    assert not draft.abstained and not draft.truncated and draft.model == "m"


def test_citing_an_excerpt_cites_the_neighbours_merged_into_it() -> None:
    """The model saw the neighbour's text as part of excerpt [1]: a claim drawn from it finds it quoted."""
    paper, (first, second) = sample_paper()
    merged = second.model_copy(update={"neighbours": [first.chunk]})
    draft = build_draft("1) Read [1].", "Both protocols differ [1].", [merged], "m")
    assert [span.chunk_id for span in draft.cited] == [first.chunk.chunk_id, second.chunk.chunk_id]


@pytest.mark.parametrize(
    "final",
    [
        "The paper does not appear to answer this.",
        "This is not stated in the paper.",
        "I cannot answer this from the excerpts [1].",
        "The excerpts do not mention dosage.",
    ],
)
def test_abstention(final: str) -> None:
    _, passages = sample_paper()
    draft = build_draft("1) Look.\n2) Nothing.", final, passages, "m")
    assert draft.abstained and draft.answer == ABSTAIN_ANSWER and draft.cited == []
    assert draft.steps == ["Look.", "Nothing."]


def test_hedge_after_an_answer_is_not_abstention() -> None:
    assert not is_abstention("Both were immature [1]. The paper does not state why.")


def test_first_sentence_is_read_past_abbreviations() -> None:
    # The shared sentence splitter: "Fig." and "et al." do not end the first sentence.
    assert is_abstention("Apart from Fig. 2, the paper does not state the dose.")
    assert is_abstention("Wu et al. are cited, but the excerpts do not mention dosage. Sorry.")
    assert not is_abstention("The dose was 5 mg (Fig. 2). The paper does not state why.")


def test_truncated_without_final_answers_from_analysis() -> None:
    _, passages = sample_paper()
    draft = build_draft("1) Locate.\n2) Both were immature [1].", None, passages, "m")
    assert draft.truncated and draft.answer == "Both were immature [1]."
    assert [span.chunk_id for span in draft.cited] == [passages[0].chunk.chunk_id]
    empty = build_draft("", None, passages, "m")
    assert empty.abstained and empty.truncated


def test_stream_assembler_emits_steps_then_answer_deltas() -> None:
    assembler = StreamAssembler()
    events = list(assembler.update("Steps:\n1) Locate.", None))
    assert events == []  # step 1 may still grow
    events += assembler.update("Steps:\n1) Locate.\n2) Quo", None)
    events += assembler.update("Steps:\n1) Locate.\n2) Quote.", "Both")
    events += assembler.update("Steps:\n1) Locate.\n2) Quote.", "Both were immature.", finished=True)
    assert [(event.event, event.data) for event in events] == [
        ("step", "Locate."),
        ("step", "Quote."),
        ("answer", "Both"),
        ("answer", " were immature."),
    ]
