"""API keys, tenants and per-key request rates.

With ``INFOSCORE_AUTH=required`` every ``/v1`` request carries ``Authorization: Bearer
<key>``; the key maps to a tenant, and a tenant sees only its own datasets and jobs
(another tenant's ids answer 404). With auth ``off`` (the embedded default, loopback
only) everything belongs to the tenant ``default``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from store.db import DEFAULT_TENANT, JobStore

from .errors import ProblemError

KEY_CACHE_SECONDS = 5.0  # a revoked key stops working within this time


@dataclass
class Caller:
    tenant: str
    key_id: str | None


class KeyResolver:
    """Resolves bearer keys with a short cache (one DB read per key per few seconds)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, tuple[str, str] | None]] = {}
        self._lock = threading.Lock()

    def resolve(self, key: str) -> tuple[str, str] | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < KEY_CACHE_SECONDS:
                return hit[1]
        value = self.store.resolve_key(key)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now, value)
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

    def check(self, key: str) -> None:
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
                    f"Request rate over the limit of {self.rate:g} per second per API key "
                    f"(bursts of {self.burst}; INFOSCORE_RATE_LIMIT). Retry after {wait} s.",
                    type_="rate-limited",
                    headers={"Retry-After": str(wait)},
                    limit=self.rate,
                )
            self._buckets[key] = (tokens - 1.0, now)


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
