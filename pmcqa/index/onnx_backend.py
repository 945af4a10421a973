"""ONNX Runtime inference for sentence-transformers models on CPU: fp32 and dynamic int8, without torch.

A sentence-transformers model is a pipeline (tokenize -> transformer -> pooling -> normalize). Only the
transformer needs exporting; tokenizing (the model's `tokenizer.json`, through the `tokenizers` library),
mean or CLS pooling and normalising are a few lines of numpy. So `OnnxEncoder` runs the whole pipeline with
ONNX Runtime and `tokenizers` alone: a process that encodes with ONNX never imports torch, transformers or
sentence-transformers, which saves the API ~600 MB of RSS and seconds of start-up
(bench/bench_ingest.py (c), bench/bench_startup.py). Pipelines other than Transformer -> Pooling (mean or
CLS) -> optional Normalize are refused with a message naming the torch backend.

Exporting does need torch. It runs once per model and recipe, in a child process (`python -m
pmcqa.index.onnx_backend`), so the process that asked for it stays torch-free.

Why not `SentenceTransformer(path, backend="onnx")`: that backend goes through `optimum-onnx`, whose only
release pins `transformers<4.58`, while sentence-transformers 6 (and this project) need transformers 5, and
it keeps torch loaded for tokenizing and pooling. The export steps are the ones optimum takes, done with the
libraries directly:

- export: `torch.onnx.export(..., dynamo=True)` of the transformer's `last_hidden_state` with dynamic batch
  and sequence axes (the older TorchScript exporter traces transformers 5's mask code wrongly);
- int8: `onnxruntime.quantization.quantize_dynamic` with per-channel symmetric int8 weights (the settings of
  sentence-transformers' `export_dynamic_quantized_onnx_model(..., "avx512_vnni")`); activations are
  quantized at run time, so no calibration data is needed.

Exports are cached in `settings.models_dir` (default `<data_dir>/models`) as
`<model>-<variant>-<fingerprint>/model.onnx`, written to a temporary directory and renamed into place, so
concurrent processes never see half a file and the first one to finish wins. The fingerprint covers the
source files (path, size, mtime) and this export recipe: new weights or a new recipe get a new directory
instead of a stale export.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import onnxruntime
    import torch
    from sentence_transformers import SentenceTransformer

OnnxVariant = Literal["onnx", "onnx-int8"]
ONNX_VARIANTS: tuple[OnnxVariant, ...] = ("onnx", "onnx-int8")
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "pmcqa-export.json"
# Bump when the export or quantization steps change: cached exports of the old recipe are then not reused.
EXPORT_RECIPE = 1

logger = logging.getLogger(__name__)

# Intra-op threads of the sessions opened from now on (0: ONNX Runtime's default, one per physical core);
# the API process sets it with torch's (`embedding.limit_torch_threads`, settings.api_torch_threads).
session_threads = 0

# One session per exported file per process (a session holds the weights, ~23-90 MB for MiniLM).
_MODELS: dict[tuple[str, OnnxVariant], OnnxEncoder] = {}
_MODELS_LOCK = threading.Lock()


class OnnxBackendUnavailable(RuntimeError):
    """onnxruntime / onnx / onnxscript (dependencies of pmcqa) are not installed."""


# Running an export needs onnxruntime only; exporting also needs onnx and onnxscript (torch's exporter).
RUNTIME_PACKAGES = ("onnxruntime",)
EXPORT_PACKAGES = ("onnxruntime", "onnx", "onnxscript")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module blanked out in sys.modules
        return False


def _require_onnx_packages(modules: tuple[str, ...] = EXPORT_PACKAGES) -> None:
    # Looked up, not imported: the export packages are imported by the export's child process only.
    missing = [module for module in modules if not _installed(module)]
    if missing:
        raise OnnxBackendUnavailable(
            f"the ONNX embedding backend needs {', '.join(missing)} (dependencies of pmcqa: reinstall it), "
            "or set PMCQA_EMBEDDING_BACKEND=torch"
        )


def source_fingerprint(source: str | Path) -> str:
    """Hash of the local model files (names, sizes, mtimes) and the export recipe; 12 hex digits."""
    root = Path(source).resolve()
    if not root.is_dir():
        raise ValueError(
            f"the ONNX backend exports from local model files, but {str(source)!r} is not a directory "
            "(use a local path or the default packaged model)"
        )
    digest = hashlib.sha256(f"recipe={EXPORT_RECIPE}\x00{root}".encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".onnx"):
        stat = path.stat()
        digest.update(f"\x00{path.relative_to(root)}\x00{stat.st_size}\x00{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def export_dir(models_dir: Path, model_name: str, variant: OnnxVariant, source: str | Path) -> Path:
    """Where the export of `model_name` (files at `source`) as `variant` lives in `models_dir`."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model_name).name or model_name).strip("_") or "model"
    return Path(models_dir) / f"{readable}-{variant}-{source_fingerprint(source)}"


