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

import bisect
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
# One parser reads a completion piece by piece (`CompletionStream`); a whole completion is it fed once.


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


_HEADER = (
    r"(?:<\|start\|>[^<]*)?<\|channel\|>(?P<channel>[A-Za-z_]+)[^<]*(?:<\|constrain\|>[^<]*)?<\|message\|>"
)
_HEADER_RE = re.compile(_HEADER)
_STOP_RE = re.compile(r"<\|end\|>|<\|return\|>|<\|call\|>|(?=<\|start\|>)")
# What `skip_special_tokens=True` (or some servers) leave of harmony: "analysis…assistantfinal…".
COLLAPSED_ANALYSIS, COLLAPSED_FINAL = "analysis", "assistantfinal"
# A control tag only half there at the end of the text ("<", "<|", "<|ret"), before a last newline too.
_PARTIAL_TAG_RE = re.compile(r"<(?:\|[A-Za-z_0-9]*\|?)?$")
# A tail that may still be (or, followed by a last newline, be read as) a half control tag: `_PARTIAL_TAG_RE`.
_TAG_TAIL_RE = re.compile(r"<(?:\|[A-Za-z_0-9]*\|?)?\n?")
# A header holds at most four tags (start, channel, constrain, message): one being read begins at one of the
# last four "<" of the text, at one that is (or may become) "<|start|>" or "<|channel|>".
_HEADER_TAGS, _HEADER_OPENERS = 4, (START, CHANNEL)


def parse_completion(text: str) -> Completion:
    """Split a raw completion into analysis and final; text without harmony tags is all final."""
    return CompletionStream(text).finish()


def parse_partial(text: str) -> Completion:
    """Parse a completion still being streamed: hold back a control tag or header that is only half there, and
    collapsed harmony ("analysis…assistantfinal…") until its final begins, so its analysis never reads as the
    answer."""
    return CompletionStream(text).completion


@dataclass(frozen=True)
class Progress:
    """What a streamed completion gained with its latest piece: text appended to the analysis and to the final
    message (`final_begun`: a final message has begun, so the analysis is over). Once plain or collapsed text
    has turned into harmony, `whole` is instead the completion so far (`parse_partial` of all of it)."""

    analysis: str = ""
    final: str = ""
    final_begun: bool = False
    whole: Completion | None = None


class _Stripped:
    """`text.strip()` of a text that only grows, given as what it gained: trailing whitespace waits for what
    follows it."""

    def __init__(self) -> None:
        self.begun = False
        self._space = ""

    def add(self, text: str) -> str:
        if not self.begun:
            text = text.lstrip()
            if not text:
                return ""
            self.begun = True
        core = text.rstrip()
        if not core:
            self._space += text
            return ""
        gained, self._space = self._space + core, text[len(core) :]
        return gained


