"""The gpt-oss "harmony" format: building and rendering prompts, stopping, and parsing completions.

Pure Python (no torch import): the OpenAI backend parses harmony-tagged text without loading transformers.

Prompt (rendered by the checkpoint's own chat template, `add_generation_prompt=True`)::

    <|start|>system<|message|>…Reasoning: low…<|end|><|start|>developer<|message|># Instructions…<|end|>
    <|start|>user<|message|>Paper: …<|end|><|start|>assistant

Completion::

    <|channel|>analysis<|message|>Steps: 1) …<|end|><|start|>assistant<|channel|>final<|message|>…<|return|>

An Unsloth-trained model may close the final message with `<|end|>` instead of `<|return|>`; both count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from pmcqa.app.answering import prompts
from pmcqa.index.models import Chunk, PaperRecord, Passage

START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
RETURN, CALL, CONSTRAIN = "<|return|>", "<|call|>", "<|constrain|>"
STARTOFTEXT, ENDOFTEXT, ENDOFPROMPT = "<|startoftext|>", "<|endoftext|>", "<|endofprompt|>"

# o200k_harmony specials 199998..200018; the ones without a name are <|reserved_N|> (N = the id).
_NAMED_SPECIALS = {
    199998: STARTOFTEXT,
    199999: ENDOFTEXT,
    200002: RETURN,
    200003: CONSTRAIN,
    200005: CHANNEL,
    200006: START,
    200007: END,
    200008: MESSAGE,
    200012: CALL,
    200018: ENDOFPROMPT,
}
HARMONY_SPECIAL_TOKENS: list[str] = [
    _NAMED_SPECIALS.get(token_id, f"<|reserved_{token_id}|>") for token_id in range(199998, 200019)
]

# The fullwidth vertical line looks like "|" but is an ordinary character: "<｜end｜>" cannot become a control
# token in any tokenizer, so paper text can never open or close a turn.
_LOOKALIKE_BAR = "\uff5c"

# A minimal harmony template, faithful to openai/gpt-oss-20b's (2025-08-08) for system/developer, user and
# assistant(+thinking) turns, without tools. Used when a checkpoint ships no template, and by the test model.
# Extra over the official one: `current_date` pins the date line (the official template reads the clock).
HARMONY_CHAT_TEMPLATE = (
    "{%- if reasoning_effort is not defined or not reasoning_effort -%}"
    "{%- set reasoning_effort = 'medium' -%}{%- endif -%}"
    "{%- if model_identity is not defined or not model_identity -%}"
    "{%- set model_identity = 'You are ChatGPT, a large language model trained by OpenAI.' -%}{%- endif -%}"
    "{%- if current_date is defined and current_date -%}{%- set today = current_date -%}"
    "{%- else -%}{%- set today = strftime_now('%Y-%m-%d') -%}{%- endif -%}"
    "<|start|>system<|message|>{{ model_identity }}\nKnowledge cutoff: 2024-06\nCurrent date: {{ today }}\n\n"
    "Reasoning: {{ reasoning_effort }}\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
    "{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}"
    "<|start|>developer<|message|># Instructions\n\n{{ messages[0]['content'] }}\n\n<|end|>"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "<|start|>user<|message|>{{ message['content'] }}<|end|>"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set thinking = message.get('thinking') or message.get('reasoning_content')"
    " or message.get('reasoning') -%}"
    "{%- if loop.last and not add_generation_prompt -%}"
    "{%- if thinking -%}<|start|>assistant<|channel|>analysis<|message|>{{ thinking }}<|end|>{%- endif -%}"
    "<|start|>assistant<|channel|>final<|message|>{{ message['content'] }}<|return|>"
    "{%- else -%}"
    "<|start|>assistant<|channel|>final<|message|>{{ message['content'] }}<|end|>"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)


class PromptStructureError(RuntimeError):
    """The rendered prompt's control tokens are not the expected system/developer/user/assistant skeleton."""


