"""The ONNX Runtime embedding backend: export cache, vectors against PyTorch's, the store's model identity."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pmcqa.index.onnx_backend as onnx_backend
from pmcqa.core.settings import Settings
from pmcqa.index.embedding import (
    CPU_DEFAULT_BACKEND,
    DEFAULT_MODEL,
    Embedder,
    choose_backend,
    embedding_identity,
    load_model,
    resolve_model_path,
)
from pmcqa.index.store import EmbeddingModelMismatch, Store

SENTENCES = [
    "Aspirin lowers fever.",
    "The kidney filters blood.",
    "SARS-CoV-2 enters cells through the ACE2 receptor of lung epithelium.",
    "long " * 600,  # truncated to the model's 256 tokens, as PyTorch does
]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose models dir holds both exports of the default model (exporting takes tens of
    seconds: once per module)."""
    data_dir = tmp_path_factory.mktemp("onnx-data")
    for variant in onnx_backend.ONNX_VARIANTS:  # the way the service exports: in a child process
        onnx_backend.export_in_child(
            DEFAULT_MODEL, resolve_model_path(DEFAULT_MODEL), variant, data_dir / "models"
        )
    return data_dir


def _settings(data_dir: Path, backend: str) -> Settings:
    settings = Settings(data_dir=data_dir, embedding_backend=backend, embedding_device="cpu")
    return settings.model_copy(update={"embedding_export_dir": None})  # <data_dir>/models, whatever the env