class CompletionStream:
    """A completion arriving in pieces, each read once: after every `feed`, `completion` is the parse of the
    text so far, holding back a control tag or header only half there and collapsed harmony until its final
    begins (`parse_partial`); `finish` reads what was held back as it stands (`parse_completion`).

    The text is harmony messages (a header, a body, a stop token), the first final message ending it; or, with
    no `<|message|>`, collapsed harmony ("analysis…assistantfinal…"); else plain text, all final, complete
    when it ends with a stop token. A piece costs time in its own length (and that of a header or tag it
    completes). Plain or collapsed text that turns into harmony (no model writes it) is read again from its
    start as harmony messages, and then gives the whole completion at every piece (`Progress.whole`)."""

    def __init__(self, text: str = "") -> None:
        self._pieces: list[str] = []  # all of it, to read again from the start
        self._length = 0  # of all of it
        self._holding = True  # hold back what may still change; not once the completion is finished
        self._whole = False  # turned into harmony: read again
        self._restart("start")
        if text:
            self.feed(text)

    def _restart(self, state: str) -> None:
        self._state = state  # start, plain, between (messages), body, done; collapsed, collapsed final
        self._pending = ""  # what may still change: the undecided start, a header, a tag's beginning
        self._channel = "final" if state == "plain" else ""  # of the message whose body is being read
        self._body = _Stripped()
        self._analysis: list[str] = []
        self._final: list[str] = []
        self._final_begun = False
        self._complete = False
        self._stop: str | None = None
        self._collapsed_start = 0  # where collapsed harmony's analysis begins

    @property
    def completion(self) -> Completion:
        final = "".join(self._final) if self._final_begun else None
        return Completion("".join(self._analysis), final, self._complete, self._stop)

    def feed(self, piece: str) -> Progress:
        self._pieces.append(piece)
        self._length += len(piece)
        analysis, final = len(self._analysis), len(self._final)
        self._read_all(self._pending + piece)
        if self._whole:
            return Progress(whole=self.completion)
        return Progress("".join(self._analysis[analysis:]), "".join(self._final[final:]), self._final_begun)

    def finish(self) -> Completion:
        """The completion once its text is over (no `feed` after it): nothing held back. With no harmony
        message or collapsed harmony's final in it, all of it is plain text."""
        self._holding = False
        if self._state == "start":  # all of it is pending: "ana", "<|chan"
            self._state, self._channel = "plain", "final"
        self._read_all(self._pending)
        if self._state == "collapsed" or (self._state == "between" and MESSAGE not in "".join(self._pieces)):
            self._restart("plain")
            self._read_all("".join(self._pieces))
        return self.completion

    def _read_all(self, text: str) -> None:
        self._pending = ""
        while text:  # each step consumes some of the text, or keeps it pending
            text = self._read(text)

    def _read(self, text: str) -> str:
        """Read the start of `text` in the current state; what is left to read."""
        if self._state == "start":
            return self._read_start(text)
        if self._state == "between":
            return self._read_header(text)
        if self._state == "body":
            return self._read_body(text)
        if self._state == "collapsed":
            return self._read_collapsed(text)
        if self._state in ("plain", "collapsed final"):
            if MESSAGE in text:
                return self._read_again_as_harmony()
            self._read_body_text(text, controls=self._state == "plain")
        return ""  # done: nothing after the final message counts

    def _read_start(self, text: str) -> str:
        head = _PARTIAL_TAG_RE.sub("", text).lstrip()
        if head.startswith("<|"):
            self._state = "between"
        elif head.startswith(COLLAPSED_ANALYSIS):
            self._state = "collapsed"
            self._collapsed_start = len(text) - len(text.lstrip()) + len(COLLAPSED_ANALYSIS)
        elif COLLAPSED_ANALYSIS.startswith(head):  # "" ("<" may become "<|"), or "ana" of "analysis"
            self._pending = text
            return ""
        else:
            self._state, self._channel = "plain", "final"
        return text

    def _read_header(self, text: str) -> str:
        header = _HEADER_RE.search(text)
        if header is None:
            self._pending = _header_tail(text)
            return ""
        self._state, self._channel, self._body = "body", header["channel"], _Stripped()
        self._final_begun = self._final_begun or self._channel == "final"
        return text[header.end() :]

    def _read_body(self, text: str) -> str:
        stop = _STOP_RE.search(text)
        if stop is None:
            self._read_body_text(text)
            return ""
        self._give(_strip_controls(text[: stop.start()]))
        if self._channel == "final":
            self._state, self._stop = "done", stop.group() or None  # "": cut by <|start|>, not closed
            self._complete = self._stop is not None
        else:
            self._state = "between"
        return text[stop.end() :]

    def _read_body_text(self, text: str, *, controls: bool = True) -> None:
        """Body text with no stop in it: all of it but a tail that may still become a control tag; `controls`:
        complete control tags are dropped (not in collapsed harmony's final, where none are expected)."""
        last = text.rfind("<")
        if self._holding and last >= 0 and _TAG_TAIL_RE.fullmatch(text, last):
            text, self._pending = text[:last], text[last:]
        self._give(_strip_controls(text) if controls else text)
        # Plain text is complete only if a stop token ends it; servers report truncation (finish_reason).
        if self._state == "plain" and text.rstrip():
            self._stop = next((tag for tag in (RETURN, END, CALL) if text.rstrip().endswith(tag)), None)
            self._complete = self._final_begun and self._stop is not None

    def _read_collapsed(self, text: str) -> str:
        """Collapsed harmony's analysis, until "assistantfinal" (outside a half tag) ends it."""
        if MESSAGE in text:
            return self._read_again_as_harmony()
        offset = self._length - len(text)  # `text` is the end of all of it
        settled = _PARTIAL_TAG_RE.sub("", text) if self._holding else text
        found = settled.find(COLLAPSED_FINAL, max(self._collapsed_start - offset, 0))
        if found < 0:  # keep what a "assistantfinal" may begin in: a half tag, and the characters before it
            self._pending = text[max(len(settled) - len(COLLAPSED_FINAL) + 1, 0) :]
            return ""
        analysis = "".join(self._pieces)[self._collapsed_start : offset + found].strip()
        if analysis:
            self._analysis.append(analysis)
        self._state, self._channel, self._final_begun, self._complete = "collapsed final", "final", True, True
        return text[found + len(COLLAPSED_FINAL) :]

    def _read_again_as_harmony(self) -> str:
        """Plain or collapsed text with a `<|message|>` in it is harmony after all: read all of it again."""
        self._whole = True
        self._restart("between")
        return "".join(self._pieces)

    def _give(self, body: str) -> None:
        first = not self._body.begun
        gained = self._body.add(body)
        if not gained:
            return
        if self._channel == "final":
            self._final_begun = True  # plain text is final once there is some
            self._final.append(gained)
        elif self._channel == "analysis":
            if first and self._analysis:  # messages are joined by a newline
                self._analysis.append("\n")
            self._analysis.append(gained)


def _header_tail(text: str) -> str:
    """The end of `text` where a header may still be beginning (none found in it): from the earliest of its
    last four "<" that opens, or may open, "<|start|>" or "<|channel|>"."""
    starts: list[int] = []
    end = len(text)
    while len(starts) < _HEADER_TAGS and (end := text.rfind("<", 0, end)) >= 0:
        starts.append(end)
    for start in reversed(starts):
        if any(text.startswith(tag, start) or tag.startswith(text[start:]) for tag in _HEADER_OPENERS):
            return text[start:]
    return ""


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
    tracker = StepTracker()
    tracker.extend(analysis)
    return tracker.steps