def _hf_attribute(transformer: torch.nn.Module) -> str:
    """Where sentence-transformers' Transformer module keeps the Hugging Face network: `model` since 6.0,
    `auto_model` before (6.0 keeps `auto_model` as a read-only alias)."""
    return "model" if "model" in transformer._modules else "auto_model"


def _hf_model(transformer: torch.nn.Module) -> torch.nn.Module:
    return getattr(transformer, _hf_attribute(transformer))


def _export_fp32(model: SentenceTransformer, target: Path) -> None:
    """Write the transformer of `model` (a torch SentenceTransformer) as `target` (opset of the exporter)."""
    import torch

    transformer = model[0]
    network = _hf_model(transformer).eval()
    sample = transformer.tokenizer(
        ["a short sentence", "a somewhat longer sentence to give the example two lengths"],
        padding=True,
        return_tensors="pt",
    )
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.network(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state

    axes = {0: "batch", 1: "sequence"}
    # The exporter's notes (axis names, deprecations, "torchvision is not installed" for vision ops a text
    # model never uses) are noise in a service's log: its warnings and torch.onnx log lines are muted.
    muted = _log_level(logging.getLogger("torch.onnx"), logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings(), muted:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            LastHiddenState().eval(),
            (),
            kwargs={name: sample[name] for name in names},
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_shapes={name: axes for name in names},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(target), external_data=False)


@contextlib.contextmanager
def _log_level(log: logging.Logger, level: int) -> Iterator[None]:
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs through the root logger, whose first use would install a stderr handler for the
    # whole process (every library's debug logs would then print): lend it a silent one meanwhile.
    root = logging.getLogger()
    silent = logging.NullHandler() if not root.handlers else None
    if silent:
        root.addHandler(silent)
    try:
        quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8)
    finally:
        if silent:
            root.removeHandler(silent)


def ensure_export(
    model: SentenceTransformer, model_name: str, variant: OnnxVariant, source: str | Path, models_dir: Path
) -> Path:
    """The cached export's `model.onnx`, exporting it first when absent (atomically: tmp dir + rename)."""
    if variant not in ONNX_VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}; expected one of {ONNX_VARIANTS}")
    _require_onnx_packages()
    final = export_dir(models_dir, model_name, variant, source)
    if (final / MODEL_FILE).is_file():
        return final / MODEL_FILE
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        logger.info("exporting %s to ONNX (%s) under %s", model_name, variant, final)
        if variant == "onnx":
            _export_fp32(model, staging / MODEL_FILE)
        else:  # quantized from the (cached) fp32 export
            _quantize_int8(ensure_export(model, model_name, "onnx", source, models_dir), staging / MODEL_FILE)
        import onnxruntime
        import torch

        manifest = {
            "model": model_name,
            "source": str(Path(source).resolve()),
            "variant": variant,
            "recipe": EXPORT_RECIPE,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(staging, final)  # atomic; fails when another process renamed its export first
        except OSError:
            if not (final / MODEL_FILE).is_file():
                raise
            logger.info("another process exported %s first; using its files", final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / MODEL_FILE


def open_session(path: Path) -> onnxruntime.InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads spin by default; on a machine shared with the API, the worker and the store's
    # FAISS builds, spinning only takes cores from them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if session_threads > 0:
        options.intra_op_num_threads = session_threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """A sentence-transformers model run by ONNX Runtime and `tokenizers` (no torch): `encode` answers like
    `SentenceTransformer.encode` for the arguments pmcqa passes.

    Each text runs alone, on its own tokens without padding. int8 dynamic quantization scales activations
    per tensor, so in a padded batch a text's vector would depend on its neighbours (cosine ~0.98-0.99
    between the same text batched and alone); alone, a text always gets the same vector, which the store's
    content-hash cache assumes. It costs no speed on CPU (measured: 7.3 passages/s one at a time vs 6.3 in
    batches of 64 for int8), since padding is work too.
    """

    def __init__(self, source: Path, model_file: Path, pipeline: Pipeline) -> None:
        from tokenizers import Tokenizer  # Rust, light; a dependency of pmcqa (the chunker counts with it)

        self.pipeline = pipeline
        self.tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.pipeline.max_length)
        self.session = open_session(model_file)
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.dimension: int | None = None

    def get_sentence_embedding_dimension(self) -> int:
        if self.dimension is None:
            self.dimension = int(self.encode(["x"]).shape[1])
        return self.dimension

    def encode(
        self,
        texts: list[str],
        batch_size: int = 32,  # sentence-transformers' argument; every text runs alone here (see above)
        convert_to_numpy: bool = True,
        normalize_embeddings: bool = False,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """(len(texts), dimension) float32 sentence vectors."""
        vectors = [self._encode_one(encoding) for encoding in self.tokenizer.encode_batch(texts)]
        matrix = np.stack(vectors).astype(np.float32, copy=False)
        if normalize_embeddings or self.pipeline.normalize:
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        return matrix

    def token_states(self, first: str, second: str) -> tuple[np.ndarray, Any]:
        """The last hidden state of each token of the pair (`first`, `second`), shape (tokens, dimension),
        and the `tokenizers` Encoding (its `offsets` are into each text, `sequence_ids` say which)."""
        encoding = self.tokenizer.encode(first, second)
        return self._hidden(encoding), encoding

    def _hidden(self, encoding: Any) -> np.ndarray:
        features = {
            "input_ids": np.asarray([encoding.ids], dtype=np.int64),
            "attention_mask": np.asarray([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.asarray([encoding.type_ids], dtype=np.int64),
        }
        (hidden,) = self.session.run(None, {name: features[name] for name in self.input_names})
        return hidden[0]  # (sequence, dimension): one text, no padding

    def _encode_one(self, encoding: Any) -> np.ndarray:
        tokens = self._hidden(encoding)
        return tokens[0] if self.pipeline.pooling == "cls" else tokens.mean(axis=0)


class Pipeline(NamedTuple):
    """What `OnnxEncoder` needs to know of a sentence-transformers model's modules."""

    max_length: int
    pooling: Literal["mean", "cls"]
    normalize: bool


_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


def read_pipeline(source: Path) -> Pipeline:
    """The tokenizer length, pooling and normalisation of the model at `source` (its `modules.json`,
    `sentence_bert_config.json` and pooling config, as sentence-transformers reads them)."""
    unsupported = ValueError(
        f"the ONNX embedding backend runs Transformer -> Pooling (mean or CLS) -> Normalize models; {source} "
        "is another kind: set PMCQA_EMBEDDING_BACKEND=torch"
    )
    if not (source / "tokenizer.json").is_file():
        raise ValueError(f"{source} has no tokenizer.json: set PMCQA_EMBEDDING_BACKEND=torch")
    modules = _read_json(source / "modules.json") or [
        {"type": "Transformer", "path": ""},
        {"type": "Pooling", "path": ""},  # a plain Hugging Face model: sentence-transformers mean-pools it
    ]
    kinds = [str(module["type"]).rsplit(".", 1)[-1] for module in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise unsupported
    if modules[0].get("path"):
        raise unsupported  # a transformer in a subfolder: not the layout this exports
    pooling_config = _read_json(source / str(modules[1].get("path") or "") / "config.json") or {}
    modes = {key for key, on in pooling_config.items() if key.startswith("pooling_mode_") and on is True}
    if modes in (set(), {"pooling_mode_mean_tokens"}):
        pooling: Literal["mean", "cls"] = "mean"
    elif modes == {"pooling_mode_cls_token"}:
        pooling = "cls"
    else:
        raise unsupported
    max_length = (_read_json(source / "sentence_bert_config.json") or {}).get("max_seq_length")
    if max_length is None:
        max_length = (_read_json(source / "tokenizer_config.json") or {}).get("model_max_length", 512)
    return Pipeline(max_length=int(min(max_length, 100_000)), pooling=pooling, normalize=len(kinds) == 3)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def export_in_child(model_name: str, source: str | Path, variant: OnnxVariant, models_dir: Path) -> Path:
    """`ensure_export` in a child process: exporting needs torch, and the process that asked (the API, a
    worker) should not carry torch's ~600 MB for the rest of its life because of a one-off step."""
    final = export_dir(models_dir, model_name, variant, source) / MODEL_FILE
    if final.is_file():
        return final
    command = [sys.executable, "-m", __name__, model_name, str(source), variant, str(models_dir)]
    logger.info("exporting %s to ONNX (%s) in a child process (up to a minute)", model_name, variant)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not final.is_file():
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exporting {model_name} to ONNX ({variant}) failed: {detail}")
    return final


def load_onnx_model(model_name: str, source: str, variant: OnnxVariant, models_dir: Path) -> OnnxEncoder:
    """`model_name` (local files at `source`) as an `OnnxEncoder`; exported to `models_dir` on first use (in a
    child process), loaded once per process."""
    key = (str(Path(source).resolve()), variant)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            _require_onnx_packages(RUNTIME_PACKAGES)
            # A hub id fails here (not a directory), before any download is tried.
            exported = export_dir(models_dir, model_name, variant, source) / MODEL_FILE
            if not exported.is_file():  # onnx and onnxscript: only where an export must run, not in the API
                _require_onnx_packages(EXPORT_PACKAGES)
            pipeline = read_pipeline(Path(source))  # an unsupported model fails before the long export
            model_file = export_in_child(model_name, source, variant, models_dir)
            model = OnnxEncoder(Path(source), model_file, pipeline)
            _MODELS[key] = model
        return model


def _export_main(argv: list[str]) -> None:
    """The child process of `export_in_child`: MODEL_NAME SOURCE VARIANT MODELS_DIR."""
    model_name, source, variant, models_dir = argv
    from sentence_transformers import SentenceTransformer  # torch: only in this short-lived process

    if variant not in ONNX_VARIANTS:
        raise SystemExit(f"unknown ONNX variant {variant!r}")
    model = SentenceTransformer(source, device="cpu")
    ensure_export(model, model_name, variant, source, Path(models_dir))  # type: ignore[arg-type]


if __name__ == "__main__":
    _export_main(sys.argv[1:])
