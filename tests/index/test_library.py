"""`open_library` (both backends): one embedder, store and retriever; writers checked against the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pmcqa.core.settings import Settings
from pmcqa.index.library import open_library
from pmcqa.index.store import EmbeddingModelMismatch


def test_open_library_wires_one_embedder_through_store_and_retriever(
    store_settings: Settings,
    make_fake: Callable[..., Any],
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    fake = make_fake()
    parts = open_library(store_settings, writable=True, embedder=fake)
    try:
        backend = "PostgresStore" if store_settings.database_url else "Store"
        assert type(parts.store).__name__ == backend  # the settings choose the backend
        assert parts.embedder is fake and parts.retriever.store is parts.store
        assert parts.retriever.embedder is fake
        parts.store.put_paper(*paper("PMC1", texts("PMC1", 4)), parts.embedder)
        hits = parts.retriever.search_library(texts("PMC1", 4)[2], k=1)
        assert hits[0].chunk.text == texts("PMC1", 4)[2]
    finally:
        parts.close()


def test_writers_are_checked_against_the_stored_model_and_readers_are_not(
    store_settings: Settings,
    make_fake: Callable[..., Any],
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    first = open_library(store_settings, writable=True, embedder=make_fake("old-model"))
    first.store.put_paper(*paper("PMC1", texts("PMC1", 2)), first.embedder)
    first.close()

    with pytest.raises(EmbeddingModelMismatch, match="'old-model'.*'new-model'"):
        open_library(store_settings, writable=True, embedder=make_fake("new-model"))
    # Read-only: opens whatever the stored model is (what `pmcqa reindex` needs to replace it).
    new = make_fake("new-model")
    reader = open_library(store_settings, writable=False, embedder=new)
    try:
        assert reader.store.count_papers() == 1
        assert reader.store.reindex(reader.embedder) == 1
    finally:
        reader.close()
    open_library(store_settings, writable=True, embedder=new).close()  # the model now matches
