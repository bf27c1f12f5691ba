"""Kafka admin: apply the topic catalog to a cluster (idempotently) and list topics."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from base.errors import TransientError
from schemas.catalog import TopicSpec

__all__ = ["TopicState", "create_changelog_topics", "create_topics", "list_topics"]

# librdkafka's own lines go through Python logging (one format per process), not stderr.
_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int


def create_topics(
    bootstrap_servers: str,
    specs: Iterable[TopicSpec],
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create every topic in ``specs`` that does not exist yet; returns the ones created.

    Idempotent: an existing topic is left as it is (its partitions are not changed,
    since that would move keys between partitions and break per-entity order).

    :raises TransientError: when the cluster cannot be reached or refuses a topic.
    """
    wanted = [_new_topic(spec, replication_factor) for spec in specs]
    return _create(bootstrap_servers, wanted, timeout_s)


def _create(bootstrap_servers: str, wanted: list[NewTopic], timeout_s: float) -> list[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers}, logger=_LIBRDKAFKA_LOG)
    if not wanted:
        return []
    futures = admin.create_topics(wanted, operation_timeout=timeout_s, request_timeout=timeout_s)
    created: list[str] = []
    try:
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                created.append(name)
            except TimeoutError:
                raise TransientError(
                    f"could not create topic {name}: no answer from Kafka in {timeout_s:g} s"
                ) from None
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TransientError(f"could not create topic {name}: {error.str()}") from None
    finally:
        # librdkafka's queued log lines reach ``logger`` only when the client is polled.
        admin.poll(0)
    return sorted(created)


def create_changelog_topics(
    bootstrap_servers: str,
    partitions: Mapping[str, int],
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create faust table changelog topics (compacted; name -> partitions) if missing.

    Their names are faust's (``<app id>-<table>-changelog``), outside the catalog's naming
    rule, so they are not :class:`TopicSpec`. Idempotent, as :func:`create_topics`.
    """
    return _create(
        bootstrap_servers,
        [
            NewTopic(
                name,
                num_partitions=count,
                replication_factor=replication_factor,
                config={"cleanup.policy": "compact"},
            )
            for name, count in sorted(partitions.items())
        ],
        timeout_s,
    )


def list_topics(bootstrap_servers: str, *, timeout_s: float = 10.0) -> list[TopicState]:
    """Every non-internal topic on the cluster with its partition count."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers}, logger=_LIBRDKAFKA_LOG)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise TransientError(f"cannot reach Kafka: {exc.args[0]}") from None
    finally:
        admin.poll(0)  # its queued log lines (see _create)
    return sorted(
        (
            TopicState(name=name, partitions=len(topic.partitions))
            for name, topic in metadata.topics.items()
            if not name.startswith("__")
        ),
        key=lambda state: state.name,
    )


def _new_topic(spec: TopicSpec, replication_factor: int) -> NewTopic:
    config: dict[str, str] = {}
    if spec.retention_ms is not None:
        config["retention.ms"] = str(spec.retention_ms)
    if spec.compacted:
        config["cleanup.policy"] = "compact"
    return NewTopic(
        spec.name,
        num_partitions=spec.partitions,
        replication_factor=replication_factor,
        config=config,
    )
