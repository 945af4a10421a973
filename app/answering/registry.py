"""Answer backends by name: the one place that maps a setting to a class.

Classes are imported lazily so choosing `extractive` never imports torch generation code or the OpenAI
client, and a backend whose dependencies are missing only fails when it is asked for.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from app.answering.base import AnswerBackend
from pmcqa.settings import Settings

BACKENDS: dict[str, str] = {
    "extractive": "app.answering.extractive:ExtractiveBackend",
    "transformers": "app.answering.transformers_backend:TransformersBackend",
    "openai": "app.answering.openai_backend:OpenAIBackend",
}


class UnknownBackend(ValueError):
    pass


def backend_class(name: str) -> type:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise UnknownBackend(
            f"unknown answer backend {name!r}; choose one of {', '.join(BACKENDS)}"
        ) from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def create_backend(name: str, settings: Settings, **shared: Any) -> AnswerBackend:
    """Instantiate backend `name` with `settings` plus whichever shared components it accepts (embedder)."""
    cls = backend_class(name)
    params = inspect.signature(cls).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {key: value for key, value in shared.items() if accepts_any or key in params}
    return cls(settings, **kwargs)
