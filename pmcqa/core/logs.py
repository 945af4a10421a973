"""Request ids and log formats, shared by the API and the worker.

- `request_id` holds the id of the request being served (the API's middleware sets it from `X-Request-ID`
  or makes one); it follows the request into worker threads (`contextvars.copy_context`), onto every log
  record (`RequestIdFilter`), into error bodies and to the OpenAI-compatible server.
- `configure_logging("text" | "json", level)` installs one stderr handler on the root logger: text lines
  carry ``[request id]``; json writes one JSON object per record, with the record's `extra` fields, so an
  access line carries request id, route, status and latency as fields.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

REQUEST_ID_HEADER = "X-Request-ID"
request_id: ContextVar[str | None] = ContextVar("pmcqa_request_id", default=None)

# What we accept from a client: printable, no spaces, bounded (it lands in logs and headers verbatim).
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(presented: str | None) -> str:
    """The client's id when it is a sane token, else a fresh one."""
    if presented and _ACCEPTABLE_ID.fullmatch(presented):
        return presented
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or "-") on every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id.get() or "-"
        return True


# Attributes every LogRecord has; anything else on a record came from `extra=` and is written as a field.
_RECORD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"

# Loggers whose INFO lines are the ones `log_format=json` promises (a line per request, per ingest outcome).
ACCESS_LOGGER = "pmcqa.access"
OUTCOME_LOGGER = "pmcqa.ingest.outcome"
# Why an answer backend cannot answer: it failed to load (logged with its traceback), or its model server is
# not ready. A server's log is the only place its operator reads that; a command answering in-process says it
# as its own error line instead (`quiet_backend_status`).
BACKEND_STATUS_LOGGER = "pmcqa.backend_status"


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted (so a replaced stderr is followed)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def configure_logging(log_format: Literal["text", "json"], level: int = logging.WARNING) -> None:
    """Route every logger (uvicorn's included, when it is started with `log_config=None`) to one stderr
    handler; called again, it replaces the handler it installed before (and no one else's)."""
    handler = StderrHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if log_format == "json":  # the per-request and per-outcome lines, whatever the general level
        for name in (ACCESS_LOGGER, OUTCOME_LOGGER):
            logging.getLogger(name).setLevel(min(level, logging.INFO))


@contextlib.contextmanager
def quiet_backend_status() -> Iterator[None]:
    """`BACKEND_STATUS_LOGGER` drops its records within the block: for a command that reports a backend's
    problem itself (`BackendNotReady` as its error line), which the log would otherwise say first."""
    logger = logging.getLogger(BACKEND_STATUS_LOGGER)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)  # above every level: nothing it logs is emitted
    try:
        yield
    finally:
        logger.setLevel(level)  # restored: an in-process caller (tests, a server) keeps its log
