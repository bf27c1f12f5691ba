"""The whole embedded stack behind ``sluice dev``: Kafka, PostgreSQL and Redis, and
Elasticsearch when asked for.

A service whose setting is already present in the environment is used as-is and not
started, so a developer can point ``sluice dev`` at a shared Postgres and still get an
embedded broker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from devstack.elasticsearch import ElasticsearchServer
from devstack.kafka import KafkaBroker
from devstack.postgres import PostgresServer
from devstack.process import EmbeddedService
from devstack.redis import RedisServer
from devstack.stripe import LocalStripeServer

__all__ = [
    "DEFAULT_SERVICES",
    "ELASTICSEARCH_SERVICE",
    "STRIPE_SERVICE",
    "EmbeddedStack",
    "ServiceSpec",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """How the stack provides one setting when the environment does not.

    ``build`` receives the service's own data directory (``<stack dir>/<subdir>``) and
    ``preferred_port``; it must not start anything.
    """

    env_var: str
    subdir: str
    preferred_port: int
    build: Callable[[Path, int], EmbeddedService]


#: Started in this order, stopped in reverse. This is the extension point for more
#: services: callers append optional specs such as ``ELASTICSEARCH_SERVICE``.
DEFAULT_SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("KAFKA_BOOTSTRAP_SERVERS", "kafka", 9092, KafkaBroker),
    ServiceSpec("DATABASE_URL", "postgres", 5432, PostgresServer),
    ServiceSpec("REDIS_URL", "redis", 6379, RedisServer),
)

#: Not in ``DEFAULT_SERVICES``: heavy (a 512 MiB JVM, about 7 s to start) and optional,
#: so ``sluice dev`` adds it only when asked for (``--with-search``).
ELASTICSEARCH_SERVICE = ServiceSpec("ELASTICSEARCH_URL", "elasticsearch", 9200, ElasticsearchServer)

#: A local Stripe-compatible API (localstripe, a dev dependency) for ``STRIPE_API_BASE``;
#: ``sluice dev`` adds it unless a Stripe key or base is set (then Stripe itself, or the
#: given server, is used).
STRIPE_SERVICE = ServiceSpec("STRIPE_API_BASE", "stripe", 8420, LocalStripeServer)


class EmbeddedStack:
    """Starts, for each spec, either nothing (setting present in ``env``) or a service.

    Synchronous and not thread-safe; usable as a context manager. Data and logs of
    every service live under ``data_dir/<subdir>``, so a second ``sluice dev`` on the
    same directory finds its topics and tables again.
    """

    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str] = os.environ,
        *,
        services: Sequence[ServiceSpec] = DEFAULT_SERVICES,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._env = env
        self._specs = tuple(services)
        self._started: list[tuple[ServiceSpec, EmbeddedService]] = []

    @property
    def started(self) -> dict[str, EmbeddedService]:
        """The services this stack started and still owns, by setting name."""
        return {spec.env_var: service for spec, service in self._started}

    def start(self) -> dict[str, str]:
        """Start every service whose setting is missing or empty in ``env``.

        Returns the effective value of every setting (from ``env`` or from the service
        started for it). Blocks until each started service is ready. If one fails to
        start, those already started are stopped and the ``ServiceStartError`` (or
        ``EmbeddedServiceError``) propagates. Calling it again returns the same values.
        """
        settings: dict[str, str] = {}
        owned = self.started
        try:
            for spec in self._specs:
                given = self._env.get(spec.env_var, "")
                if given:
                    settings[spec.env_var] = given
                    continue
                service = owned.get(spec.env_var)
                if service is None:
                    service = self._launch(spec)
                else:
                    service.start()  # a no-op while running; revives one that was stopped
                settings[spec.env_var] = service.endpoint
        except BaseException:
            try:
                self.stop()
            except Exception:  # the start failure is the error worth reporting
                _log.exception("cleaning up after a failed start also failed")
            raise
        return settings

    def _launch(self, spec: ServiceSpec) -> EmbeddedService:
        service = spec.build(self.data_dir / spec.subdir, spec.preferred_port)
        service.start()
        self._started.append((spec, service))
        _log.info("%s: started %s at %s", spec.env_var, service.name, service.endpoint)
        return service

    def stop(self) -> None:
        """Stop the services this stack started, in reverse order; blocks. Idempotent.

        Every service gets its stop even if an earlier one raised; the first error is
        re-raised at the end.
        """
        first_error: BaseException | None = None
        while self._started:
            _spec, service = self._started.pop()
            try:
                service.stop()
            except Exception as exc:  # keep stopping the rest
                _log.exception("stopping %s failed", service.name)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
