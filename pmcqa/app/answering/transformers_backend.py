"""Answer with a local gpt-oss checkpoint (Bio-GPT-OSS-20B) through transformers.

Loading (`settings.model`: hub id or local dir):
- a PEFT adapter (`adapter_config.json`) loads its base (`settings.base_model`, else the adapter's
  `base_model_name_or_path`) and then the adapter;
- `load_in_4bit` quantizes `nn.Linear` layers to nf4 with bitsandbytes on CUDA, and on CPU where the installed
  bitsandbytes can (0.50.2 can; measured). gpt-oss experts are 3-D parameters and stay bf16 either way;
- a checkpoint whose weights do not all load is refused. Stock transformers loads the Unsloth split-expert
  bnb layout (`experts.gate_up_projs.N`, `router.linear`) with *random* experts and only a warning; we detect
  the layout up front and also fail on any missing key afterwards. That layout loads through Unsloth when it
  is installed (CUDA only).

Generation: greedy, `max_new_tokens`, eos = `<|return|>`/`<|call|>`, `<|end|>` stops only after the final
channel, and a wall-clock limit (`generation_timeout_s` → `GenerationTimeout`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from pmcqa.app.answering import harmony
from pmcqa.app.answering.base import BackendEvent, Draft
from pmcqa.app.answering.postprocess import StreamAssembler, build_draft
from pmcqa.app.errors import GenerationTimeout
from pmcqa.core.settings import Settings
from pmcqa.index.models import PaperRecord, Passage

log = logging.getLogger(__name__)

# Key fragments of the Unsloth bnb-4bit MoE layout that stock GptOss ignores (unsloth-zoo #802, #856).
UNSLOTH_SPLIT_EXPERT_MARKERS = (".experts.gate_up_projs.", ".experts.down_projs.", ".router.linear.")


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be loaded faithfully (never run a model with randomly initialized weights)."""


# --- checkpoint inspection ----------------------------------------------------------------------------------


def _checkpoint_file(model_id: str, filename: str) -> Path | None:
    """A file of a local dir or hub repo (cache or Hub); None where it doesn't exist or can't be fetched."""
    local = Path(model_id)
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model_id, filename))
    except Exception:  # missing file, offline, private: the caller falls back to the generic checks
        return None


def _read_json(model_id: str, filename: str) -> dict[str, Any] | None:
    path = _checkpoint_file(model_id, filename)
    return json.loads(path.read_text()) if path else None


def checkpoint_keys(model_id: str) -> set[str]:
    """Tensor names of a safetensors checkpoint (from the index, else the single file); empty if unknown."""
    index = _read_json(model_id, "model.safetensors.index.json")
    if index:
        return set(index.get("weight_map", {}))
    path = _checkpoint_file(model_id, "model.safetensors") if Path(model_id).is_dir() else None
    if not path:
        return set()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


def uses_unsloth_split_experts(keys: set[str]) -> bool:
    return any(marker in key for key in keys for marker in UNSLOTH_SPLIT_EXPERT_MARKERS)


def check_loading_info(info: dict[str, Any], model_id: str) -> None:
    """Fail on missing or mismatched weights (they would be random); warn on unexpected ones."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    if missing or mismatched:
        raise ModelLoadError(
            f"{model_id}: {len(missing)} weights missing and {len(mismatched)} mismatched in the checkpoint "
            f"(e.g. {(missing or mismatched)[:4]}); they would be randomly initialized. "
            f"{len(unexpected)} checkpoint tensors were not used (e.g. {unexpected[:4]}). "
            "Refusing to answer with random weights."
        )
    if unexpected:
        log.warning("%s: %d checkpoint tensors unused, e.g. %s", model_id, len(unexpected), unexpected[:4])


# --- quantization -------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def bnb_cpu_4bit_supported() -> bool:
    """Whether the installed bitsandbytes quantizes nf4 on CPU (0.50.2 ships a CPU library); probed."""
    try:
        import bitsandbytes.functional as bnb_functional

        bnb_functional.quantize_4bit(torch.ones(64, dtype=torch.bfloat16), quant_type="nf4")
        return True
    except Exception as error:  # no CPU backend in this build
        log.info("bitsandbytes cannot quantize on CPU: %s", error)
        return False


def quantization_config(settings: Settings, model_config: dict[str, Any] | None) -> BitsAndBytesConfig | None:
    """nf4 when asked for and possible; None for an already-quantized checkpoint (its config says how)."""
    if not settings.load_in_4bit:
        return None
    if model_config and model_config.get("quantization_config"):
        return None
    if not torch.cuda.is_available() and not bnb_cpu_4bit_supported():
        log.warning("load_in_4bit requested but bitsandbytes has no CPU 4-bit support; loading unquantized")
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )


def compute_dtype() -> torch.dtype:
    """bf16 (gpt-oss's dtype) on CPU and on GPUs that have it; fp16 on older GPUs (T4, V100)."""
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


# --- loading ------------------------------------------------------------------------------------------------


def _load_with_unsloth(model_id: str, settings: Settings) -> tuple[Any, Any]:
    # Unsloth patches GptOss to read its split-expert bnb layout. CUDA + Triton only [unverified here].
    from unsloth import FastLanguageModel  # type: ignore[import-not-found]

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_id, max_seq_length=8192, load_in_4bit=True, dtype=None
    )
    FastLanguageModel.for_inference(model)
    return model, tokenizer


