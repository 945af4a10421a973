"""Prompt text shared by the LLM backends (transformers and OpenAI-compatible servers).

The developer prompt is the fine-tune's training text, verbatim: Bio-GPT-OSS-20B learned to follow exactly
this line, so any rewording moves the model off its training distribution. Training put only the question in
the user turn; the service must also hand over the paper, so the user turn carries the retrieved excerpts as
labelled data first and the question last, followed by one short citation instruction.
"""

from __future__ import annotations

from pmcqa.app.answering.base import ABSTAIN_ANSWER

# Exactly as trained (model card, `developer` field). Do not edit.
DEVELOPER_PROMPT = (
    "You are a scholarly Q & A extraction agent. Only use the provided paper. Be concise and precise."
)

# One excerpt: its citation number, the section path it came from, then its text.
EXCERPT_TEMPLATE = "[{number}] ({section}) {text}"

# Section label when a chunk has no section path (title, abstract without heading, ...).
UNSECTIONED_LABEL = "Untitled section"

CITATION_INSTRUCTION = (
    "Answer from these excerpts only. Cite each excerpt you use by its number in square brackets, e.g. [1]. "
    f'If the excerpts do not answer the question, say "{ABSTAIN_ANSWER}"'
)

# The user turn: the paper as data, then the question, then how to cite.
USER_TEMPLATE = "Paper: {title}\n\nExcerpts:\n{excerpts}\n\nQuestion: {question}\n\n{instruction}"
