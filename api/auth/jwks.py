"""Signing keys from a JWKS endpoint: cached, refreshed on an unknown `kid`, never hammered.

Lookups of known keys take no lock. A refresh happens when the cached set is older than
`max_age_seconds` or a token names an unknown key, but at most once per
`min_refresh_interval_seconds` whatever the outcome, so a flood of tokens with made-up key ids (or
an unreachable JWKS host) costs the host one request per interval. A failed refresh keeps the keys
already known; with none known at all the source reports the host as unavailable (a 503).

pyjwt's `PyJWKClient` was not used: its cooldown starts only after a successful fetch, so while the
host is down every request would fetch again, holding a process-wide lock for the whole timeout.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jwt

from api.auth.tokens import AuthenticationError, UnknownKeyError
from pipelines.errors import RetryableError

logger = logging.getLogger(__name__)

# A JWKS document is a few keys of a few hundred bytes; 1 MiB leaves room for big RSA sets while
# keeping a hostile or broken endpoint from filling memory.
MAX_JWKS_BYTES = 1024 * 1024
# Seconds to wait for the JWKS host; requests needing a refresh wait this long at worst.
FETCH_TIMEOUT_SECONDS = 5.0
# Seconds a fetched key set is trusted before it is fetched again (keys rotate in hours or days).
MAX_AGE_SECONDS = 300.0
# Seconds between two fetches at least, so unknown `kid`s cannot drive traffic to the host.
MIN_REFRESH_INTERVAL_SECONDS = 30.0

JwksFetcher = Callable[[str], Mapping[str, Any]]


class KeySetUnavailableError(RetryableError):
    """The JWKS endpoint cannot be reached or answered nonsense, and no keys are cached."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch_jwks(url: str) -> Mapping[str, Any]:
    """Fetch and parse a JWKS document over HTTP(S), refusing redirects and oversized bodies."""
    if not url.startswith(("http://", "https://")):
        raise KeySetUnavailableError(f"JWKS URL must be http(s): {url!r}")
    opener = urllib.request.build_opener(_NoRedirects())
    # The scheme is checked above: only http(s), never file: or custom schemes.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with opener.open(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            body = response.read(MAX_JWKS_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise KeySetUnavailableError(f"cannot fetch JWKS from {url}: {exc}") from exc
    if len(body) > MAX_JWKS_BYTES:
        raise KeySetUnavailableError(f"JWKS from {url} is larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise KeySetUnavailableError(f"JWKS from {url} is not JSON") from exc
    if not isinstance(document, dict):
        raise KeySetUnavailableError(f"JWKS from {url} is not a JSON object")
    return document


def signing_keys(document: Mapping[str, Any], *, algorithms: Iterable[str]) -> dict[str, jwt.PyJWK]:
    """Return the usable signing keys of a JWKS document by `kid`, skipping the rest."""
    allowed = set(algorithms)
    keys: dict[str, jwt.PyJWK] = {}
    entries = document.get("keys")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            key = jwt.PyJWK.from_dict(entry)
        except (jwt.PyJWTError, ValueError, KeyError, TypeError):
            logger.warning("JWKS key %s is unusable; skipped", kid)
            continue
        if key.algorithm_name in allowed:
            keys[kid] = key
    return keys


class JwksKeySource:
    """Keys by `kid` from a JWKS URL, cached and refreshed at a bounded rate."""

    def __init__(
        self,
        url: str,
        *,
        algorithms: Iterable[str],
        fetch: JwksFetcher = fetch_jwks,
        clock: Callable[[], float] = time.monotonic,
        max_age_seconds: float = MAX_AGE_SECONDS,
        min_refresh_interval_seconds: float = MIN_REFRESH_INTERVAL_SECONDS,
    ) -> None:
        self._url = url
        self._algorithms = tuple(algorithms)
        self._fetch = fetch
        self._clock = clock
        self._max_age_seconds = max_age_seconds
        self._min_refresh_interval_seconds = min_refresh_interval_seconds
        self._lock = threading.Lock()
        # Replaced as a whole, never mutated, so readers need no lock.
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded = False
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._generation = 0

    def key_for(self, header: Mapping[str, Any]) -> jwt.PyJWK:
        """Return the key named by the header's `kid`, refreshing the set when it is unknown."""
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("The token does not name its signing key.")
        generation = self._generation
        keys = self._keys
        fetched_at = self._fetched_at
        if fetched_at is None or self._clock() - fetched_at >= self._max_age_seconds:
            # Stale keys still verify while one thread refreshes; only a first load waits.
            keys = self._refresh(generation, wait=fetched_at is None)
            generation = self._generation
        key = keys.get(kid)
        if key is None:
            key = self._refresh(generation, wait=True).get(kid)
        if key is None:
            raise UnknownKeyError()
        return key

    def _refresh(self, seen_generation: int, *, wait: bool) -> dict[str, jwt.PyJWK]:
        """Fetch the key set unless another thread just did or the interval has not passed."""
        if not self._lock.acquire(blocking=wait):
            return self._keys
        try:
            now = self._clock()
            throttled = (
                self._attempted_at is not None
                and now - self._attempted_at < self._min_refresh_interval_seconds
            )
            if self._generation == seen_generation and not throttled:
                self._attempted_at = now
                self._fetch_keys(now)
            if not self._loaded:
                raise KeySetUnavailableError("no JWKS keys could be loaded yet")
            return self._keys
        finally:
            self._lock.release()

    def _fetch_keys(self, now: float) -> None:
        """Replace the key set with a fresh one, keeping the old one if the fetch fails."""
        try:
            keys = signing_keys(self._fetch(self._url), algorithms=self._algorithms)
        except KeySetUnavailableError as exc:
            logger.warning("JWKS refresh failed, keeping %d known keys: %s", len(self._keys), exc)
            return
        self._keys, self._loaded, self._fetched_at = keys, True, now
        self._generation += 1
        logger.info("JWKS refreshed: %d signing keys", len(keys))
