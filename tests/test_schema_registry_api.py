"""The internal listener's Confluent Schema Registry read API, used by Confluent's own
client: ``AvroDeserializer`` with a ``SchemaRegistryClient`` pointed at the ingress
decodes a record of every topic Sluice writes (encoded by our codec, catalog mode)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas.catalog import TOPICS, default_catalog
from schemas.codec import make_codec
from tests.fixtures.ingress import IngressUnderTest
from tests.test_codec import samples

pytestmark = pytest.mark.integration

CODEC = make_codec(None)
WRITTEN = sorted(name for name, spec in TOPICS.items() if spec.subject is not None)


def _plain(value: Any) -> Any:
    """What the deserializer gives, as our codec decodes it (timestamps as ms)."""
    if isinstance(value, dt.datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def test_the_samples_cover_every_topic_with_a_schema() -> None:
    assert sorted(samples()) == WRITTEN


async def test_confluent_deserializer_decodes_every_topic(ingress: IngressUnderTest) -> None:
    records = samples()

    def decode_all() -> dict[str, Any]:
        client = SchemaRegistryClient({"url": ingress.internal})
        deserializer = AvroDeserializer(client)
        decoded = {}
        for topic in WRITTEN:
            value = CODEC.encode(topic, records[topic])
            decoded[topic] = deserializer(value, SerializationContext(topic, MessageField.VALUE))
        return decoded

    # The client blocks; the ingress under test serves on this test's event loop.
    decoded = await asyncio.to_thread(decode_all)
    for topic in WRITTEN:
        expected = CODEC.decode(CODEC.encode(topic, records[topic])).record
        assert _plain(decoded[topic]) == expected, topic


async def _get(ingress: IngressUnderTest, path: str) -> tuple[int, Any, str]:
    async with ingress.http.get(f"{ingress.internal}{path}") as response:
        return response.status, await response.json(content_type=None), response.content_type


async def test_subjects_are_topic_value_names(ingress: IngressUnderTest) -> None:
    status, body, content_type = await _get(ingress, "/subjects")
    assert status == 200
    assert content_type == "application/vnd.schemaregistry.v1+json"
    assert body == [f"{topic}-value" for topic in WRITTEN]
    status, body, _ = await _get(ingress, "/subjects?subjectPrefix=billing.")
    assert body == [f"{topic}-value" for topic in WRITTEN if topic.startswith("billing.")]


async def test_versions_and_latest(ingress: IngressUnderTest) -> None:
    catalog = default_catalog()
    status, body, _ = await _get(ingress, "/subjects/config.runtime-value/versions")
    assert (status, body) == (200, [1, 2])
    for version in ("latest", "-1", "2"):
        status, body, _ = await _get(ingress, f"/subjects/config.runtime-value/versions/{version}")
        assert status == 200
        assert body["subject"] == "config.runtime-value"
        assert body["version"] == 2
        assert body["id"] == catalog.schema_id("sluice.config.RuntimeConfigEntry", 2)
        assert json.loads(body["schema"]) == catalog.schema("sluice.config.RuntimeConfigEntry", 2)
    status, body, _ = await _get(ingress, f"/schemas/ids/{body['id']}")
    assert status == 200
    assert json.loads(body["schema"]) == catalog.schema("sluice.config.RuntimeConfigEntry", 2)


async def test_confluent_error_bodies(ingress: IngressUnderTest) -> None:
    cases = [
        ("/subjects/nope-value/versions", 404, 40401),
        ("/subjects/nope-value/versions/1", 404, 40401),
        ("/subjects/orders-value/versions/9", 404, 40402),
        ("/subjects/orders-value/versions/one", 422, 42202),
        ("/subjects/orders-value/versions/0", 422, 42202),
        ("/schemas/ids/1", 404, 40403),
        ("/schemas/ids/abc", 404, 40403),
    ]
    for path, status, code in cases:
        got_status, body, _ = await _get(ingress, path)
        assert (got_status, body["error_code"]) == (status, code), path
        assert isinstance(body["message"], str)
