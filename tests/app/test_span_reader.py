"""The span reader's choice of span from start/end logits, and its head file (the trained reader itself is
exercised in test_answer_training.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pmcqa.app.answering import span_reader


def test_the_best_span_maximises_start_times_end_probability_within_order_and_length() -> None:
    start = np.array([0.0, 5.0, 0.0, 0.0, 9.0])
    end = np.array([8.0, 0.0, 6.0, 0.0, 0.0])
    first, last, probability = span_reader.best_span(start, end)
    # (4, 0) would score highest but ends before it starts: the best is among ordered pairs only.
    scores = {
        (i, j): np.exp(start[i] - np.logaddexp.reduce(start) + end[j] - np.logaddexp.reduce(end))
        for i in range(5)
        for j in range(i, 5)
    }
    best = max(scores, key=scores.__getitem__)
    assert (first, last) == best and probability == pytest.approx(scores[best])
    assert first <= last
    short_first, short_last, _ = span_reader.best_span(np.array([9.0, 0, 0, 0]), np.array([0, 0, 0, 9.0]), 2)
    assert short_last - short_first < 2, "a span never exceeds the token limit"


def test_the_head_file_round_trips_and_a_malformed_one_is_named(tmp_path: Path) -> None:
    weight, bias = np.arange(8.0).reshape(2, 4), np.array([0.5, -0.5])
    span_reader.write_head(tmp_path, weight, bias)
    read_weight, read_bias = span_reader.read_head(tmp_path)
    assert np.allclose(read_weight, weight) and np.allclose(read_bias, bias)
    (tmp_path / span_reader.HEAD_FILE).write_text('{"weight": [[1, 2]], "bias": [0, 0]}')
    with pytest.raises(ValueError, match="span-head.json"):
        span_reader.read_head(tmp_path)
