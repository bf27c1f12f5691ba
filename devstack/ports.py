"""Choosing TCP ports for the embedded services.

Every embedded service listens on loopback only, so "free" always means "free on
127.0.0.1". Checking and then binding is inherently racy (another process may grab the
port in between); callers keep the window small by checking right before they spawn.
"""

from __future__ import annotations

import socket

__all__ = ["LOOPBACK", "free_port", "is_port_free"]

LOOPBACK = "127.0.0.1"


def is_port_free(port: int, host: str = LOOPBACK) -> bool:
    """Return whether a server could listen on ``host:port`` right now.

    Binds with ``SO_REUSEADDR`` because Kafka, PostgreSQL and Redis all do: a port
    whose only users are ``TIME_WAIT`` leftovers of a server we just stopped counts as
    free, exactly as it will for the server we start next. Never blocks.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None, host: str = LOOPBACK) -> int:
    """Return ``preferred`` if it is free on ``host``, else a free ephemeral port.

    ``None`` or ``0`` asks for an ephemeral port straight away (what the tests use, so
    they never collide with a dev stack on the well-known ports). Never blocks, never
    raises for a taken port.
    """
    if preferred and is_port_free(preferred, host):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
