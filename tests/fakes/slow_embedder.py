"""The real embedder, made slower: the claim check's time on a loaded CPU, without loading the CPU."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class SlowEmbedder:
    """`embedder` with `per_call_s` + `per_text_s` × texts added to each `embed_documents`, which records how
    many texts each call embedded. Everything else is the embedder's own."""

    def __init__(self, embedder: Any, *, per_call_s: float = 0.0, per_text_s: float = 0.0) -> None:
        self.embedder, self.per_call_s, self.per_text_s = embedder, per_call_s, per_text_s
        self.calls: list[int] = []

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        time.sleep(self.per_call_s + self.per_text_s * len(texts))
        self.calls.append(len(texts))
        return self.embedder.embed_documents(texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.embedder, name)
