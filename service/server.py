"""How the API is served: uvicorn with the h11 protocol plus a request-header deadline.

uvicorn closes an idle keep-alive connection, but a client that opens a connection and
sends its request line and headers slowly (or half of them, then nothing) holds it for as
long as it likes: the app is only called once the headers are complete, so nothing in the
app can time it out. :class:`HeaderDeadlineProtocol` closes a connection whose request
headers are not complete within ``INFOSCORE_HEADER_TIMEOUT`` seconds (default 10) of the
connection opening or of the first byte of a next request.
"""

from __future__ import annotations

import asyncio
import os

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT = 10.0


def header_timeout() -> float:
    raw = os.environ.get("INFOSCORE_HEADER_TIMEOUT", str(DEFAULT_HEADER_TIMEOUT))
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(
            f"INFOSCORE_HEADER_TIMEOUT must be a number of seconds. Got {raw!r} instead."
        ) from None
    if value <= 0:
        raise SystemExit(f"INFOSCORE_HEADER_TIMEOUT must be > 0. Got {raw!r} instead.")
    return value


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers dawdle."""

    deadline_seconds = DEFAULT_HEADER_TIMEOUT
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for a complete request head
            if self._header_timer is None:
                self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.deadline_seconds, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol_class() -> type[HeaderDeadlineProtocol]:
    """The protocol class with the configured deadline (uvicorn instantiates it)."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"deadline_seconds": header_timeout()})
