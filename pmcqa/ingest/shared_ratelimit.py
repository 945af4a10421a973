"""An NCBI rate limit shared by every process (and machine) that calls NCBI, through Redis or PostgreSQL.

NCBI's limit (3 requests/s without an API key, 10/s with one) holds per key/IP, not per process, so processes
that each kept their own limiter would multiply it. In networked mode (`PMCQA_REDIS_URL`) every NCBI client
takes its turns here by default (`ingest.entrez.ncbi_limiter`): the workers, the API's id resolver and
`pmcqa ingest --inline`. A PostgreSQL library without Redis (`PMCQA_DATABASE_URL` only: API replicas on
several hosts, each with its embedded worker) shares the limit through `PostgresRateLimiter` instead.

`RedisRateLimiter` keeps a sliding-window log in one Redis sorted set and decides admission in a Lua script,
atomically, on Redis's own clock (so workers on machines with skewed clocks still agree);
`PostgresRateLimiter` reserves slots of a shared minimum interval on PostgreSQL's clock. Both meet
`ingest.entrez`'s `RateLimiter` protocol: `acquire()` blocks until a request may be sent.

An embedded library (SQLite, one machine) needs no cross-process limiter as long as one process calls NCBI
(`pmcqa serve` runs the API and its worker in one): its threads share the process's limiter. Running several
embedded worker processes, or `pmcqa ingest --inline` beside a serving API, against NCBI would exceed the
limit; use Redis (or a PostgreSQL library) for that.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from pmcqa.core.db import connection_pool, ensure_postgres_schema
from pmcqa.core.extras import require_extra

# KEYS[1] = the window's sorted set; ARGV = limit, window (µs), member.
# Returns 0 when admitted, else the µs to wait until the oldest entry leaves the window.
_ACQUIRE = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

# Requests are timed where they leave us, but NCBI counts where they arrive: a request that lingers in
# transit and the next one sent on time can land closer together than the window. A small widening of the
# window absorbs that jitter.
DEFAULT_SLACK_S = 0.1


def window_for(rate: float, slack_s: float = DEFAULT_SLACK_S) -> tuple[int, float]:
    """(requests, seconds) per window for `rate`/s: 3/s → 3 per 1.1 s; 0.5/s → 1 per 2.1 s."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    limit = max(1, math.floor(rate))
    return limit, limit / rate + slack_s


class RedisRateLimiter:
    """At most `rate` acquisitions per second across every process sharing `key` on one Redis."""

    def __init__(
        self,
        client: Any,
        key: str,
        rate: float,
        slack_s: float = DEFAULT_SLACK_S,
        max_wait_s: float | None = None,
    ) -> None:
        self.client = client
        self.key = key
        self.rate = rate
        self.limit, self.window_s = window_for(rate, slack_s)
        self.max_wait_s = max_wait_s
        self._script = client.register_script(_ACQUIRE)

    @classmethod
    def from_url(cls, url: str, key: str, rate: float, **kwargs: Any) -> RedisRateLimiter:
        require_extra("redis", "the shared NCBI rate limit (PMCQA_REDIS_URL)")
        import redis

        return cls(redis.Redis.from_url(url), key, rate, **kwargs)

    def try_acquire(self) -> float:
        """0.0 when a slot was taken, else seconds to wait before trying again."""
        member = uuid.uuid4().hex  # unique, so two admissions in the same µs do not collapse into one
        wait_us = int(self._script(keys=[self.key], args=[self.limit, int(self.window_s * 1e6), member]))
        return wait_us / 1e6

    def acquire(self) -> None:
        deadline = None if self.max_wait_s is None else time.monotonic() + self.max_wait_s
        while True:
            wait = self.try_acquire()
            if wait <= 0:
                return
            if deadline is not None and time.monotonic() + wait > deadline:
                raise TimeoutError(f"NCBI rate limit: no slot within {self.max_wait_s}s")
            time.sleep(wait)


# Reserve the next send slot in one statement on the server's clock: the row lock lasts microseconds, callers
# are served in arrival order, and a caller sleeps only for its own slot (no retry loop).
_RESERVE_SLOT = """
INSERT INTO ncbi_rate AS r (key, next_at) VALUES (%(key)s, extract(epoch FROM clock_timestamp()) + %(gap)s)
ON CONFLICT (key) DO UPDATE SET next_at = GREATEST(r.next_at, extract(epoch FROM clock_timestamp())) + %(gap)s
RETURNING next_at - %(gap)s, extract(epoch FROM clock_timestamp())
"""


class PostgresRateLimiter:
    """At most `rate` acquisitions per second across every process sharing `key` in one PostgreSQL database.

    A shared minimum interval (GCRA without burst, like `ingest.entrez.IntervalRateLimiter`): each caller
    reserves the next free slot, `headroom` below the allowed rate, and sleeps until it. No window can then
    hold more than `rate` requests, whichever host sent them. The table is the library's (`ncbi_rate`,
    alembic revision 0003).
    """

    def __init__(self, pool: Any, key: str, rate: float, headroom: float = 0.9) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.pool = pool
        self.key = key
        self.rate = rate
        self.interval_s = 1.0 / (rate * headroom)

    @classmethod
    def for_settings(cls, settings: Any, key: str, rate: float) -> PostgresRateLimiter:
        ensure_postgres_schema(settings)  # the table comes with the library's migrations
        return cls(connection_pool(settings), key, rate)

    def reserve(self) -> tuple[float, float]:
        """Take the next slot: (the slot, the server's time now), both in seconds on the server's clock."""
        with self.pool.connection() as conn:
            row = conn.execute(_RESERVE_SLOT, {"key": self.key, "gap": self.interval_s}).fetchone()
        return float(row[0]), float(row[1])

    def acquire(self) -> None:
        slot, now = self.reserve()
        if slot > now:
            time.sleep(slot - now)
