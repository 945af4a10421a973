"""Render the settings tree as the README's configuration table (kept in sync by a test)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices

from pmcqa.core.settings import Settings

START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"


def _env_names(name: str, field) -> str:  # noqa: ANN001 - pydantic FieldInfo
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return " / ".join(f"`{choice}`" for choice in alias.choices)
    return f"`PMCQA_{name.upper()}`"


def _default(field) -> str:  # noqa: ANN001
    if field.default_factory is not None:
        return "(empty)"
    value = field.default
    if value is None:
        return "(unset)"
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    return f"`{value}`"


def settings_table() -> str:
    lines = ["| environment variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| {_env_names(name, field)} | {_default(field)} | {description} |")
    return "\n".join(lines)


def render_into(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{settings_table()}\n{END}{tail}"


if __name__ == "__main__":
    path = Path(__file__).resolve().parents[2] / "README.md"
    path.write_text(render_into(path.read_text()))
