"""Per-user export rate limit in Redis: a sliding one-hour window, counted atomically.

One Lua script drops expired entries, counts, and takes a slot if one is free, so concurrent
requests on any number of gunicorn workers and hosts can never over-admit. Only accepted exports
count: `reserve()` takes a slot and the caller `release()`s it if the export is then rejected or
cannot be enqueued. The limit is passed on each call (a user's own `export_permissions` limit, or
the role's default), so changing a user's limit takes effect on their next request. Time comes
from the Redis server, so hosts with skewed clocks agree.

Responses carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the
oldest counted export leaves the window), the three-field form of the IETF RateLimit header draft
that most clients parse, plus `Retry-After` on 429. Redis errors become `RetryableError` (503).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import falcon
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.problems import ProblemError
from pipelines.errors import RetryableError

# The window EXPORT_RATE_LIMIT counts over: "exports per user per hour".
WINDOW_SECONDS = 3600
KEY_PREFIX = "data-export:ratelimit:exports:"
# The script runs in well under a millisecond; a second without an answer means Redis is in
# trouble, and the request should fail fast with 503 rather than hang a worker thread.
REDIS_SOCKET_TIMEOUT_SECONDS = 1.0
# One immediate retry covers a pooled connection that died when Redis restarted.
REDIS_RETRIES = 1

# KEYS[1] sorted set of reservations (member: reservation id, score: time in ms).
# ARGV: limit, window ms, reservation id, caller's time in ms or "" for the server's clock.
# Returns {taken 0|1, entries counted after the call, ms until the oldest entry expires}.
_RESERVE_LUA = """
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local taken = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  count = count + 1
  taken = 1
end
redis.call('PEXPIRE', KEYS[1], window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = window
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
end
return {taken, count, reset}
"""


@dataclass(frozen=True)
class Reservation:
    """A slot taken by `reserve()`; hand it to `release()` to give the slot back."""

    key: str
    member: str


@dataclass(frozen=True)
class RateLimitDecision:
    """The outcome of one reservation attempt and the figures the response headers carry."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int | None
    reservation: Reservation | None


def create_redis(url: str) -> redis.Redis:
    """Return a Redis client for the limiter with short timeouts and a single quick retry."""
    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), REDIS_RETRIES),
    )


class RateLimiter:
    """Count accepted exports per user in a sliding window shared by every API process."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        limit: int,
        admin_limit: int,
        window_seconds: int = WINDOW_SECONDS,
        key_prefix: str = KEY_PREFIX,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._limit = limit
        self._admin_limit = admin_limit
        self._window_ms = window_seconds * 1000
        self._key_prefix = key_prefix
        # None: use the Redis server's clock (the production choice); tests may inject one.
        self._clock = clock
        self._script = client.register_script(_RESERVE_LUA)

    def limit_for(self, *, is_admin: bool) -> int:
        """Return the hourly limit for an administrator or an ordinary user."""
        return self._admin_limit if is_admin else self._limit

    def reserve(
        self, user_id: uuid.UUID | str, *, is_admin: bool = False, limit: int | None = None
    ) -> RateLimitDecision:
        """Take one export slot if the window holds fewer than `limit` (None: the role default)."""
        if limit is None:
            limit = self.limit_for(is_admin=is_admin)
        elif limit < 1:
            raise ValueError(f"a rate limit must be at least 1 export per window, not {limit}")
        key = f"{self._key_prefix}{user_id}"
        member = uuid.uuid4().hex
        now_ms = "" if self._clock is None else str(int(self._clock() * 1000))
        try:
            taken, count, reset_ms = self._script(
                keys=[key], args=[limit, self._window_ms, member, now_ms]
            )
        except redis.RedisError as exc:
            raise RetryableError(f"rate limiter unavailable: {exc}") from exc
        reset_seconds = max(1, math.ceil(int(reset_ms) / 1000))
        allowed = bool(taken)
        return RateLimitDecision(
            allowed=allowed,
            limit=limit,
            remaining=max(0, limit - int(count)),
            reset_seconds=reset_seconds,
            retry_after_seconds=None if allowed else reset_seconds,
            reservation=Reservation(key, member) if allowed else None,
        )

    def release(self, reservation: Reservation) -> bool:
        """Give a reserved slot back (the export was rejected or not enqueued); True if it was."""
        try:
            removed: Any = self._client.zrem(reservation.key, reservation.member)
        except redis.RedisError as exc:
            raise RetryableError(f"rate limiter unavailable: {exc}") from exc
        return bool(removed)


def rate_limit_headers(decision: RateLimitDecision) -> dict[str, str]:
    """Return the RateLimit-* headers (and Retry-After when refused) for a decision."""
    headers = {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_seconds),
    }
    if decision.retry_after_seconds is not None:
        headers["Retry-After"] = str(decision.retry_after_seconds)
    return headers


def apply_rate_limit_headers(resp: falcon.Response, decision: RateLimitDecision) -> None:
    """Set the RateLimit-* headers of a decision on a response."""
    resp.set_headers(rate_limit_headers(decision))


def rate_limited(decision: RateLimitDecision) -> ProblemError:
    """Build the 429 problem for a refused reservation, headers included."""
    return ProblemError(
        "rate-limited",
        f"The limit of {decision.limit} accepted exports in the window is reached; "
        f"retry in {decision.retry_after_seconds} seconds.",
        headers=rate_limit_headers(decision),
    )
