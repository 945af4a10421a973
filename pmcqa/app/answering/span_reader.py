"""Short answers: the phrase of the chosen sentences that answers the question.

The extractive backend picks whole sentences (mean ~30 words), while a researcher's answer is usually a
phrase ("Gram positive, anaerobic bacterium"; COVID-QA gold answers have a median of 7-9 words). The span
reader is an extractive question-answering head, as in SQuAD readers: the bundled MiniLM encoder reads
"[CLS] question [SEP] sentences [SEP]" and a linear layer over each token's last hidden state gives a start
and an end logit; the answer is the span (at most `MAX_SPAN_TOKENS` tokens) with the highest start + end
log-probability. `pmcqa train-answerer` fine-tunes it on the training file's answer spans within their
sentences (`answer_training.train_span_reader`) and saves it inside the answer model's folder:

    <answer model>/span-reader/   the fine-tuned encoder, as a sentence-transformers folder, so the ONNX
                                  export of `index.onnx_backend` (no torch when answering) applies as is
    <answer model>/span-reader/span-head.json   the start/end layer: 2 x hidden weights and 2 biases

The head is two dot products per token, done in numpy over the exported encoder's hidden states. The span is
used only when its probability reaches `settings.span_min_probability` (chosen on COVID-QA dev); else the
answer stays the sentences. Either way the sentences are cited whole, so the evidence around a phrase is
one click away.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pmcqa.index import onnx_backend

READER_DIR = "span-reader"
HEAD_FILE = "span-head.json"
# Longest span considered, in tokens (gold answers of COVID-QA train: 95% are under 40 words).
MAX_SPAN_TOKENS = 40
# The span is used when its probability reaches `settings.span_min_probability` (default 0.5), chosen on
# COVID-QA dev (trained answer model at its minimum confidence 0.25; README "Answer quality" has the sweep):
# a phrase only when the reader is fairly sure. 0.5 answers 27% of the answered questions with a phrase:
# token F1 0.280 -> 0.353, gold contained 0.650 -> 0.616; lower thresholds trade containment for F1 (0.1:
# F1 0.414, gold contained 0.424); the sweep is flat in the sum of the two shortfalls from 0.4 to 0.7.
# Tried and not used: the span maximising expected token F1 (plus a weight on containment) under the
# reader's start/end distributions, +0.01 F1 at equal containment on dev (noise at 203 questions).
# The reader's ONNX export: fp32. int8 (the encoder's CPU default) costs the reader 0.018 span F1 on dev
# (0.381 vs 0.399 always using the span), and the reader runs once per answer on a short text.
READER_VARIANT: onnx_backend.OnnxVariant = "onnx"


class _TokenEncoder(Protocol):
    def token_states(self, first: str, second: str) -> tuple[np.ndarray, Any]: ...


@dataclass(frozen=True)
class Span:
    start: int  # character offsets into the context read
    end: int
    probability: float  # P(start) * P(end) under the head's softmaxes over the context's tokens


def write_head(folder: Path, weight: np.ndarray, bias: np.ndarray) -> None:
    """Save the start/end layer (`weight` 2 x hidden, `bias` 2) beside the encoder in `folder`."""
    head = {
        "weight": np.asarray(weight, dtype=float).tolist(),
        "bias": np.asarray(bias, dtype=float).tolist(),
    }
    (folder / HEAD_FILE).write_text(json.dumps(head) + "\n", encoding="utf-8")


def read_head(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    path = folder / HEAD_FILE
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
        weight = np.asarray(head["weight"], dtype=np.float32)
        bias = np.asarray(head["bias"], dtype=np.float32)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a readable span head ({error}); train the answer model again"
        ) from error
    if weight.ndim != 2 or weight.shape[0] != 2 or bias.shape != (2,):
        raise ValueError(
            f"{path}: expected a 2 x hidden weight and 2 biases, got {weight.shape} and {bias.shape}"
        )
    return weight, bias


def best_span(
    start_logits: np.ndarray, end_logits: np.ndarray, max_tokens: int = MAX_SPAN_TOKENS
) -> tuple[int, int, float]:
    """The (first, last) token pair, first <= last < first + max_tokens, maximising P(first) * P(last)."""
    start = start_logits - np.logaddexp.reduce(start_logits)
    end = end_logits - np.logaddexp.reduce(end_logits)
    scores = start[:, None] + end[None, :]
    n = len(start)
    rows, columns = np.indices((n, n))
    scores = np.where((columns >= rows) & (columns < rows + max_tokens), scores, -np.inf)
    first, last = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return int(first), int(last), float(np.exp(scores[first, last]))


class SpanReader:
    """Finds the answer span of a question in a short context (the chosen sentences)."""

    def __init__(self, encoder: _TokenEncoder, weight: np.ndarray, bias: np.ndarray) -> None:
        self.encoder = encoder
        self.weight, self.bias = weight, bias

    def token_logits(self, question: str, context: str) -> tuple[list[tuple[int, int]], np.ndarray]:
        """Offsets into `context` of its tokens, and their (start, end) logits, shape (tokens, 2)."""
        hidden, encoding = self.encoder.token_states(question, context)
        # Context tokens only: sequence id 1, and not the special tokens around it (empty offsets).
        tokens = [
            i
            for i, (sequence, (begin, finish)) in enumerate(
                zip(encoding.sequence_ids, encoding.offsets, strict=True)
            )
            if sequence == 1 and finish > begin
        ]
        return [encoding.offsets[i] for i in tokens], hidden[tokens] @ self.weight.T + self.bias

    def read(self, question: str, context: str) -> Span | None:
        """The best span of `context` for `question` (None: no context token survived truncation)."""
        offsets, logits = self.token_logits(question, context)
        if not offsets:
            return None
        first, last, probability = best_span(logits[:, 0], logits[:, 1])
        return Span(offsets[first][0], offsets[last][1], probability)
