"""Refusals of the service: one exception family for the HTTP API, the CLI and the answer stream.

Each `ServiceError` class carries its JSON error code, HTTP status and CLI exit code, so the API's error
handler, `pmcqa ask` / `pmcqa search` and the stream's `error` event all report a refusal the same way:
``{"error": code, "detail": message}`` with `http_status`, or ``error: message`` and exit `exit_code`.
An instance may name a more precise `code` (e.g. ``too_many_ids``) and add fields to the JSON body.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """A request the service refuses."""

    code: str = "error"  # an instance may name a more precise one
    http_status: ClassVar[int] = 400
    exit_code: ClassVar[int] = 1

    def __init__(
        self, detail: str, *, code: str | None = None, retry_after_s: int | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s  # sent as `Retry-After` when the refusal is temporary
        self.extra = extra

    def headers(self) -> dict[str, str] | None:
        """HTTP headers of the refusal: `Retry-After` when it says when to come back."""
        return None if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": self.code, "detail": self.detail, **self.extra}


class InvalidInput(ServiceError):
    """Malformed id, empty or over-long question or query, unknown mode, ..."""

    code = "invalid_request"
    http_status = 422
    exit_code = 2


class PaperNotFound(ServiceError):
    code = "paper_not_found"
    http_status = 404
    exit_code = 3

    @classmethod
    def for_paper(cls, label: str, hint: str = "") -> PaperNotFound:
        """The not-found message for a paper id, saying how to ingest it; `hint` names the other reading of a
        bare number (`pmcqa.core.ids.not_found_hint`)."""
        aside = f" ({hint})" if hint else ""
        return cls(
            f"{label} is not in the library{aside}. Ingest it first: `pmcqa ingest {label}` "
            f'or `POST /ingest` with {{"ids": ["{label}"]}}.'
        )


class PaperBusy(ServiceError):
    """The paper is queued or being ingested (see `pmcqa.core.status.BUSY`)."""

    code = "paper_being_ingested"
    http_status = 409
    exit_code = 4

    @classmethod
    def for_paper(cls, paper_id: str, status: str) -> PaperBusy:
        return cls(f"{paper_id} is being ingested (status: {status}); retry when it is done.")


class BackendNotReady(ServiceError):
    code = "backend_not_ready"
    http_status = 503
    exit_code = 5


class UpstreamUnavailable(ServiceError):
    """NCBI (needed to resolve a PMID or DOI the library does not know) could not be reached."""

    code = "ncbi_unreachable"
    http_status = 503
    exit_code = 5


class UpstreamTimeout(ServiceError):
    """NCBI did not answer an id lookup within the request's deadline."""

    code = "ncbi_timeout"
    http_status = 504
    exit_code = 6


class GenerationTimeout(ServiceError, TimeoutError):
    """An answer took longer than `generation_timeout_s` (raised by the service and by backends alike)."""

    code = "generation_timeout"
    http_status = 504
    exit_code = 6


class ModelServerError(ServiceError):
    """The model server (the `openai` backend's) answered with an error or a reply that cannot be read."""

    code = "model_server_error"
    http_status = 502
    exit_code = 7


class JobNotFound(ServiceError):
    code = "job_not_found"
    http_status = 404
    exit_code = 3


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"
    http_status = 413
    exit_code = 2


class InternalError(ServiceError):
    """Something broke on our side; the detail never carries a traceback."""

    code = "internal_error"
    http_status = 500
    exit_code = 1
