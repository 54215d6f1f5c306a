"""API keys, tenants and per-key request rates.

With ``INFOSCORE_AUTH=required`` every ``/v1`` request carries ``Authorization: Bearer
<key>``; the key maps to a tenant, and a tenant sees only its own datasets and jobs
(another tenant's ids answer 404). With auth ``off`` (the embedded default, loopback
only) everything belongs to the tenant ``default``.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from store.db import DEFAULT_TENANT, JobStore

from .errors import ProblemError

KEY_CACHE_SECONDS = 5.0  # a revoked key stops working within this time


@dataclass
class Caller:
    tenant: str
    key_id: str | None


MAX_KEY_LENGTH = 512  # keys we issue are ~60 characters; anything far longer is not one
VALID_CACHE_SIZE = 10_000
INVALID_CACHE_SIZE = 1_000


class KeyResolver:
    """Resolves bearer keys with a short cache (one DB read per key per few seconds).

    Entries are keyed by the token's SHA-256 (memory per entry is fixed, whatever the
    token's length), valid and invalid tokens in separate LRUs, so a flood of made-up
    tokens can neither grow memory nor evict the keys of real callers."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._valid: OrderedDict[bytes, tuple[float, tuple[str, str]]] = OrderedDict()
        self._invalid: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, key: str) -> tuple[str, str] | None:
        if len(key) > MAX_KEY_LENGTH:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._valid.get(digest)
            if hit is not None and now - hit[0] < KEY_CACHE_SECONDS:
                self._valid.move_to_end(digest)
                return hit[1]
            miss = self._invalid.get(digest)
            if miss is not None and now - miss < KEY_CACHE_SECONDS:
                return None
        value = self.store.resolve_key(key)
        with self._lock:
            cache: OrderedDict[bytes, Any] = self._valid if value is not None else self._invalid
            cache[digest] = (now, value) if value is not None else now
            cache.move_to_end(digest)
            while len(cache) > (VALID_CACHE_SIZE if value is not None else INVALID_CACHE_SIZE):
                cache.popitem(last=False)
            if value is not None:
                self._invalid.pop(digest, None)
            else:
                self._valid.pop(digest, None)
        return value


def authenticate(authorization: str | None, *, auth: str, resolver: KeyResolver) -> Caller:
    if auth != "required":
        return Caller(DEFAULT_TENANT, None)
    challenge = {"WWW-Authenticate": 'Bearer realm="infoscore"'}
    if not authorization:
        raise ProblemError(
            401,
            "This server requires an API key: send 'Authorization: Bearer <key>' "
            "(keys are made with `infoscore keys create --tenant NAME`).",
            type_="missing-api-key",
            headers=challenge,
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401,
            "The Authorization header must be 'Bearer <key>'.",
            type_="bad-authorization",
            headers=challenge,
        )
    found = resolver.resolve(token.strip())
    if found is None:
        raise ProblemError(
            401, "The API key is not valid (unknown or revoked).", type_="invalid-api-key", headers=challenge
        )
    key_id, tenant = found
    return Caller(tenant, key_id)


class RateLimiter:
    """Token bucket per key: ``rate`` requests per second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str, *, what: str = "per API key", setting: str = "INFOSCORE_RATE_LIMIT") -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                wait = math.ceil((1.0 - tokens) / self.rate)
                self._buckets[key] = (tokens, now)
                raise ProblemError(
                    429,
                    f"Request rate over the limit of {self.rate:g} per second {what} "
                    f"(bursts of {self.burst}; {setting}). Retry after {wait} s.",
                    type_="rate-limited",
                    headers={"Retry-After": str(wait)},
                    limit=self.rate,
                )
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # forget the idlest buckets, never grow unbounded
                for stale in sorted(self._buckets, key=lambda k: self._buckets[k][1])[:50_000]:
                    del self._buckets[stale]


# The browser pages (/ui) keep the API key in this cookie, set by the login form:
# HttpOnly (no script reads it) and SameSite=Strict (no other site's page sends it).
KEY_COOKIE = "infoscore_key"


def authenticate_page(
    authorization: str | None, cookie_key: str | None, *, auth: str, resolver: KeyResolver
) -> Caller:
    """The pages honour ``Authorization`` as the API does, else the login cookie."""
    if not authorization and cookie_key:
        authorization = f"Bearer {cookie_key}"
    return authenticate(authorization, auth=auth, resolver=resolver)
