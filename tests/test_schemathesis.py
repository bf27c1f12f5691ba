"""schemathesis against a running ingress: every operation of both listeners, generated
inputs (valid and invalid), no 5xx and every answer as the document says (status,
content type, headers, body schema).

The ingress has everything its routes need (Kafka, a migrated Postgres, Elasticsearch,
a config topic of its own), so a 503 would be a real failure, not a missing setting;
the internal operations are called with an admin token (every scope). The run is bounded
and repeatable: a fixed number of examples per operation, deterministic generation (no
example database). schemathesis runs as its own process (its client blocks) while the
ingress serves on this test's event loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from connectors.kafka_admin import create_topics
from connectors.runtime_config import config_topic_spec
from devstack import ElasticsearchServer
from tests.fixtures.ingress import IngressUnderTest, ingress_settings, started_ingress

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "tok_schemathesis_admin"
EXAMPLES_PER_OPERATION = 12
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest_asyncio.fixture(scope="module")
async def described_ingress(
    catalog_topics: str, migrated_db: str, elasticsearch_server: ElasticsearchServer
) -> AsyncIterator[IngressUnderTest]:
    run = uuid.uuid4().hex[:8]
    config_topic = f"config.runtime.schemathesis{run}"
    create_topics(catalog_topics, [config_topic_spec(config_topic)])
    settings = ingress_settings(
        catalog_topics,
        {
            "DATABASE_URL": migrated_db,
            "ELASTICSEARCH_URL": elasticsearch_server.url,
            "SLUICE_SEARCH_INDEX_PREFIX": f"st{run}-",
            "SLUICE_CONFIG_TOPIC": config_topic,
            "ADMIN_API_TOKEN": ADMIN_TOKEN,
            # No worker runs: the request/reply routes answer 202 after this.
            "SLUICE_REPLY_TIMEOUT": "0.2s",
        },
    )
    async with started_ingress(settings) as running:
        yield running


async def _schemathesis(document: str, base_url: str, report: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        document,
        "--url",
        base_url,
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--generation-deterministic",
        "--workers",
        "1",
        "--header",
        f"X-Internal-Token: {ADMIN_TOKEN}",
        "--request-timeout",
        "10",
        "--suppress-health-check",
        "all",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        # Its caches (.schemathesis/) go there, not into the work tree.
        cwd=report.parent,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("listener", ["internal", "public"])
async def test_schemathesis_finds_nothing(
    described_ingress: IngressUnderTest, listener: str, tmp_path: Path
) -> None:
    path = "/openapi.json" if listener == "internal" else "/openapi/public.json"
    base = described_ingress.internal if listener == "internal" else described_ingress.public
    code, output = await _schemathesis(
        f"{described_ingress.internal}{path}", base, tmp_path / "junit.xml"
    )
    assert code == 0, output[-20000:]
