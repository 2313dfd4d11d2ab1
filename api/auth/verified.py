"""Tokens this process has verified already, so a client's next request skips the JWT work.

An entry is keyed by the raw token string and holds what verifying it proved: the principal, the
token's (signed) header and the key that checked the signature. It is used only while

- the token has not expired: entries end at `exp`, never later (verification itself accepts a
  token until `exp` plus the leeway, so a cached answer is never more lenient), and
- the key source still returns that very key object for the header. A static secret or PEM key
  always does; a JWKS source returns new key objects after every refresh, so a refreshed key set
  sends each token through full verification again, and a key removed from the set fails
  exactly as it would without the cache, no later than the JWKS cache interval allows.

Algorithm, audience and issuer settings belong to the verifier that owns the cache and never
change, so a token that passed them once passes them again. Failed verifications are never
remembered. The map holds at most `max_entries`; when full, the oldest entry goes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.auth.tokens import Principal

# Distinct tokens one API process remembers: several thousand clients active within their
# tokens' lifetimes, at roughly 1 KB each (token, header, principal) about 10 MB at most.
DEFAULT_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class VerifiedToken:
    """What verifying one token proved, and until when (its `exp`, epoch seconds)."""

    principal: Principal
    header: Mapping[str, Any]
    key: Any
    expires_at: float


class VerifiedTokens:
    """A bounded map from raw token strings to their verification, dropping expired entries."""

    def __init__(self, max_entries: int, *, clock: Callable[[], float]) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be zero or more, not {max_entries}")
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, VerifiedToken] = {}
        # Writers only: a dict lookup is atomic, so readers take no lock.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> VerifiedToken | None:
        """Return the token's unexpired verification, or None."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        if self._clock() >= entry.expires_at:
            self.forget(token)
            return None
        return entry

    def put(self, token: str, entry: VerifiedToken) -> None:
        """Remember a verification, making room by dropping the oldest entry when full."""
        if self._max_entries == 0 or self._clock() >= entry.expires_at:
            return
        with self._lock:
            if token not in self._entries and len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[token] = entry

    def forget(self, token: str) -> None:
        """Drop a token's entry, if there is one."""
        with self._lock:
            self._entries.pop(token, None)