class ChatTokenizer(Protocol):
    """The slice of a Hugging Face tokenizer this module uses."""

    chat_template: Any
    added_tokens_decoder: dict[int, Any]

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...

    def convert_tokens_to_ids(self, tokens: str) -> Any: ...

    def decode(self, ids: list[int], **kwargs: Any) -> str: ...


# --- building the messages ----------------------------------------------------------------------------------


def neutralize(text: str) -> str:
    """Make every `<|…|>` in untrusted text plain characters, so it can never tokenize as a control token."""
    return text.replace("<|", "<" + _LOOKALIKE_BAR).replace("|>", _LOOKALIKE_BAR + ">")


# A bracketed list of numbers ("[3]", "[1, 2]", "[4–6]"), its numbers in group 1: how the model cites
# excerpts, and how papers write their own references. The one pattern of both (postprocess, claims).
CITATION_MARKER = r"\[(\d{1,3}(?:\s*[,;\u2013-]\s*\d{1,3})*)\]"
# The paper's own reference markers read exactly like the excerpt labels the model cites: a model copying
# the paper's wording cited excerpt 3 for the paper's reference 3.
_PAPER_MARKER = re.compile(CITATION_MARKER)


def paper_markers(text: str) -> str:
    """`text` with the paper's bracketed reference numbers written "(ref. 3)", so that in an excerpt only the
    excerpt labels are bracketed numbers."""
    return _PAPER_MARKER.sub(r"(ref. \1)", text)


def excerpt_chunks(passage: Passage) -> list[Chunk]:
    """The chunks of one excerpt as the model sees it: the passage and the neighbours merged in for context,
    in paper order (so sentences read on). Citing the excerpt cites them all."""
    return sorted([passage.chunk, *passage.neighbours], key=lambda chunk: chunk.ordinal)


def _passage_text(passage: Passage) -> str:
    return paper_markers(" ".join(" ".join(chunk.text.split()) for chunk in excerpt_chunks(passage)))


def _section_label(chunk: Chunk) -> str:
    label = chunk.section or prompts.UNSECTIONED_LABEL
    return f"{label}; {chunk.label}" if chunk.label else label


def format_excerpts(passages: list[Passage]) -> str:
    """Number the passages 1..n (the numbers the model cites as [n])."""
    lines = [
        prompts.EXCERPT_TEMPLATE.format(
            number=number,
            section=neutralize(_section_label(passage.chunk)),
            text=neutralize(_passage_text(passage)),
        )
        for number, passage in enumerate(passages, start=1)
    ]
    return "\n".join(lines)


def build_user_message(question: str, passages: list[Passage], paper: PaperRecord) -> str:
    return prompts.USER_TEMPLATE.format(
        title=neutralize(paper.title.strip() or paper.paper_id),
        excerpts=format_excerpts(passages),
        question=neutralize(question.strip()),
        instruction=prompts.CITATION_INSTRUCTION,
    )


def build_messages(question: str, passages: list[Passage], paper: PaperRecord) -> list[dict[str, str]]:
    """Chat messages for both backends; `system` becomes the harmony developer message, as in training."""
    return [
        {"role": "system", "content": prompts.DEVELOPER_PROMPT},
        {"role": "user", "content": build_user_message(question, passages, paper)},
    ]


# --- rendering and checking the prompt ----------------------------------------------------------------------


def render_prompt(
    tokenizer: ChatTokenizer,
    messages: list[dict[str, str]],
    reasoning_effort: str = "low",
    current_date: str | None = None,
) -> str:
    """Render with the checkpoint's own template (else ours); `current_date` pins the date where supported."""
    kwargs: dict[str, Any] = {"reasoning_effort": reasoning_effort}
    if current_date is not None:
        kwargs["current_date"] = current_date
    if not tokenizer.chat_template:
        kwargs["chat_template"] = HARMONY_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def control_token_ids(tokenizer: ChatTokenizer) -> dict[int, str]:
    """Ids of every harmony control token the tokenizer knows (`<|…|>` added tokens)."""
    return {
        token_id: str(getattr(token, "content", token))
        for token_id, token in tokenizer.added_tokens_decoder.items()
        if str(getattr(token, "content", token)).startswith("<|")
    }


