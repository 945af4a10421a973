"""The transformers backend on a tiny random-weight gpt-oss saved to disk (real loading path, CPU).

Covers nf4 quantization on CPU through bitsandbytes, the missing-weights guard (Unsloth split-expert layout
and plain missing tensors), PEFT adapters, and template → generate → stop → parse end to end on a model
overfit to one scripted completion.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fakes.tiny_gpt_oss import (
    build_tokenizer,
    overfit,
    rewrite_as_unsloth_split_experts,
    sample_paper,
    save_checkpoint,
    write_lora_adapter,
)
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from pmcqa.app.answering import transformers_backend as tb
from pmcqa.app.answering.base import Draft
from pmcqa.app.answering.transformers_backend import (
    FinalEndStop,
    ModelLoadError,
    TransformersBackend,
    bnb_cpu_4bit_supported,
)
from pmcqa.app.errors import GenerationTimeout
from pmcqa.core.settings import Settings

QUESTION = "How do the kidney organoid protocols compare?"
DATE = "2026-11-28"
ANALYSIS = "<|channel|>analysis<|message|>Steps:\n1) Locate the section.\n2) Quote it [1].<|end|>"
FINAL = "<|start|>assistant<|channel|>final<|message|>Both protocols generated immature tissue [1] [7]."


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # On a loaded 2-core box, 2 torch threads spin against each other: 1 thread is ~6x faster here.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def settings_for(model: Path, **overrides: object) -> Settings:
    values = {"model": str(model), "load_in_4bit": False, "max_new_tokens": 24, "reasoning_effort": "low"}
    return Settings(**{**values, **overrides})


def quantized_linears(model: torch.nn.Module) -> list[str]:
    import bitsandbytes as bnb

    return [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]


# --- loading ------------------------------------------------------------------------------------------------


def test_nf4_on_cpu_quantizes_attention_linears(tiny_dir: Path) -> None:
    if not bnb_cpu_4bit_supported():
        pytest.skip("installed bitsandbytes has no CPU 4-bit backend")
    import bitsandbytes as bnb

    backend = TransformersBackend(settings_for(tiny_dir, load_in_4bit=True), current_date=DATE)
    assert backend.is_ready()
    names = quantized_linears(backend.lm)
    # q/k/v/o of both layers; lm_head, router and the 3-D expert parameters are not nn.Linear (doc §7).
    assert len(names) == 8 and all(
        name.split(".")[-1] in {"q_proj", "k_proj", "v_proj", "o_proj"} for name in names
    )
    weight = backend.lm.model.layers[0].self_attn.q_proj.weight
    assert isinstance(weight, bnb.nn.Params4bit) and weight.quant_state.quant_type == "nf4"
    assert weight.dtype == torch.uint8
    assert backend.lm.model.layers[0].mlp.experts.gate_up_proj.dtype == torch.bfloat16

    paper, passages = sample_paper()
    prompt = backend.prompt_ids(QUESTION, passages, paper)
    with torch.no_grad():  # a real 4-bit forward pass
        logits = backend.lm(input_ids=torch.tensor([prompt])).logits
    assert logits.shape[-1] == len(backend.tokenizer) and torch.isfinite(logits).all()
    assert isinstance(backend.generate_text(prompt), str)  # random weights: random tokens
    assert isinstance(backend.generate(QUESTION, passages, paper), Draft)


def test_saved_nf4_checkpoint_reloads_prequantized(tiny_dir: Path, tmp_path: Path) -> None:
    """A standard bnb-4bit checkpoint passes the missing-weights guard (no false alarm) with equal outputs."""
    if not bnb_cpu_4bit_supported():
        pytest.skip("installed bitsandbytes has no CPU 4-bit backend")
    first = TransformersBackend(settings_for(tiny_dir, load_in_4bit=True))
    first.lm.save_pretrained(tmp_path / "nf4")
    first.tokenizer.save_pretrained(tmp_path / "nf4")
    again = TransformersBackend(settings_for(tmp_path / "nf4", load_in_4bit=True))
    assert len(quantized_linears(again.lm)) == 8
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(first.lm(input_ids=ids).logits, again.lm(input_ids=ids).logits)


def test_unquantized_load_has_no_4bit_layers(tiny_dir: Path) -> None:
    backend = TransformersBackend(settings_for(tiny_dir), current_date=DATE)
    assert quantized_linears(backend.lm) == []
    assert backend.lm.dtype == torch.float32  # dtype="auto" keeps the checkpoint's dtype


def test_quantization_config_choice(tiny_dir: Path) -> None:
    assert tb.quantization_config(settings_for(tiny_dir, load_in_4bit=False), {}) is None
    prequantized = {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}
    assert tb.quantization_config(settings_for(tiny_dir, load_in_4bit=True), prequantized) is None
    if bnb_cpu_4bit_supported() or torch.cuda.is_available():
        config = tb.quantization_config(settings_for(tiny_dir, load_in_4bit=True), {})
        assert config is not None and config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"


def test_stock_transformers_silently_misloads_split_experts(tmp_path: Path) -> None:
    """The premise of the guard: transformers loads this layout without raising, with random experts."""
    directory = save_checkpoint(tmp_path / "unsloth")
    moved = rewrite_as_unsloth_split_experts(directory)
    assert moved
    _, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert set(moved) <= set(info["missing_keys"])
    assert any(".experts.gate_up_projs.0." in key for key in info["unexpected_keys"])


def test_split_expert_layout_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = save_checkpoint(tmp_path / "unsloth")
    rewrite_as_unsloth_split_experts(directory)
    monkeypatch.setattr(tb, "_unsloth_available", lambda: False)
    with pytest.raises(ModelLoadError, match="split-expert"):
        TransformersBackend(settings_for(directory))


def test_split_expert_layout_goes_to_unsloth_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = save_checkpoint(tmp_path / "unsloth")
    rewrite_as_unsloth_split_experts(directory)
    calls: list[str] = []
    monkeypatch.setattr(tb, "_unsloth_available", lambda: True)
    monkeypatch.setattr(tb, "_load_with_unsloth", lambda model_id, settings: (calls.append(model_id), None))
    TransformersBackend(settings_for(directory))
    assert calls == [str(directory)]


def test_missing_tensor_is_refused_by_loading_info(tmp_path: Path) -> None:
    directory = save_checkpoint(tmp_path / "holey")
    path = directory / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.self_attn.q_proj.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"1 weights missing.*q_proj"):
        TransformersBackend(settings_for(directory))


def test_peft_adapter_loads_on_its_base(tiny_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    adapter = write_lora_adapter(tiny_dir, tmp_path / "adapter")
    backend = TransformersBackend(settings_for(adapter), current_date=DATE)
    assert isinstance(backend.lm, PeftModel)
    base = TransformersBackend(settings_for(tiny_dir), current_date=DATE)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(backend.lm(input_ids=ids).logits, base.lm(input_ids=ids).logits)

    # `base_model` overrides the adapter's recorded base; nf4 base works too.
    override = settings_for(adapter, base_model=str(tiny_dir), load_in_4bit=bnb_cpu_4bit_supported())
    assert isinstance(TransformersBackend(override).lm, PeftModel)


# --- stopping -----------------------------------------------------------------------------------------------


def test_final_end_stop_only_after_final_channel() -> None:
    tokenizer = build_tokenizer()
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    prompt = tokenizer("<|start|>assistant", add_special_tokens=False)["input_ids"]
    stop = FinalEndStop(tokenizer, len(prompt), end_id)

    def check(completion: str) -> bool:
        ids = prompt + tokenizer(completion, add_special_tokens=False)["input_ids"]
        return bool(stop(torch.tensor([ids]), torch.zeros(1))[0])

    assert not check(ANALYSIS)
    assert not check(ANALYSIS + FINAL)
    assert check(ANALYSIS + FINAL + "<|end|>")


# --- end to end on an overfit model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_backend(tiny_dir: Path) -> TransformersBackend:
    """Overfit to a completion that closes the final with <|end|> and then keeps going (junk after it)."""
    backend = TransformersBackend(settings_for(tiny_dir, max_new_tokens=96), current_date=DATE)
    paper, passages = sample_paper()
    completion = ANALYSIS + FINAL + "<|end|><|start|>assistant<|channel|>final<|message|>JUNK JUNK<|return|>"
    completion_ids = backend.tokenizer(completion, add_special_tokens=False)["input_ids"]
    loss = overfit(backend.lm, backend.prompt_ids(QUESTION, passages, paper), completion_ids)
    assert loss < 0.05
    return backend


def test_generate_end_to_end(trained_backend: TransformersBackend) -> None:
    paper, passages = sample_paper()
    text = trained_backend.generate_text(trained_backend.prompt_ids(QUESTION, passages, paper))
    # The analysis <|end|> did not stop generation; the final's <|end|> did (no JUNK).
    assert text == ANALYSIS + FINAL + "<|end|>"

    draft = trained_backend.generate(QUESTION, passages, paper)
    assert draft.steps == ["Locate the section.", "Quote it [1]."]
    assert draft.answer == "Both protocols generated immature tissue [1]."  # [7] was never given
    assert [(span.chunk_id, span.start, span.end) for span in draft.cited] == [
        (passages[0].chunk.chunk_id, passages[0].chunk.start, passages[0].chunk.end)
    ]
    assert not draft.truncated and not draft.abstained


def test_stream_end_to_end(trained_backend: TransformersBackend) -> None:
    paper, passages = sample_paper()
    events = list(trained_backend.stream(QUESTION, passages, paper))
    assert [(e.event, e.data) for e in events if e.event == "step"] == [
        ("step", "Locate the section."),
        ("step", "Quote it [1]."),
    ]
    answer = "".join(e.data for e in events if e.event == "answer")
    assert answer == "Both protocols generated immature tissue [1] [7]."
    assert events[-1].event == "done"
    assert Draft.model_validate(events[-1].data) == trained_backend.generate(QUESTION, passages, paper)


def test_max_new_tokens_truncates_and_marks_it(trained_backend: TransformersBackend) -> None:
    paper, passages = sample_paper()
    head = ANALYSIS + "<|start|>assistant<|channel|>final<|message|>"
    budget = len(trained_backend.tokenizer(head, add_special_tokens=False)["input_ids"]) + 2
    trained_backend.settings = trained_backend.settings.model_copy(update={"max_new_tokens": budget})
    try:
        prompt = trained_backend.prompt_ids(QUESTION, passages, paper)
        text = trained_backend.generate_text(prompt)
        draft = trained_backend.generate(QUESTION, passages, paper)
    finally:
        trained_backend.settings = trained_backend.settings.model_copy(update={"max_new_tokens": 96})
    assert text.startswith(head) and not text.endswith("<|end|>")  # cut two tokens into the final
    assert draft.truncated and draft.answer == text[len(head) :].strip()
    assert draft.steps == ["Locate the section.", "Quote it [1]."]


def test_timeout_raises_in_generate_and_stream(trained_backend: TransformersBackend) -> None:
    paper, passages = sample_paper()
    trained_backend.settings = trained_backend.settings.model_copy(update={"generation_timeout_s": 0.0})
    try:
        with pytest.raises(GenerationTimeout):
            trained_backend.generate(QUESTION, passages, paper)
        with pytest.raises(GenerationTimeout, match="exceeded"):  # raised in the consumer's thread
            list(trained_backend.stream(QUESTION, passages, paper))
    finally:
        trained_backend.settings = trained_backend.settings.model_copy(update={"generation_timeout_s": 120.0})