# One reader of step markers, `StepTracker`, reads an analysis piece by piece; a whole one is it fed once.
# Every character a step marker (of either pattern) can hold: a marker not read yet lies in the text's
# trailing run of them.
_OUTSIDE_MARKER_RE = re.compile(r"[^\s\d.):step]", re.IGNORECASE)
# Every character the "Steps:" header can hold: until another arrives, the header may still be growing.
_HEADER_ONLY_RE = re.compile(r"[aeginloprsty\s:]*", re.IGNORECASE)


class _Text:
    """A text that grows in pieces, read in slices without joining all of it."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._starts: list[int] = []
        self.length = 0

    def append(self, piece: str) -> None:
        if piece:
            self._pieces.append(piece)
            self._starts.append(self.length)
            self.length += len(piece)

    def slice(self, start: int, stop: int) -> str:
        index = max(bisect.bisect_right(self._starts, start) - 1, 0)
        parts: list[str] = []
        while index < len(self._pieces) and self._starts[index] < stop:
            offset = self._starts[index]
            parts.append(self._pieces[index][max(start - offset, 0) : stop - offset])
            index += 1
        return "".join(parts)


class _Sequence:
    """The cuts of one marker pattern in a growing text, and the steps between them. Only markers counting 1,
    2, 3 … cut, so "Figure 2. shows" or "p < 0.05) " inside a step don't."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.edges = [0]  # where the steps begin and end: 0, then each cut's start and end
        self.scanned = 0  # where the last marker ended: the next search starts there
        self._steps: list[str] = []  # those before the last cut, read
        self._unread = 0  # the edge the first step not read yet begins at

    @property
    def numbered(self) -> bool:
        return len(self.edges) >= 5  # at least "1)" and "2)"

    def scan(self, text: _Text, resume: int) -> None:
        """Read the markers beginning at or after `resume` (none before it can be new)."""
        begin = max(resume - 1, 0)  # one character before, for `^` and the look-behind
        # Stripped as `numbered_steps` strips the analysis: each marker found is followed by a word, final.
        window = text.slice(begin, text.length).rstrip()
        for match in self.pattern.finditer(window, resume - begin):
            self.scanned = begin + match.end()
            if int(match.group(1)) == len(self.edges) // 2 + 1:
                self.edges += (begin + match.start(), self.scanned)

    def complete(self, text: _Text) -> list[str]:
        """The preamble and each step before the last cut (those the latest cuts closed read in one slice)."""
        if self._unread < len(self.edges) - 1:
            first = self.edges[self._unread]
            span = text.slice(first, self.edges[-2])
            bounds = zip(self.edges[self._unread : -1 : 2], self.edges[self._unread + 1 :: 2], strict=True)
            self._steps += filter(None, (" ".join(span[a - first : b - first].split()) for a, b in bounds))
            self._unread = len(self.edges) - 1
        return self._steps

    def all(self, text: _Text) -> list[str]:
        """The steps and the one after the last cut."""
        last = " ".join(text.slice(self.edges[-1], text.length).split())
        return [step for step in (*self.complete(text), last) if step]


class StepTracker:
    """The numbered steps of an analysis that grows, in time linear in its length: each piece is read once,
    with the run of marker characters it may continue."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._head: list[str] | None = []  # the start, while the "Steps:" header may still grow
        self._text = _Text()  # the analysis without the header, as `numbered_steps` splits it
        self._run_start = 0  # where the text's trailing run of marker characters begins
        self._sequences = (_Sequence(_LINE_MARKER_RE), _Sequence(_INLINE_MARKER_RE))  # line markers win

    @property
    def analysis(self) -> str:
        return "".join(self._pieces)

    @property
    def complete(self) -> list[str]:
        """The steps before the one being written: `steps[:-1]`."""
        return next((sequence.complete(self._text) for sequence in self._sequences if sequence.numbered), [])

    @property
    def steps(self) -> list[str]:
        """All the steps (`numbered_steps`): those complete, and the one being written."""
        return next((sequence.all(self._text) for sequence in self._sequences if sequence.numbered), [])

    def extend(self, text: str) -> None:
        if not text:
            return
        self._pieces.append(text)
        if self._head is not None:
            self._head.append(text)
            if _HEADER_ONLY_RE.fullmatch(text):
                return  # no marker yet, and a header may still be growing
            head = "".join(self._head).lstrip()
            header = _STEPS_HEADER_RE.match(head.rstrip())  # settled: something no header holds follows
            self._head, text = None, head[header.end() if header else 0 :]
        self._grow(text)

    def _grow(self, text: str) -> None:
        run_start, start = self._run_start, self._text.length
        self._text.append(text)
        outside = _OUTSIDE_MARKER_RE.search(text[::-1])
        if outside is not None:
            self._run_start = start + len(text) - outside.start()
        for sequence in self._sequences:
            sequence.scan(self._text, max(run_start, sequence.scanned))
            if sequence.numbered:  # it splits the analysis for good: no later sequence counts
                break
