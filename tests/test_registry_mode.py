"""Registry mode at start-up: the ingress and the worker resolve every schema id before
they take traffic, so no request or agent waits on the schema registry.

Against the session's real registry, through the recording proxy of
``tests/fixtures/registry.py``, which shows which requests reached it.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from base.errors import TransientError
from base.settings import load_settings
from schemas.catalog import TOPICS
from streams.app import create_worker, resolve_schemas
from tests.fixtures.ingress import STRIPE_SECRET, ingress_settings, started_ingress
from tests.fixtures.registry import RegistryProxy
from tests.payloads.stripe import signed_stripe_request, stripe_event
from tests.test_codec import SAMPLES

WITH_SCHEMA = {f"{name}-value" for name, spec in TOPICS.items() if spec.subject is not None}


async def test_ingress_registers_every_schema_before_it_serves(
    catalog_topics: str, registry: RegistryProxy
) -> None:
    settings = ingress_settings(catalog_topics, {"SCHEMA_REGISTRY_URL": registry.url})
    async with started_ingress(settings) as ingress:
        assert set(registry.subjects()) == WITH_SCHEMA
        before = list(registry.requests)
        event = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:16]}")
        body, headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))
        async with ingress.http.post(
            f"{ingress.public}/v1/webhooks/stripe", data=body, headers=headers
        ) as response:
            assert response.status == 200
        assert registry.requests == before  # the request did not touch the registry


async def test_ingress_does_not_start_without_its_registry(catalog_topics: str) -> None:
    with RegistryProxy("http://127.0.0.1:1") as closed:
        url = closed.url  # nothing listens there once the proxy stopped
    settings = ingress_settings(catalog_topics, {"SCHEMA_REGISTRY_URL": url})
    with pytest.raises(TransientError, match="schema registry unreachable"):
        async with started_ingress(settings):
            pass


def test_worker_registers_every_schema_before_it_starts(
    tmp_path: Path, registry: RegistryProxy
) -> None:
    env = {
        "SLUICE_STATE_DIR": str(tmp_path),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing connects before faust starts
        "DATABASE_URL": "postgresql://127.0.0.1:1/none",
        "SCHEMA_REGISTRY_URL": registry.url,
    }
    ctx = create_worker(load_settings(env))
    resolve_schemas(ctx)
    assert set(registry.subjects()) == WITH_SCHEMA
    before = list(registry.requests)
    for topic, record in SAMPLES.items():
        value = ctx.codec.encode(topic, record)
        assert ctx.codec.decode(value, topic=topic).record == record
    assert registry.requests == before  # neither encoding nor decoding asked the registry
