"""Optional parts of pmcqa (`pip install 'pmcqa[NAME]'`) and the error a missing one gives.

The extractive default needs none of them. Each extra is listed with the modules it provides, so a feature
can check for them before importing and fail with a message that names the extra to install, not with a bare
ImportError from deep inside a library. pyproject.toml's `[project.optional-dependencies]` declares the same
extras (a test keeps the two in step).
"""

from __future__ import annotations

import importlib.util

# extra -> the top-level modules its distributions install (import names, not distribution names)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "llm": ("transformers", "accelerate", "bitsandbytes", "peft", "huggingface_hub", "safetensors"),
    "openai": ("openai",),
    "postgres": ("psycopg", "psycopg_pool", "pgvector"),
    "redis": ("redis",),
    "s3": ("boto3",),  # PMCQA_RAW_STORE=s3://…
    "report": ("pubmed_parser",),  # `pmcqa report`'s side-by-side row (it names the extra itself)
}


class MissingExtra(ImportError):
    """A feature needs an optional part of pmcqa that is not installed."""

    def __init__(self, extra: str, feature: str, missing: list[str]) -> None:
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"{feature} needs the optional '{extra}' dependencies ({', '.join(missing)} not installed): "
            f"pip install 'pmcqa[{extra}]'"
        )


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    return [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]


def require_extra(extra: str, feature: str) -> None:
    """Raise `MissingExtra` naming `extra` when any of its modules is absent."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(extra, feature, missing)
