"""How long the LLM backends spend parsing a long harmony reply: whole (harmony.parse_completion /
parse_partial, split_steps) and streamed piece by piece (the transformers backend's CompletionStream +
StreamAssembler, the OpenAI backend's ReplyStream).

PYTHONPATH=. .venv/bin/python bench/bench_stream_parse.py [PIECES ...]      # default: 1000 8000

A streamed reply must cost time linear in its length: parsed again whole at every piece, 8,000 four-character
pieces took 11-13 s (commit 76f8e1e); read once, 0.1-0.2 s. CPU time, the least of 9 runs each (on a shared
machine the least disturbed one).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial

from pmcqa.app.answering import harmony
from pmcqa.app.answering.openai_backend import ReplyStream
from pmcqa.app.answering.postprocess import StreamAssembler

PIECE = 4  # characters a piece, about a token
RUNS = 9


def reply(length: int) -> tuple[str, str]:
    """(analysis, final) of a harmony reply about `length` characters long: numbered steps, a cited answer."""
    analysis, final, step = "Steps:\n", "", 1
    while len(analysis) < length * 2 // 3:
        analysis += f"{step}) Locate the section on organoids [1] and compare (p < 0.05).\n"
        step += 1
    while len(final) < length // 3:
        final += "Both protocols generated immature <b>tissue</b> [1]; about 20% of adult factors [2]. "
    return analysis, final


def harmony_text(analysis: str, final: str) -> str:
    opened = "<|start|>assistant<|channel|>final<|message|>"
    return f"<|channel|>analysis<|message|>{analysis}<|end|>{opened}{final}<|return|>"


def cpu_ms(run: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        started = time.process_time()
        run()
        times.append((time.process_time() - started) * 1000)
    return min(times)


def transformers_stream(pieces: list[str]) -> None:
    parser, assembler = harmony.CompletionStream(), StreamAssembler()
    for piece in pieces:
        for _ in assembler.take(parser.feed(piece)):
            pass


def openai_stream(deltas: list[tuple[str, str]]) -> None:
    stream = ReplyStream()
    for reasoning, content in deltas:
        for _ in stream.add(reasoning, content):
            pass


def main(counts: list[int]) -> None:
    print(f"{'pieces':>7} {'chars':>7}  {'case':<44} {'cpu ms':>9}")
    for count in counts:
        analysis, final = reply(count * PIECE)
        text, collapsed = harmony_text(analysis, final), f"analysis{analysis}assistantfinal{final}"
        inline = analysis.replace("\n", " ")
        pieces = [text[at : at + PIECE] for at in range(0, len(text), PIECE)]
        reasoning = [(analysis[at : at + PIECE], "") for at in range(0, len(analysis), PIECE)]
        deltas = reasoning + [("", final[at : at + PIECE]) for at in range(0, len(final), PIECE)]
        rows: list[tuple[str, Callable[[], object]]] = [
            ("parse_completion (whole reply)", partial(harmony.parse_completion, text)),
            ("parse_partial (whole reply)", partial(harmony.parse_partial, text)),
            ("parse_completion (collapsed reply)", partial(harmony.parse_completion, collapsed)),
            ("split_steps (analysis, line steps)", partial(harmony.split_steps, analysis)),
            ("split_steps (analysis, inline steps)", partial(harmony.split_steps, inline)),
            ("streamed: CompletionStream + StreamAssembler", partial(transformers_stream, pieces)),
            ("streamed: ReplyStream, harmony content", partial(openai_stream, [("", p) for p in pieces])),
            ("streamed: ReplyStream, reasoning field", partial(openai_stream, deltas)),
        ]
        for name, run in rows:
            print(f"{len(pieces):>7} {len(text):>7}  {name:<44} {cpu_ms(run):>9.2f}")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1000, 8000])