def prompt_skeleton(tokenizer: ChatTokenizer, ids: list[int]) -> list[str]:
    """The prompt's structure: its control tokens in order, each `<|start|>` followed by its role header."""
    controls = control_token_ids(tokenizer)
    skeleton: list[str] = []
    for index, token_id in enumerate(ids):
        if token_id not in controls:
            continue
        skeleton.append(controls[token_id])
        if controls[token_id] == START:
            skeleton.append(_header_after(tokenizer, ids, index + 1, controls))
    return skeleton


def _header_after(tokenizer: ChatTokenizer, ids: list[int], begin: int, controls: dict[int, str]) -> str:
    end = begin
    while end < len(ids) and ids[end] not in controls:
        end += 1
    return tokenizer.decode(ids[begin:end]).strip()


def verify_prompt_structure(tokenizer: ChatTokenizer, ids: list[int]) -> None:
    """Refuse a prompt whose control tokens aren't [system], developer, user, then `<|start|>assistant`.

    Paper text is escaped before rendering; this proves on the token ids that nothing slipped through.
    """
    skeleton = prompt_skeleton(tokenizer, ids)
    if skeleton[:1] == [STARTOFTEXT]:  # a template that adds bos is still well-formed
        skeleton = skeleton[1:]
    turn = [MESSAGE, END]
    expected_tail = [START, "developer", *turn, START, "user", *turn, START, "assistant"]
    allowed = (expected_tail, [START, "system", *turn, *expected_tail])
    if skeleton not in allowed:
        raise PromptStructureError(f"unexpected prompt structure: {skeleton}")


# --- stopping -----------------------------------------------------------------------------------------------


def eos_tokens() -> list[str]:
    """Plain eos: `<|return|>` (answer done), `<|call|>` (tool call); never `<|end|>`, which ends analysis."""
    return [RETURN, CALL]


def should_stop_on_end(generated_text: str) -> bool:
    """`<|end|>` just arrived: stop only if it closes the final message (Unsloth-style ending)."""
    return generated_text.rstrip().endswith(END) and f"{CHANNEL}final" in generated_text


# --- parsing ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """A parsed assistant completion."""

    analysis: str
    final: str | None
    complete: bool  # a final message closed by <|return|>, <|end|> or <|call|>
    stop: str | None  # the token that closed the last message, None when the text just ran out

    @property
    def truncated(self) -> bool:
        return not self.complete


_MESSAGE_RE = re.compile(
    r"(?:<\|start\|>[^<]*)?<\|channel\|>(?P<channel>[A-Za-z_]+)[^<]*(?:<\|constrain\|>[^<]*)?<\|message\|>"
    r"(?P<body>.*?)(?P<stop><\|end\|>|<\|return\|>|<\|call\|>|(?=<\|start\|>)|$)",
    re.DOTALL,
)
# What `skip_special_tokens=True` (or some servers) leave of harmony: "analysis…assistantfinal…".
COLLAPSED_ANALYSIS, COLLAPSED_FINAL = "analysis", "assistantfinal"
_COLLAPSED_RE = re.compile(
    rf"^\s*{COLLAPSED_ANALYSIS}(?P<analysis>.*?){COLLAPSED_FINAL}(?P<final>.*)$", re.DOTALL
)
_PARTIAL_TAG_RE = re.compile(r"<(?:\|[A-Za-z_0-9]*\|?)?$")


