"""Answer through an OpenAI-compatible server (vLLM, llama.cpp `llama-server`, Ollama) serving gpt-oss.

Servers tokenize the prompt themselves with the harmony template, so untrusted text is neutralized before it
is sent (`harmony.build_messages`). The analysis channel comes back in a server-specific place:
`message.reasoning` (vLLM now, Ollama's OpenAI endpoint), `reasoning_content` (older vLLM, llama.cpp), or
inline harmony tags in `content` (llama.cpp `--reasoning-format none`); all are read, then post-processed
exactly like the transformers backend's output.

Readiness (`unavailable()`: GET /models lists our model) is cached for `openai_ready_ttl_s`, so /ask does not
cost a round trip, and an unreachable server is reported as such ("cannot reach http://...: connection
refused"); a connection lost during generation is a `BackendNotReady` with the same message. The request id
of the request being served goes to the server as `X-Request-ID`.

One deadline per answer (`generation_timeout_s`): each try of a chat call gets only the time left, and the
one retry (a refused or dropped connection, a 408/409/429/5xx, as the `openai` client retries) happens only
when the first try failed early enough that half the deadline is left. A hung server is a `GenerationTimeout`
at the deadline, never after a second full timeout. The client's timeout is per read, not per reply, so a
reply still being read at the deadline has its connection cut there (`ReplyCut`): a server that stalls
mid-reply, or keeps the connection alive meanwhile, does not hold the thread and the connection past it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

import openai
from openai import OpenAI

from pmcqa.app.answering import harmony
from pmcqa.app.answering.base import AnswerDelta, BackendEvent, Draft, StepEvent
from pmcqa.app.answering.postprocess import StreamAssembler, build_draft
from pmcqa.app.errors import BackendNotReady, GenerationTimeout, ModelServerError, ServiceError
from pmcqa.core.logs import BACKEND_STATUS_LOGGER, REQUEST_ID_HEADER, request_id
from pmcqa.core.settings import Settings
from pmcqa.index.models import PaperRecord, Passage

log = logging.getLogger(__name__)
status_log = logging.getLogger(BACKEND_STATUS_LOGGER)

REASONING_FIELDS = ("reasoning", "reasoning_content", "thinking")


def reasoning_of(message: Any) -> str:
    """The analysis text of a message or stream delta, whichever field the server used."""
    extra = getattr(message, "model_extra", None) or {}
    for key in REASONING_FIELDS:
        value = getattr(message, key, None) or extra.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _encodable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _has_harmony_tags(content: str) -> bool:
    return "<|" in content or content.lstrip().startswith(harmony.COLLAPSED_ANALYSIS)


def split_reply(
    reasoning: str, content: str | None, finish_reason: str | None, *, partial: bool = False
) -> tuple[str, str | None, bool]:
    """(analysis, final, truncated) of a server reply. Cut: finish_reason "length" (max_tokens), or none at
    all once the reply is over (a stream the server closed mid-answer). Text no UTF-8 can carry (a lone
    surrogate) becomes "?": it could be neither embedded for the claim check nor sent as JSON.

    A reply still streaming (`partial`) is always read as harmony may be: its first delta "<" may be the start
    of "<|channel|>", and "ana" of collapsed "analysis…assistantfinal…"; neither is answer text yet."""
    reasoning, content = _encodable(reasoning), _encodable(content or "")
    cut = finish_reason == "length" or (finish_reason is None and not partial)
    if content and (partial or _has_harmony_tags(content)):
        parsed = (harmony.parse_partial if partial else harmony.parse_completion)(content)
        analysis = "\n".join(part for part in (reasoning, parsed.analysis) if part)
        return analysis, parsed.final, cut or parsed.final is None
    return reasoning, content.strip() or None, cut


def connection_problem(error: BaseException) -> str:
    """The root cause of a failed connection in a few words ("connection refused", "timed out", ...)."""
    if isinstance(error, openai.APITimeoutError):
        return "timed out"
    cause: BaseException = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(cause).strip()) or type(cause).__name__
    return text[:1].lower() + text[1:]


class ReplyStream:
    """A streamed reply's reasoning and content deltas as steps and answer deltas, each delta read once: the
    content through `harmony.CompletionStream`, its own analysis joined after the reasoning as `split_reply`
    joins them. Where that stops holding (reasoning again after the content's analysis, content parsed
    whole), every delta splits the whole reply, as `split_reply(partial=True)`."""

    def __init__(self) -> None:
        self.assembler = StreamAssembler()
        self._parser = harmony.CompletionStream()
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._reasoned = False  # some reasoning came
        self._content_analysis = False  # the content's own analysis has begun
        self._whole = False

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    @property
    def content(self) -> str:
        return "".join(self._content)

    def add(self, reasoning: str, content: str) -> Iterator[StepEvent | AnswerDelta]:
        reasoning, content = _encodable(reasoning), _encodable(content)
        self._reasoning.append(reasoning)
        self._content.append(content)
        self._whole = self._whole or bool(reasoning and self._content_analysis)
        progress = None if self._whole else self._parser.feed(content)
        if progress is None or progress.whole is not None:
            self._whole = True
            analysis, final, _ = split_reply(self.reasoning, self.content, None, partial=True)
            yield from self.assembler.update(analysis, final)
            return
        self._reasoned = self._reasoned or bool(reasoning)
        gained = reasoning
        if progress.analysis:
            if self._reasoned and not self._content_analysis:
                gained += "\n"
            self._content_analysis = True
            gained += progress.analysis
        yield from self.assembler.grow(gained, progress.final, final_begun=progress.final_begun)


class ReplyCut:
    """Shuts down the connection of the reply being read (`watch`) at `deadline`, or as soon as `cancelled`
    is set, unless the reply is over first (`cancel`, leaving the `with` block). The client's timeout is per
    read: a reply that stalls after some chunks held its thread up to twice the deadline, and one kept alive
    meanwhile (SSE comments, a trickled body) for as long as the server liked; a stalled stream whose client
    went away held it until the deadline. Shutting the socket down wakes the read blocked on it at once
    (closing it from another thread does not), so the call fails or ends there; `fired` says the deadline
    did it, `cancelled` that the caller did.

    A thread per reply waits for the deadline on `cancelled`, or on the reply's end when there is no
    `cancelled`. A reply over in time with `cancelled` given leaves that thread waiting until `cancelled`
    is set or the deadline: callers set it once they stop reading (the service does at a stream's end).

    Only HTTP/1.1 replies (the `network_stream` extension) are cut: their connection carries this reply
    alone. Others (a transport without sockets) keep the per-read bound."""

    def __init__(self, deadline: float, cancelled: threading.Event | None = None) -> None:
        self.deadline = deadline
        self.cancelled = cancelled
        self.fired = threading.Event()
        self._over: threading.Event | None = None  # set when the reply being watched is over

    def watch(self, response: Any) -> None:
        """Cut `response`'s connection at the deadline or on `cancelled` (an httpx response: headers read,
        body not yet)."""
        network = getattr(response, "extensions", {}).get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
        if not isinstance(sock, socket.socket):
            return
        self.cancel()  # a retry's reply replaces the first try's
        over = self._over = threading.Event()
        watcher = threading.Thread(target=self._cut_when_due, args=(sock, over), name="pmcqa-reply-cut")
        watcher.daemon = True
        watcher.start()

    def _cut_when_due(self, sock: socket.socket, over: threading.Event) -> None:
        wake = self.cancelled or over
        cancelled = wake.wait(max(0.0, self.deadline - time.monotonic())) and wake is self.cancelled
        if over.is_set():  # the reply ended first (as the deadline or the cancel came, too)
            return
        if not cancelled:
            self.fired.set()
        with contextlib.suppress(OSError):  # closed already: the reply ended as the cut came
            sock.shutdown(socket.SHUT_RDWR)

    def by_caller(self) -> bool:
        """The caller gave up on the reply (`cancelled` is set)."""
        return self.cancelled is not None and self.cancelled.is_set()

    def cancel(self) -> None:
        if self._over is not None:
            self._over.set()

    def __enter__(self) -> ReplyCut:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.cancel()


# The cut of the chat call the current thread is making (the HTTP client's response hook finds it here).
_reply_cut: ContextVar[ReplyCut | None] = ContextVar("pmcqa_openai_reply_cut", default=None)


def watch_reply(response: Any) -> None:
    """httpx response hook: the reply of a chat call under a deadline is cut there. Runs in the calling
    thread once the headers are in, before the body is read (streamed or not)."""
    cut = _reply_cut.get()
    if cut is not None:
        cut.watch(response)


READY_CHECK_TIMEOUT_S = 5.0
# A retry is worth it only after an early failure: at least this share of the deadline must be left.
RETRY_MIN_SHARE = 0.5
RETRY_PAUSE_S = 0.5  # the `openai` client's first back-off
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx: what the `openai` client retries

Reply = TypeVar("Reply")


def retryable(error: openai.OpenAIError) -> bool:
    """A failure another try may not repeat: the connection refused or dropped, or the server busy or failing
    (a timeout is not: the deadline is spent)."""
    if isinstance(error, openai.APITimeoutError):
        return False
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRY_STATUSES or error.status_code >= 500
    return isinstance(error, openai.APIConnectionError)


class OpenAIBackend:
    name = "openai"

    def __init__(self, settings: Settings, *, client: OpenAI | None = None) -> None:
        """`client`, if given, is used as it is: replies are cut at the deadline only if its HTTP client
        has `watch_reply` among its response hooks."""
        self.settings = settings
        self.model = settings.openai_model
        self.base_url = settings.openai_base_url
        # No retries of the client's own: each would get a full timeout again (`_within_deadline` retries).
        self._client = (
            client
            or OpenAI(
                base_url=settings.openai_base_url,
                api_key=settings.openai_api_key.get_secret_value(),
                timeout=settings.generation_timeout_s,
                http_client=openai.DefaultHttpxClient(event_hooks={"response": [watch_reply]}),
            )
        ).with_options(max_retries=0)
        self._checked: tuple[float, str | None] | None = None  # (monotonic time, problem or None)
        self._check_lock = threading.Lock()

    def is_ready(self) -> bool:
        return self.unavailable() is None

    def unavailable(self) -> str | None:
        """Why the server cannot answer now, or None when it lists our model; cached `openai_ready_ttl_s`."""
        with self._check_lock:  # one check at a time: concurrent requests share its answer
            checked = self._checked
            if checked is None or time.monotonic() - checked[0] >= self.settings.openai_ready_ttl_s:
                checked = self._checked = (time.monotonic(), self._check())
            return checked[1]

    def _forget_readiness(self) -> None:
        with self._check_lock:
            self._checked = None

    def _check(self) -> str | None:
        try:
            models = self._client.with_options(timeout=READY_CHECK_TIMEOUT_S, max_retries=0).models.list()
            served = [model.id for model in models]
        except openai.APIConnectionError as error:
            problem = f"cannot reach {self.base_url}: {connection_problem(error)}"
        except openai.APIStatusError as error:
            problem = f"{self.base_url} answered GET /models with HTTP {error.status_code}"
        except openai.OpenAIError as error:
            problem = f"{self.base_url}: {type(error).__name__}: {error}"
        else:
            if self.model in served:
                return None
            serving = ", ".join(served) or "nothing"
            problem = f"{self.base_url} does not serve {self.model!r} (it serves: {serving})"
        status_log.warning("OpenAI-compatible server not ready: %s", problem)
        return problem

    def _unreachable(self, error: openai.APIConnectionError) -> BackendNotReady:
        self._forget_readiness()  # the next request checks again instead of trusting a stale "ready"
        return BackendNotReady(f"cannot reach {self.base_url}: {connection_problem(error)}")

    def _params(self, question: str, passages: list[Passage], paper: PaperRecord) -> dict[str, Any]:
        effort = self.settings.reasoning_effort
        current = request_id.get()
        return {
            # The server's logs then carry the id of the request that caused the generation.
            "extra_headers": {REQUEST_ID_HEADER: current} if current else None,
            "model": self.model,
            "messages": harmony.build_messages(question, passages, paper),
            "max_tokens": self.settings.max_new_tokens,
            "temperature": 0.0,  # reproducible answers, like the transformers backend's greedy decoding
            # vLLM reads the top-level field; llama.cpp reads it from the template kwargs.
            "reasoning_effort": effort,
            "extra_body": {"chat_template_kwargs": {"reasoning_effort": effort}},
        }

    def _within_deadline(self, cut: ReplyCut, call: Callable[[float], Reply]) -> Reply:
        """`call(timeout)` with the time left before `cut.deadline`, its reply cut there; again after an
        early retryable failure."""
        token = _reply_cut.set(cut)  # for `watch_reply`, during this call only
        try:
            return self._tries(cut.deadline, call)
        finally:
            _reply_cut.reset(token)

    def _tries(self, deadline: float, call: Callable[[float], Reply]) -> Reply:
        timeout_s = self.settings.generation_timeout_s
        try:
            return call(deadline - time.monotonic())
        except openai.OpenAIError as error:
            left = deadline - time.monotonic()
            if not retryable(error) or left < RETRY_MIN_SHARE * timeout_s:
                raise
            log.warning("%s failed (%s); retrying, %.1f s left", self.base_url, type(error).__name__, left)
        time.sleep(min(RETRY_PAUSE_S, left / 4))
        return call(deadline - time.monotonic())

    def _failure(self, error: Exception, cut: ReplyCut) -> ServiceError:
        """What a failed chat call is for the service. Once the reply was cut at the deadline, whatever the
        cut left behind (a connection error, a body cut short) is the timeout."""
        if cut.fired.is_set() or isinstance(error, openai.APITimeoutError):
            return GenerationTimeout(self._timeout_message())
        if isinstance(error, openai.APIConnectionError):
            return self._unreachable(error)
        if isinstance(error, openai.APIStatusError):
            return self._failed(error)
        return self._unreadable(error)  # a body that is not a chat completion's JSON

    def generate(self, question: str, passages: list[Passage], paper: PaperRecord) -> Draft:
        params = self._params(question, passages, paper)
        with ReplyCut(time.monotonic() + self.settings.generation_timeout_s) as cut:
            try:
                response = self._within_deadline(
                    cut, lambda left: self._client.chat.completions.create(**params, timeout=left)
                )
            except (openai.OpenAIError, ValueError) as error:
                raise self._failure(error, cut) from error
        if cut.fired.is_set():  # a body read until the connection closed ends where the cut closed it
            raise GenerationTimeout(self._timeout_message())
        try:
            choice = response.choices[0]
            message_text, reasoning = choice.message.content, reasoning_of(choice.message)
        except (AttributeError, IndexError, TypeError) as error:  # no choices, no message, not an object
            raise self._unreadable(error) from error
        if message_text is not None and not isinstance(message_text, str):
            raise self._unreadable(TypeError(f"content is {type(message_text).__name__}"))
        analysis, final, truncated = split_reply(reasoning, message_text, choice.finish_reason)
        return build_draft(analysis, final, passages, self.model, truncated=truncated)

    def _failed(self, error: openai.APIStatusError) -> ModelServerError:
        detail = str(getattr(error, "message", "") or error)[:300]
        return ModelServerError(f"{self.base_url} answered HTTP {error.status_code}: {detail}")

    def _unreadable(self, error: BaseException) -> ModelServerError:
        log.warning("unusable reply from %s: %s: %s", self.base_url, type(error).__name__, error)
        return ModelServerError(
            f"{self.base_url} sent a reply that is not a chat completion ({type(error).__name__})"
        )

    def stream(
        self,
        question: str,
        passages: list[Passage],
        paper: PaperRecord,
        cancelled: threading.Event | None = None,
    ) -> Iterator[BackendEvent]:
        """Deltas as they arrive; raises GenerationTimeout past the limit, openai errors as they come.

        Setting `cancelled` cuts the stream's connection at once (`ReplyCut`), stalled or not, which stops the
        server's generation (vLLM aborts a request whose connection closes); the stream then ends without an
        answer and without an error. At the deadline the connection is cut too, so a stalled stream ends
        there (GenerationTimeout)."""
        deadline = time.monotonic() + self.settings.generation_timeout_s
        reply, finish = ReplyStream(), None
        with ReplyCut(deadline, cancelled) as cut:
            try:
                params = self._params(question, passages, paper)
                chunks = self._within_deadline(
                    cut,
                    lambda left: self._client.chat.completions.create(**params, stream=True, timeout=left),
                )
                with chunks:
                    for chunk in chunks:
                        if cut.by_caller():
                            return  # leaving the `with` closes the connection
                        if time.monotonic() > deadline:  # chunks still coming: the cut is for a silent server
                            raise GenerationTimeout(self._timeout_message())
                        try:
                            if not chunk.choices:
                                continue
                            choice = chunk.choices[0]
                            reasoning, content = reasoning_of(choice.delta), choice.delta.content or ""
                            if not isinstance(content, str):
                                raise TypeError(f"content is {type(content).__name__}")
                        except (AttributeError, TypeError) as error:  # a chunk that is not a completion delta
                            raise self._unreadable(error) from error
                        finish = choice.finish_reason or finish
                        yield from reply.add(reasoning, content)
            except (openai.OpenAIError, ValueError) as error:
                if cut.by_caller():  # what the cut for the caller left behind: no answer, and no failure
                    return
                raise self._failure(error, cut) from error
        if cut.by_caller():  # the stream ended where the cut for the caller closed it
            return
        if cut.fired.is_set():  # the end of the stream was where the cut closed it, not the reply's end
            raise GenerationTimeout(self._timeout_message())
        analysis, final, truncated = split_reply(reply.reasoning, reply.content, finish)
        yield from reply.assembler.update(analysis, final, finished=True)
        yield StreamAssembler.done(build_draft(analysis, final, passages, self.model, truncated=truncated))

    def _timeout_message(self) -> str:
        return f"model server exceeded {self.settings.generation_timeout_s:g} s"
