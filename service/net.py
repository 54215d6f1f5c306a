"""Small network checks the gateway needs (and the launcher reuses): is a bind address
loopback, and does a Redis-compatible broker answer PING."""

from __future__ import annotations

import ipaddress
import socket

LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ping_redis(host: str, port: int, password: str | None = None, *, timeout: float = 1.0) -> None:
    """One Redis PING on a fresh socket (after AUTH with ``password``): returns when the
    server answers PONG, raises OSError or ConnectionError otherwise."""
    hello = b"PING\r\n" if password is None else f"AUTH {password}\r\nPING\r\n".encode()
    expected = b"+PONG" if password is None else b"+OK\r\n+PONG"
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(hello)
        answer = b""
        while len(answer) < len(expected):
            chunk = s.recv(64)
            if not chunk:
                break
            answer += chunk
    if not answer.startswith(expected):
        raise ConnectionError(f"unexpected answer from the broker: {answer[:40]!r}")