def parse_completion(text: str) -> Completion:
    """Split a raw completion into analysis and final; text without harmony tags is all final."""
    if MESSAGE not in text:
        collapsed = _COLLAPSED_RE.match(text)
        if collapsed:
            return Completion(collapsed["analysis"].strip(), collapsed["final"].strip(), True, None)
        # No channels (a server's plain content, or a model that skipped the format): all final. Complete only
        # if a stop token closed it; servers report truncation separately (finish_reason).
        plain = _strip_controls(text).strip()
        stop = next((tag for tag in (RETURN, END, CALL) if text.rstrip().endswith(tag)), None)
        return Completion("", plain or None, bool(plain) and stop is not None, stop)
    analysis: list[str] = []
    for match in _MESSAGE_RE.finditer(text):
        channel, body, stop = match["channel"], match["body"], match["stop"] or None
        if channel == "final":
            return Completion(_join(analysis), _strip_controls(body).strip(), stop is not None, stop)
        if channel == "analysis":
            analysis.append(_strip_controls(body).strip())
    return Completion(_join(analysis), None, False, None)


def parse_partial(text: str) -> Completion:
    """Parse a completion still being streamed: hold back a control tag or header that is only half there, and
    collapsed harmony ("analysis…assistantfinal…") until its final begins, so its analysis never reads as the
    answer."""
    text = _PARTIAL_TAG_RE.sub("", text)
    if MESSAGE not in text and (text.lstrip().startswith("<|") or _may_be_collapsed(text)):
        return Completion("", None, False, None)  # "<|channel|>ana…": no body yet
    return parse_completion(text)


def _may_be_collapsed(text: str) -> bool:
    head = text.lstrip()
    return COLLAPSED_ANALYSIS.startswith(head) or (
        head.startswith(COLLAPSED_ANALYSIS) and COLLAPSED_FINAL not in head
    )


def _join(parts: list[str]) -> str:
    return "\n".join(part for part in parts if part)


def _strip_controls(text: str) -> str:
    return re.sub(r"<\|[A-Za-z_0-9]+\|>", "", text)


# --- steps --------------------------------------------------------------------------------------------------

_STEPS_HEADER_RE = re.compile(r"^\s*(?:steps?|reasoning|analysis)\s*:\s*", re.IGNORECASE)
_LINE_MARKER_RE = re.compile(r"^[ \t]*(?:step\s*)?(\d{1,2})\s*[.):]\s+", re.IGNORECASE | re.MULTILINE)
_INLINE_MARKER_RE = re.compile(r"(?:^|(?<=\s))(?:step\s*)?(\d{1,2})\)\s+", re.IGNORECASE)
_BULLET_RE = re.compile(r"^\s*[-*•]\s+")


def split_steps(analysis: str) -> list[str]:
    """Numbered reasoning steps: "1) …" / "1. …" lines, inline "1) … 2) …", else one step per line."""
    text = _STEPS_HEADER_RE.sub("", analysis.strip())
    steps = numbered_steps(text)
    if steps or not text:
        return steps
    lines = [_BULLET_RE.sub("", line).strip() for line in text.splitlines()]
    return [line for line in lines if line]


def numbered_steps(analysis: str) -> list[str]:
    """Steps when the analysis is numbered (at least "1)" and "2)"), else []."""
    text = _STEPS_HEADER_RE.sub("", analysis.strip())
    for pattern in (_LINE_MARKER_RE, _INLINE_MARKER_RE):
        steps = _split_on_sequence(text, pattern)
        if steps:
            return steps
    return []


def _split_on_sequence(text: str, pattern: re.Pattern[str]) -> list[str]:
    # Only markers counting 1, 2, 3 … split, so "Figure 2. shows" or "p < 0.05) " inside a step don't.
    cuts: list[tuple[int, int]] = []
    for match in pattern.finditer(text):
        if int(match.group(1)) == len(cuts) + 1:
            cuts.append((match.start(), match.end()))
    if len(cuts) < 2:
        return []
    bounds = [*(start for start, _ in cuts[1:]), len(text)]
    steps = [text[body:stop] for (_, body), stop in zip(cuts, bounds, strict=True)]
    preamble = text[: cuts[0][0]]  # "We need X." before "1)" is reasoning too
    return [" ".join(step.split()) for step in (preamble, *steps) if step.strip()]
