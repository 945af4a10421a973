"""Alembic revisions of the library database (`pmcqa.core.db` runs them; see its docstring)."""
