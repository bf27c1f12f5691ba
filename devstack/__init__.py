"""The embedded stack: real Kafka, PostgreSQL, Redis (and, when asked for, Elasticsearch)
servers run as child processes.

Used by ``sluice dev`` and by the pytest session fixtures (``tests/fixtures/services.py``).
Every service is synchronous; async callers wrap calls in ``asyncio.to_thread``.

Names are imported lazily (PEP 562), so ``import devstack`` stays cheap and
``python -m devstack.fetch kafka`` imports only the Kafka launcher.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devstack.elasticsearch import (
        ELASTICSEARCH_VERSION,
        ElasticsearchServer,
        ensure_elasticsearch,
    )
    from devstack.kafka import KAFKA_VERSION, KafkaBroker, ensure_kafka_jars
    from devstack.ports import free_port, is_port_free
    from devstack.postgres import PostgresServer
    from devstack.process import (
        EmbeddedService,
        EmbeddedServiceError,
        ServiceStartError,
    )
    from devstack.redis import RedisServer
    from devstack.stack import (
        DEFAULT_SERVICES,
        ELASTICSEARCH_SERVICE,
        EmbeddedStack,
        ServiceSpec,
    )

__all__ = [
    "DEFAULT_SERVICES",
    "ELASTICSEARCH_SERVICE",
    "ELASTICSEARCH_VERSION",
    "KAFKA_VERSION",
    "ElasticsearchServer",
    "EmbeddedService",
    "EmbeddedServiceError",
    "EmbeddedStack",
    "KafkaBroker",
    "PostgresServer",
    "RedisServer",
    "ServiceSpec",
    "ServiceStartError",
    "ensure_elasticsearch",
    "ensure_kafka_jars",
    "free_port",
    "is_port_free",
]

_HOME = {
    "DEFAULT_SERVICES": "stack",
    "ELASTICSEARCH_SERVICE": "stack",
    "ELASTICSEARCH_VERSION": "elasticsearch",
    "KAFKA_VERSION": "kafka",
    "ElasticsearchServer": "elasticsearch",
    "EmbeddedService": "process",
    "EmbeddedServiceError": "process",
    "EmbeddedStack": "stack",
    "KafkaBroker": "kafka",
    "PostgresServer": "postgres",
    "RedisServer": "redis",
    "ServiceSpec": "stack",
    "ServiceStartError": "process",
    "ensure_elasticsearch": "elasticsearch",
    "ensure_kafka_jars": "kafka",
    "is_port_free": "ports",
    "free_port": "ports",
}


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
