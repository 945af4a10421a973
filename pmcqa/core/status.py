"""The one vocabulary of ingest outcomes and paper states, shared by the pipeline, jobs, store and API.

Every status is a `Status` member; its value is the string that goes into SQLite and JSON (a `StrEnum`
compares and hashes equal to that string). The type aliases name the subset each place may hold:

============= =============================================================================================
queued        a job asked for the paper; no worker has started on it yet (ingest status)
ingesting     a worker is fetching / parsing / storing it right now (ingest status)
ingested      full text parsed, chunked and stored
no-full-text  the article exists but has no usable body; its title/abstract are stored
not-found     not in PMC
failed        something went wrong (transport, unusable reply, parse or store error)
invalid       the id or file is malformed, not JATS, or carries no id
pending       a job item no worker has finished yet (job items only)
ok            a stage succeeded: an id resolved, an article fetched (stage results only; never stored)
============= =============================================================================================
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args


class Status(StrEnum):
    QUEUED = "queued"
    INGESTING = "ingesting"
    INGESTED = "ingested"
    NO_FULL_TEXT = "no-full-text"
    NOT_FOUND = "not-found"
    FAILED = "failed"
    INVALID = "invalid"
    PENDING = "pending"
    SUCCESS = "ok"  # a stage result; not `OK` below, the set of stored-paper statuses


# A stored paper record: it has at least a title and abstract.
PaperStatus = Literal[Status.INGESTED, Status.NO_FULL_TEXT]
# The final outcome of one requested id or file.
OutcomeStatus = Literal[PaperStatus, Status.NOT_FOUND, Status.FAILED, Status.INVALID]
# The result of resolving one requested id (ingest/resolve.py) and of fetching one article (ingest/fetch.py).
ResolutionStatus = Literal[Status.SUCCESS, Status.INVALID, Status.NOT_FOUND, Status.FAILED]
FetchStatus = Literal[Status.SUCCESS, Status.NO_FULL_TEXT, Status.NOT_FOUND, Status.FAILED]
# One id of a job, as the jobs table holds it.
ItemStatus = Literal[Status.PENDING, OutcomeStatus]
# The store's per-paper ingest status, which the service reads (409 while busy).
IngestState = Literal[Status.QUEUED, Status.INGESTING, OutcomeStatus]

# Outcomes after which the paper is in the library.
OK: frozenset[Status] = frozenset(get_args(PaperStatus))
# Outcomes that end an id's ingest (a job item is never updated again).
FINAL: frozenset[Status] = frozenset(get_args(OutcomeStatus))
# States in which a paper must not be answered from or deleted: its ingest is under way.
BUSY: frozenset[Status] = frozenset({Status.QUEUED, Status.INGESTING})
