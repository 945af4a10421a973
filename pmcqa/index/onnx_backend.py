"""ONNX Runtime inference for sentence-transformers models on CPU: fp32 and dynamic int8.

A sentence-transformers model is a pipeline (tokenize -> transformer -> pooling -> normalize). Only the
transformer is worth moving off PyTorch, so `load_onnx_model` loads the usual `SentenceTransformer` (offline,
from the local files) and swaps its transformer for `OnnxRuntimeTransformer`, an ONNX Runtime session over
the same network. Tokenization, batching, pooling and normalisation stay sentence-transformers' own.

Why not `SentenceTransformer(path, backend="onnx")`: that backend goes through `optimum-onnx`, whose only
release pins `transformers<4.58`, while sentence-transformers 6 (and this project) need transformers 5. The
steps are the ones optimum takes, done with the libraries directly:

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
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import onnxruntime
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.modeling_outputs import BaseModelOutput

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
_MODELS: dict[tuple[str, OnnxVariant], SentenceTransformer] = {}
_MODELS_LOCK = threading.Lock()


class OnnxBackendUnavailable(RuntimeError):
    """onnxruntime / onnx / onnxscript (dependencies of pmcqa) are not installed."""


def _require_onnx_packages() -> None:
    missing = []
    for module in ("onnxruntime", "onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
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


class OnnxRuntimeTransformer:
    """Runs the exported network; called like the Hugging Face model it replaces (`last_hidden_state`).

    Each text runs alone, on its own tokens without padding. int8 dynamic quantization scales activations
    per tensor, so in a padded batch a text's vector would depend on its neighbours (cosine ~0.98-0.99
    between the same text batched and alone); alone, a text always gets the same vector, which the store's
    content-hash cache assumes. It costs no speed on CPU (measured: 7.3 passages/s one at a time vs 6.3 in
    batches of 64 for int8), since padding is work too. Padded positions of the output are zeros; pooling
    ignores them by the attention mask.
    """

    def __init__(self, session: onnxruntime.InferenceSession, config: Any) -> None:
        self.session = session
        self.config = config  # sentence-transformers reads the hidden size and output flags from it
        self.input_names = [node.name for node in session.get_inputs()]

    def forward(self, **features: Any) -> BaseModelOutput:
        import torch
        from transformers.modeling_outputs import BaseModelOutput  # loaded already by sentence-transformers

        inputs = {name: features[name].cpu().numpy() for name in self.input_names if name in features}
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"the ONNX model needs inputs {sorted(missing)} that the tokenizer did not give")
        mask = inputs["attention_mask"]
        hidden: np.ndarray | None = None
        for row in range(mask.shape[0]):
            tokens = np.flatnonzero(mask[row])  # this text's positions, whichever side the padding is on
            feeds = {name: values[row : row + 1, tokens] for name, values in inputs.items()}
            (output,) = self.session.run(None, feeds)
            if hidden is None:
                hidden = np.zeros((*mask.shape, output.shape[-1]), dtype=output.dtype)
            hidden[row, tokens] = output[0]
        assert hidden is not None  # sentence-transformers never calls with an empty batch
        # Read by name (sentence-transformers 6) or as outputs[0] (5.x): a ModelOutput answers both.
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))

    __call__ = forward


def _hf_attribute(transformer: torch.nn.Module) -> str:
    """Where sentence-transformers' Transformer module keeps the Hugging Face network: `model` since 6.0,
    `auto_model` before (6.0 keeps `auto_model` as a read-only alias)."""
    return "model" if "model" in transformer._modules else "auto_model"


def _hf_model(transformer: torch.nn.Module) -> torch.nn.Module:
    return getattr(transformer, _hf_attribute(transformer))


def _as_module(runner: OnnxRuntimeTransformer) -> torch.nn.Module:
    """Wrap the runner in a parameter-less torch module: sentence-transformers keeps its transformer as a
    registered child module, which only another module may replace."""
    import torch

    class _Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.runner = runner
            self.config = runner.config

        def forward(self, **features: Any) -> BaseModelOutput:
            return runner.forward(**features)

    return _Module()


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


def load_onnx_model(
    model_name: str, source: str, variant: OnnxVariant, models_dir: Path
) -> SentenceTransformer:
    """`model_name` (local files at `source`) as a CPU SentenceTransformer whose transformer runs in ONNX
    Runtime; exported to `models_dir` on first use, loaded once per process."""
    key = (str(Path(source).resolve()), variant)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            _require_onnx_packages()
            source_fingerprint(source)  # a hub id fails here, before any download is tried
            from sentence_transformers import SentenceTransformer  # heavy (torch): first load only

            model = SentenceTransformer(source, device="cpu")
            path = ensure_export(model, model_name, variant, source, models_dir)
            transformer = model[0]
            # The torch weights are dropped here: only the session computes from now on.
            runner = OnnxRuntimeTransformer(open_session(path), _hf_model(transformer).config)
            setattr(transformer, _hf_attribute(transformer), _as_module(runner))
            _MODELS[key] = model
        return model