def _unsloth_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("unsloth") is not None


def load_causal_lm(model_id: str, settings: Settings) -> Any:
    """Load a full (non-adapter) checkpoint with the missing-weights guard."""
    if uses_unsloth_split_experts(checkpoint_keys(model_id)):
        if _unsloth_available():
            return _load_with_unsloth(model_id, settings)[0]
        raise ModelLoadError(
            f"{model_id} stores its experts in Unsloth's split-expert bnb-4bit layout "
            "(experts.gate_up_projs.N / router.linear), which stock transformers would load with random "
            "expert weights. Install unsloth (CUDA) to load it, or use a merged 16-bit / MXFP4 export."
        )
    quantization = quantization_config(settings, _read_json(model_id, "config.json"))
    kwargs: dict[str, Any] = {
        "device_map": "auto" if torch.cuda.is_available() else "cpu",
        "dtype": compute_dtype() if quantization else "auto",
        "output_loading_info": True,
    }
    if quantization:
        kwargs["quantization_config"] = quantization
    model, info = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
    check_loading_info(info, model_id)
    return model.eval()


def _load_adapter(base: Any, adapter_id: str) -> Any:
    """PeftModel on `base`; refuse if some adapter tensors found no module to load into."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, adapter_id)
    adapter_keys = checkpoint_keys_of_adapter(adapter_id)
    loaded = [name for name, _ in model.named_parameters() if "lora_" in name]
    if adapter_keys and len(loaded) != len(adapter_keys):
        raise ModelLoadError(
            f"{adapter_id}: adapter has {len(adapter_keys)} tensors but {len(loaded)} LoRA parameters were "
            "created on the base model; the adapter does not match its base."
        )
    return model.eval()


def checkpoint_keys_of_adapter(adapter_id: str) -> set[str]:
    path = _checkpoint_file(adapter_id, "adapter_model.safetensors")
    if not path:
        return set()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


def _check_local_path(name: str, setting: str) -> None:
    """A model named by a path (absolute, ./, ../, ~) that is not there is said to be missing; transformers
    would take it for a malformed Hub id ("Repo id must be in the form 'repo_name' or ...")."""
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise ModelLoadError(f"{setting}={name}: no such directory (give a local checkpoint or a Hub id)")


def load_model_and_tokenizer(settings: Settings) -> tuple[Any, Any]:
    """`settings.model` as a full checkpoint or a PEFT adapter on its base."""
    _check_local_path(settings.model, "PMCQA_MODEL")
    adapter_config = _read_json(settings.model, "adapter_config.json")
    if adapter_config is None:
        return load_causal_lm(settings.model, settings), AutoTokenizer.from_pretrained(settings.model)
    base_id = settings.base_model or adapter_config.get("base_model_name_or_path")
    if not base_id:
        raise ModelLoadError(f"{settings.model} is a PEFT adapter without a base model; set base_model")
    _check_local_path(base_id, "PMCQA_BASE_MODEL" if settings.base_model else "its base_model_name_or_path")
    model = _load_adapter(load_causal_lm(base_id, settings), settings.model)
    has_tokenizer = _checkpoint_file(settings.model, "tokenizer_config.json") is not None
    return model, AutoTokenizer.from_pretrained(settings.model if has_tokenizer else base_id)


# --- stopping -----------------------------------------------------------------------------------------------


class FinalEndStop(StoppingCriteria):
    """Stop at `<|end|>` only when it closes the final message (Unsloth-trained models end finals so)."""

    def __init__(self, tokenizer: Any, prompt_length: int, end_id: int | None) -> None:
        self.tokenizer, self.prompt_length, self.end_id = tokenizer, prompt_length, end_id

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.end_id is None:
            return done
        for row, ids in enumerate(input_ids):
            if int(ids[-1]) == self.end_id:  # decode only on <|end|>, which is rare
                text = self.tokenizer.decode(ids[self.prompt_length :], skip_special_tokens=False)
                done[row] = harmony.should_stop_on_end(text)
        return done


class WallClockStop(StoppingCriteria):
    """Stop once `limit_s` have passed; `fired` tells the caller the answer was cut by time."""

    def __init__(self, limit_s: float) -> None:
        self.deadline = time.monotonic() + limit_s
        self.fired = False

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        self.fired = self.fired or time.monotonic() >= self.deadline
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


class CancelStop(StoppingCriteria):
    """Stop at the next token once `cancelled` is set (the stream's consumer went away)."""

    def __init__(self, cancelled: threading.Event) -> None:
        self.cancelled = cancelled

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        stop = self.cancelled.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _token_id(tokenizer: Any, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id if isinstance(token_id, int) and token_id != tokenizer.unk_token_id else None


# --- the backend --------------------------------------------------------------------------------------------


class TransformersBackend:
    name = "transformers"

    def __init__(self, settings: Settings, *, current_date: str | None = None, load: bool = True) -> None:
        self.settings = settings
        self.model = settings.model
        self.current_date = current_date  # pins the template's date line (tests); None = today
        self._lm: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()  # one generation at a time on one model
        if load:
            self.load()

    def load(self) -> None:
        self._lm, self._tokenizer = load_model_and_tokenizer(self.settings)
        eos = [_token_id(self._tokenizer, token) for token in (*harmony.eos_tokens(), harmony.ENDOFTEXT)]
        self._eos_ids = [token_id for token_id in eos if token_id is not None]
        self._end_id = _token_id(self._tokenizer, harmony.END)

    @property
    def lm(self) -> Any:
        return self._lm

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def is_ready(self) -> bool:
        return self._lm is not None

    # prompt ------------------------------------------------------------------------------------------------

    def prompt_ids(self, question: str, passages: list[Passage], paper: PaperRecord) -> list[int]:
        """Render, tokenize and check the prompt (control tokens only where the template put them)."""
        messages = harmony.build_messages(question, passages, paper)
        text = harmony.render_prompt(
            self._tokenizer, messages, self.settings.reasoning_effort, current_date=self.current_date
        )
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        harmony.verify_prompt_structure(self._tokenizer, ids)
        return list(ids)

    # generation --------------------------------------------------------------------------------------------

    def generate_text(
        self, prompt_ids: list[int], streamer: Any = None, cancelled: threading.Event | None = None
    ) -> str:
        """Raw completion text (special tokens kept); raises GenerationTimeout past the wall-clock limit.

        Setting `cancelled` stops generation at the next token (and so frees the model for the next request).
        """
        if not self.is_ready():
            raise RuntimeError("transformers backend: model not loaded")
        clock = WallClockStop(self.settings.generation_timeout_s)
        criteria = StoppingCriteriaList([FinalEndStop(self._tokenizer, len(prompt_ids), self._end_id), clock])
        if cancelled is not None:
            criteria.append(CancelStop(cancelled))
        device = getattr(self._lm, "device", torch.device("cpu"))
        input_ids = torch.tensor([prompt_ids], device=device)
        with self._lock, torch.inference_mode():
            output = self._lm.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=self.settings.max_new_tokens,
                eos_token_id=self._eos_ids,
                pad_token_id=self._tokenizer.pad_token_id,
                do_sample=False,  # reproducible answers for a QA service
                stopping_criteria=criteria,
                streamer=streamer,
            )
        if clock.fired:
            raise GenerationTimeout(f"generation exceeded {self.settings.generation_timeout_s:.0f} s")
        return self._tokenizer.decode(output[0, len(prompt_ids) :], skip_special_tokens=False)

    def generate(self, question: str, passages: list[Passage], paper: PaperRecord) -> Draft:
        completion = harmony.parse_completion(self.generate_text(self.prompt_ids(question, passages, paper)))
        return build_draft(
            completion.analysis, completion.final, passages, self.model, truncated=completion.truncated
        )

    def stream(
        self,
        question: str,
        passages: list[Passage],
        paper: PaperRecord,
        cancelled: threading.Event | None = None,
    ) -> Iterator[BackendEvent]:
        """Generation runs in a thread feeding a streamer; `cancelled` (or closing this generator) stops it at
        the next token, which releases the model's lock for the next request."""
        prompt_ids = self.prompt_ids(question, passages, paper)
        streamer = TextIteratorStreamer(
            self._tokenizer,
            skip_prompt=True,
            skip_special_tokens=False,
            timeout=self.settings.generation_timeout_s + 30,
        )
        outcome: dict[str, Any] = {}
        cancelled = cancelled or threading.Event()
        worker = threading.Thread(
            target=self._stream_worker, args=(prompt_ids, streamer, outcome, cancelled), daemon=True
        )
        worker.start()
        parser, assembler = harmony.CompletionStream(), StreamAssembler()
        try:
            for piece in streamer:
                yield from assembler.take(parser.feed(piece))
        except BaseException:  # closed early (GeneratorExit: the consumer went away) or failed
            cancelled.set()  # generation stops at the next token and releases the lock
            raise
        worker.join()
        if cancelled.is_set():
            return  # stopped on request: no answer to report
        if "error" in outcome:  # the caller reports it (a GenerationTimeout as a generation_timeout event)
            raise outcome["error"]
        completion = parser.finish()  # the streamed pieces are the whole text: each read once
        yield from assembler.update(completion.analysis, completion.final, finished=True)
        draft = build_draft(
            completion.analysis, completion.final, passages, self.model, truncated=completion.truncated
        )
        yield StreamAssembler.done(draft)

    def _stream_worker(
        self, prompt_ids: list[int], streamer: Any, outcome: dict[str, Any], cancelled: threading.Event
    ) -> None:
        try:
            self.generate_text(prompt_ids, streamer=streamer, cancelled=cancelled)  # its text came streamed
        except Exception as error:  # re-raised in the consuming thread
            outcome["error"] = error
            streamer.end()  # unblock the consumer's iteration
