"""Answer backends by name: the one place that maps the `answer_backend` setting to a constructor.

Each entry is a small factory taking `(settings, embedder)`. The LLM backends import their modules inside the
factory because those modules import torch/transformers or the OpenAI client at the top: choosing `extractive`
must never pay for them, and a backend whose optional dependencies are missing only fails when asked for,
with a `MissingExtra` error that names the extra to install (`pmcqa[llm]`, `pmcqa[openai]`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pmcqa.app.answering.base import AnswerBackend
from pmcqa.app.answering.extractive import ExtractiveBackend
from pmcqa.core.extras import require_extra
from pmcqa.core.settings import Settings

BackendFactory = Callable[[Settings, Any], AnswerBackend]


def _extractive(settings: Settings, embedder: Any) -> AnswerBackend:
    return ExtractiveBackend(settings, embedder)


def _transformers(settings: Settings, embedder: Any) -> AnswerBackend:
    require_extra("llm", "the transformers answer backend")
    # Deferred: the module imports torch and transformers (seconds, hundreds of MB).
    from pmcqa.app.answering.transformers_backend import TransformersBackend

    return TransformersBackend(settings, load=False)  # the weights load in a background thread


def _openai(settings: Settings, embedder: Any) -> AnswerBackend:
    require_extra("openai", "the openai answer backend")
    # Deferred: the module imports the openai client, which the extractive default never needs.
    from pmcqa.app.answering.openai_backend import OpenAIBackend

    return OpenAIBackend(settings)


BACKENDS: dict[str, BackendFactory] = {
    "extractive": _extractive,
    "transformers": _transformers,
    "openai": _openai,
}


class UnknownBackend(ValueError):
    pass


def create_backend(name: str, settings: Settings, embedder: Any = None) -> AnswerBackend:
    """Backend `name`, created unloaded where loading is slow (see `Library.load_backend`)."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise UnknownBackend(
            f"unknown answer backend {name!r}; choose one of {', '.join(BACKENDS)}"
        ) from None
    return factory(settings, embedder)
