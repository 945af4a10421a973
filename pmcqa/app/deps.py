"""FastAPI dependencies: the process-wide components (created once by the lifespan) and bearer-key auth."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram

from pmcqa.app.answering.base import Answer
from pmcqa.app.loader import LibraryLoader
from pmcqa.app.service import RETRY_AFTER_S, Library
from pmcqa.core.settings import Settings


class AnswerMetrics:
    """Answers by backend, abstentions, and answer latency, on the app's own Prometheus registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.answers = Counter(
            "pmcqa_answers_total",
            "Answers returned, by backend and outcome.",
            ["backend", "abstained"],
            registry=registry,
        )
        self.abstentions = Counter(
            "pmcqa_abstentions_total", "Answers where the backend abstained.", ["backend"], registry=registry
        )
        self.latency = Histogram(
            "pmcqa_answer_seconds",
            "Seconds from request to final answer, by backend.",
            ["backend"],
            registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )

    def observe(self, answer: Answer) -> None:
        self.answers.labels(answer.backend, str(answer.abstained).lower()).inc()
        if answer.abstained:
            self.abstentions.labels(answer.backend).inc()
        self.latency.labels(answer.backend).observe(answer.timings.get("total", 0.0))


_bearer = HTTPBearer(auto_error=False, description="One of PMCQA_API_KEYS, when keys are configured.")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_library(request: Request) -> Library:
    """The library, or 503 while it loads (with `Retry-After`) or after it failed to load."""
    loader: LibraryLoader = request.app.state.loader
    library = loader.library
    if library is not None:
        return library
    if loader.failed:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"the library could not be loaded ({loader.stage})"
        )
    raise HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"the library is still loading ({loader.stage}); retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def get_metrics(request: Request) -> AnswerMetrics:
    return request.app.state.answer_metrics


def key_matches(presented: str, keys: list[str]) -> bool:
    """Constant-time comparison against every configured key: no early exit reveals which one matched, and
    comparing SHA-256 digests (all 32 bytes) keeps the time independent of the keys' lengths too."""
    digest = hashlib.sha256(presented.encode()).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest())
    return matched


async def require_api_key(  # async: a key check needs no worker thread
    settings: Settings = Depends(get_settings),
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """With PMCQA_API_KEYS set, a route guarded by this needs `Authorization: Bearer <key>`; 401 otherwise.

    Every route is guarded but /healthz, /readyz and GET / (probes and the pointer to the docs); the docs
    per `docs_access`, /metrics unless `metrics_port` serves it elsewhere.
    """
    if not settings.api_keys:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not key_matches(credentials.credentials, settings.api_keys):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )
