"""`pmcqa serve`: run the HTTP API with uvicorn.

The port opens at once: the app loads its library (embedding model, index, answer backend) in a background
thread (`pmcqa.app.loader`), answering /healthz meanwhile and 503 with `Retry-After` where the library is
needed. The embedded worker is a child process started without waiting for it.

SIGTERM and SIGINT stop both: uvicorn drains the API (at most `SHUTDOWN_GRACE_S` for open requests), then
the worker is stopped (`EmbeddedWorker.stop`: it finishes or releases its batch). uvicorn re-raises the signal
it caught once it is done; SIGINT's Python handler raises KeyboardInterrupt, and SIGTERM gets one that raises
SystemExit, so the clean-up below runs for both instead of the process dying where it stands.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from types import FrameType

import typer
import uvicorn

from pmcqa.app.main import create_app
from pmcqa.core.logs import configure_logging
from pmcqa.core.settings import Settings
from pmcqa.ingest.worker import serve_with_worker

SHUTDOWN_GRACE_S = 10.0


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    sys.exit(128 + signum)


def free_port(host: str, port: int) -> int:
    """The port to serve on, checked before the banner and the worker: one that cannot be bound (in use, an
    unknown address) is one line and exit 1, not a uvicorn error after the banner had said where the API is
    and a worker had started; port 0 picks a free one now, so the banner names it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            probe.bind((host, port))
        except OSError as exc:
            typer.echo(f"pmcqa: cannot serve on {host}:{port}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
        return int(probe.getsockname()[1])


def serve(
    host: str | None = typer.Option(None, help="Bind address (default: PMCQA_HOST, 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default: PMCQA_PORT, 8080)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    worker: bool | None = typer.Option(
        None,
        "--worker/--no-worker",
        help="Start an ingest worker beside the API (default: unless the queue is Redis or PostgreSQL).",
    ),
) -> None:
    """Serve the question-answering API (POST /ask, /search, /papers, /healthz, /readyz, /metrics)."""
    overrides = {key: value for key, value in {"host": host, "port": port}.items() if value is not None}
    settings = Settings(**overrides)
    settings = settings.model_copy(update={"port": free_port(settings.host, settings.port)})
    base = f"http://{settings.host}:{settings.port}"
    auth = ' -H "Authorization: Bearer $KEY"' if settings.api_keys else ""
    typer.echo(f"pmcqa API on {base}  (docs: {base}/docs, backend: {settings.answer_backend})")
    typer.echo(
        "Ingest a first paper:  pmcqa ingest PMC8026465   or  "
        f"curl -X POST {base}/ingest{auth} -H 'Content-Type: application/json' "
        '-d \'{"ids": ["PMC8026465"]}\''
    )
    typer.echo(
        f"Then ask:  curl -X POST {base}/ask{auth} -H 'Content-Type: application/json' "
        '-d \'{"paper_id": "PMC8026465", "question": "What did the authors find?"}\''
    )
    # One handler for every logger, uvicorn's included (log_config=None): each line carries the request id,
    # PMCQA_LOG_FORMAT=json makes them JSON; the access line comes from our middleware, not uvicorn's.
    configure_logging(settings.log_format, getattr(logging, log_level.upper(), logging.INFO))
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    embedded = serve_with_worker(settings, worker, typer.echo)
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
    finally:
        if embedded is not None:
            embedded.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def register(cli: typer.Typer) -> None:
    cli.command("serve")(serve)