def test_export_is_cached_under_the_data_dir_and_reused(
    exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = resolve_model_path(DEFAULT_MODEL)
    models = exports / "models"
    # Only the two finished exports: no staging directory is left behind.
    assert sorted(p.name.rsplit("-", 1)[0] for p in models.iterdir()) == [
        f"{DEFAULT_MODEL}-onnx",
        f"{DEFAULT_MODEL}-onnx-int8",
    ]
    for variant in onnx_backend.ONNX_VARIANTS:
        directory = onnx_backend.export_dir(models, DEFAULT_MODEL, variant, source)
        manifest = json.loads((directory / onnx_backend.MANIFEST_FILE).read_text())
        assert manifest["variant"] == variant and manifest["model"] == DEFAULT_MODEL
        assert (directory / onnx_backend.MODEL_FILE).stat().st_size > 1_000_000
    int8 = onnx_backend.export_dir(models, DEFAULT_MODEL, "onnx-int8", source) / onnx_backend.MODEL_FILE
    fp32 = onnx_backend.export_dir(models, DEFAULT_MODEL, "onnx", source) / onnx_backend.MODEL_FILE
    assert int8.stat().st_size < fp32.stat().st_size / 3  # int8 weights: about a quarter of fp32

    def no_export(*args: Any) -> None:
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(onnx_backend, "_export_fp32", no_export)
    monkeypatch.setattr(onnx_backend, "_quantize_int8", no_export)
    mtime = int8.stat().st_mtime_ns
    again = onnx_backend.ensure_export(
        load_model(DEFAULT_MODEL, "cpu"), DEFAULT_MODEL, "onnx-int8", source, models
    )
    assert again == int8 and int8.stat().st_mtime_ns == mtime


def test_export_race_keeps_the_first_finished_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes exporting at once: the one that renames second uses the first one's files."""
    source = resolve_model_path(DEFAULT_MODEL)
    final = onnx_backend.export_dir(tmp_path / "models", DEFAULT_MODEL, "onnx", source)

    def export_while_another_process_finishes(model: Any, target: Path) -> None:
        target.write_bytes(b"ours")
        final.mkdir(parents=True)
        (final / onnx_backend.MODEL_FILE).write_bytes(b"theirs")

    monkeypatch.setattr(onnx_backend, "_export_fp32", export_while_another_process_finishes)
    path = onnx_backend.ensure_export(object(), DEFAULT_MODEL, "onnx", source, tmp_path / "models")  # type: ignore[arg-type]
    assert path == final / onnx_backend.MODEL_FILE and path.read_bytes() == b"theirs"
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # our staging dir is gone


def test_new_source_files_get_a_new_export_dir(tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text("{}")
    before = onnx_backend.export_dir(tmp_path / "models", "my/model", "onnx", source)
    (source / "model.safetensors").write_bytes(b"new weights")
    after = onnx_backend.export_dir(tmp_path / "models", "my/model", "onnx", source)
    assert before != after and before.parent == after.parent == tmp_path / "models"
    assert after.name.startswith("model-onnx-")
    with pytest.raises(ValueError, match="local model files"):
        onnx_backend.export_dir(tmp_path / "models", "org/hub-model", "onnx", "org/hub-model")


def test_onnx_vectors_match_torch(exports: Path) -> None:
    torch_embedder = Embedder(_settings(exports, "torch"))
    reference = torch_embedder.embed_documents(SENTENCES)
    thresholds = {"onnx": 0.99, "onnx-int8": 0.95}
    for backend, threshold in thresholds.items():
        onnx = Embedder(_settings(exports, backend))
        assert onnx.backend == backend and onnx.dimension == 384
        vectors = onnx.embed_documents(SENTENCES)
        assert vectors.dtype == np.float32 and vectors.shape == (len(SENTENCES), 384)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
        cosines = (vectors * reference).sum(axis=1)
        assert cosines.min() > threshold, (backend, cosines)
        alone = np.concatenate([onnx.embed_documents([sentence]) for sentence in SENTENCES])
        np.testing.assert_array_equal(vectors, alone)  # a text's vector does not depend on its batch
        queries = onnx.embed_queries(["Which drug reduces fever?"])
        assert (vectors[:2] @ queries[0]).argmax() == 0  # still finds the relevant passage
    fp32 = Embedder(_settings(exports, "onnx")).embed_documents(SENTENCES)
    np.testing.assert_allclose(fp32, reference, atol=1e-4)  # fp32 ONNX is PyTorch to rounding


def test_switching_to_int8_needs_a_reindex(
    exports: Path,
    settings: Settings,
    paper: Callable[..., Any],
    texts: Callable[[str, int], list[str]],
) -> None:
    embedder = Embedder(_settings(exports, "torch"))
    fp32 = Embedder(_settings(exports, "onnx"))
    int8 = Embedder(_settings(exports, "onnx-int8"))
    assert fp32.model_name == embedder.model_name == DEFAULT_MODEL  # same vectors, same identity
    assert int8.model_name == f"{DEFAULT_MODEL}@onnx-int8"
    with Store(settings) as store:
        store.put_paper(*paper("PMC1", texts("PMC1", 3)), embedder)
        store.check_model(fp32)  # a library built on PyTorch is served by fp32 ONNX as is
        with pytest.raises(EmbeddingModelMismatch, match="pmcqa reindex") as raised:
            store.check_model(int8)
        assert raised.value.stored == DEFAULT_MODEL and raised.value.configured == int8.model_name
        with pytest.raises(EmbeddingModelMismatch):
            store.put_paper(*paper("PMC2", texts("PMC2", 2)), int8)
        assert store.reindex(int8) == 1
        store.check_model(int8)
        with pytest.raises(EmbeddingModelMismatch):
            store.check_model(embedder)  # and back again needs another reindex
        _, matrix = store.get_vectors("PMC1")
        np.testing.assert_allclose(matrix, int8.embed_documents(texts("PMC1", 3)), atol=1e-5)


def test_backend_choice_and_identity() -> None:
    assert choose_backend("auto", "cpu") == CPU_DEFAULT_BACKEND
    assert choose_backend("auto", "cuda") == "torch" and choose_backend("auto", "cuda:1") == "torch"
    assert choose_backend("onnx-int8", "cpu") == "onnx-int8" and choose_backend("torch", "cuda") == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        choose_backend("onnx", "cuda")
    with pytest.raises(ValueError, match="unknown embedding backend"):
        choose_backend("tensorrt", "cpu")
    assert embedding_identity("m", "torch") == embedding_identity("m", "onnx") == "m"
    assert embedding_identity("m", "onnx-int8") == "m@onnx-int8"
    with pytest.raises(ValueError):
        Settings(embedding_backend="openvino")
    plain = Settings(data_dir=Path("d")).model_copy(update={"embedding_export_dir": None})
    assert plain.models_dir == Path("d") / "models"
    assert Settings(data_dir=Path("d"), embedding_export_dir=Path("/cache")).models_dir == Path("/cache")


def test_missing_onnx_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(onnx_backend.OnnxBackendUnavailable, match="onnxruntime.*reinstall"):
        onnx_backend.load_onnx_model("never-loaded", "/nowhere", "onnx", Path("/nowhere/models"))


def test_hub_ids_are_refused_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="local model files"):
        onnx_backend.load_onnx_model("org/hub-model", "org/hub-model", "onnx-int8", tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_the_api_thread_cap_reaches_onnx_sessions(exports: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """settings.api_torch_threads (set by the API's loader) caps ONNX Runtime's threads as well as torch's."""
    import torch

    from pmcqa.index.embedding import limit_torch_threads

    monkeypatch.setattr(onnx_backend, "session_threads", 0)
    source = resolve_model_path(DEFAULT_MODEL)
    path = onnx_backend.export_dir(exports / "models", DEFAULT_MODEL, "onnx-int8", source) / "model.onnx"
    assert onnx_backend.open_session(path).get_session_options().intra_op_num_threads == 0  # ORT's default
    before = torch.get_num_threads()
    try:
        limit_torch_threads(1)
        assert onnx_backend.open_session(path).get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


def _model_copy(tmp_path: Path) -> Path:
    """The default model's files, copied so that a test may change them."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(resolve_model_path(DEFAULT_MODEL), copy)
    return copy


def test_the_pipeline_is_read_from_the_model_files(tmp_path: Path) -> None:
    default = onnx_backend.read_pipeline(Path(resolve_model_path(DEFAULT_MODEL)))
    assert default == onnx_backend.Pipeline(max_length=256, pooling="mean", normalize=True)
    model = _model_copy(tmp_path)
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert onnx_backend.read_pipeline(model).pooling == "cls"
    modules = json.loads((model / "modules.json").read_text())
    (model / "modules.json").write_text(
        json.dumps([*modules, {"type": "sentence_transformers.models.Dense"}])
    )
    with pytest.raises(ValueError, match="PMCQA_EMBEDDING_BACKEND=torch"):
        onnx_backend.load_onnx_model("with-dense", str(model), "onnx-int8", tmp_path / "models")
    assert not (tmp_path / "models").exists()  # refused before the minute-long export


def test_a_failed_export_names_the_model_and_the_cause(tmp_path: Path) -> None:
    model = _model_copy(tmp_path)
    (model / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(RuntimeError, match="exporting broken to ONNX \\(onnx-int8\\) failed: .+"):
        onnx_backend.load_onnx_model("broken", str(model), "onnx-int8", tmp_path / "models")
    assert not list((tmp_path / "models").glob("*/model.onnx"))  # nothing half-written is left to reuse
