"""`pmcqa reindex`: re-embed every stored paper with the configured embedding model.

Run it after changing `PMCQA_EMBEDDING_MODEL` (or the document prefix): the store refuses to mix vectors of
two models and says so (`EmbeddingModelMismatch`). Each paper is re-embedded in its own transaction, so an
interrupted reindex resumes where it stopped (vectors already computed with the new model are reused).
Stop the service and the worker while it runs: until it finishes, the library holds vectors of both models,
and every other use of it (serve, ingest, ask, search) is refused (`ReindexUnfinished`) until it is run
again.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pmcqa.core.settings import Settings
from pmcqa.index.library import open_library


def register(cli: typer.Typer) -> None:
    cli.command("reindex")(reindex)


def reindex() -> None:
    """Re-embed every paper's chunks with the configured model and rebuild the library index."""
    console = Console(stderr=True)
    settings = Settings()
    # Not writable: opening must not fail on the very mismatch this command fixes; reindex is the one write
    # that changes the stored model.
    library = open_library(settings, writable=False)
    store, embedder = library.store, library.embedder
    try:
        before = store.embedding_info()
        columns = (TextColumn("re-embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("reindex", total=store.count_papers())
            done = store.reindex(embedder, lambda n, total: progress.update(task, completed=n, total=total))
    finally:
        library.close()
    previous = f"{before.model_name} ({before.dimension}-d)" if before else "(empty store)"
    console.print(
        f"re-embedded {done} papers: {previous} -> {embedder.model_name} ({embedder.dimension}-d); "
        f"index at {settings.index_dir}"
    )
