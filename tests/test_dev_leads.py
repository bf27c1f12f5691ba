"""`sluice dev`'s leads kit: demo partners, the local CRM, the printed commands, and
`sluice leads send`, each against a local aiohttp server started here that records what
it was sent (the partner route itself is tested with the ingress)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from base.partners import PartnerRegistry, partners_from
from devstack.crm import running_crm
from schemas.leads import lead_id
from sluice.dev_leads import (
    DEMO_BEARER,
    DEMO_HMAC,
    DEMO_SW,
    demo_partners,
    lead_commands,
    read_partners_file,
    write_partners_file,
)


def _crm_url(partner_id: str) -> str:
    return f"http://127.0.0.1:8090/leads/{partner_id}"


def _registry(content: dict[str, Any]) -> PartnerRegistry:
    registry, problems = partners_from(content["partners"])
    assert problems == []
    return registry


# --- demo partners ---------------------------------------------------------------------------


def test_three_demo_partners_one_per_inbound_mode() -> None:
    registry = _registry(demo_partners(_crm_url, {}))

    modes = {p.id: (p.auth, p.delivery.auth) for p in registry}
    assert modes == {
        DEMO_HMAC: ("hmac", "none"),
        DEMO_BEARER: ("bearer", "bearer"),
        DEMO_SW: ("standard-webhooks", "standard-webhooks"),
    }
    for partner in registry:
        assert partner.delivery.url == _crm_url(partner.id)
        assert partner.delivery.enabled
    sw = registry.get(DEMO_SW)
    assert sw is not None
    assert sw.secrets[0].startswith("whsec_")
    assert sw.delivery.secret not in (None, sw.secrets[0])


def test_demo_secrets_survive_a_restart_and_the_crm_url_is_renewed(tmp_path: Path) -> None:
    path = tmp_path / "partners.json"
    first = demo_partners(_crm_url, {})
    write_partners_file(path, first)
    assert path.stat().st_mode & 0o777 == 0o600

    again = demo_partners(lambda p: f"http://127.0.0.1:9999/leads/{p}", read_partners_file(path))

    for partner_id, entry in first["partners"].items():
        assert again["partners"][partner_id]["secrets"] == entry["secrets"]
        assert again["partners"][partner_id]["delivery"]["url"].startswith("http://127.0.0.1:9999/")
    for partner_id, name in ((DEMO_BEARER, "token"), (DEMO_SW, "secret")):
        kept = again["partners"][partner_id]["delivery"][name]
        assert kept == first["partners"][partner_id]["delivery"][name]
    assert (
        demo_partners(_crm_url, {})["partners"][DEMO_HMAC]["secrets"]
        != (first["partners"][DEMO_HMAC]["secrets"])
    )
    assert read_partners_file(tmp_path / "missing.json") == {}


# --- the local CRM ---------------------------------------------------------------------------


async def test_the_crm_stores_each_delivery_as_a_json_line(tmp_path: Path) -> None:
    async with running_crm(tmp_path / "crm") as crm, aiohttp.ClientSession() as http:
        lead = {"leadId": "l-1", "email": "ana@example.com"}
        headers = {
            "Idempotency-Key": "l-1",
            "Authorization": "Bearer crm_secret_token",
            "webhook-id": "msg_1",
            "webhook-timestamp": "1700000000",
            "webhook-signature": "v1,abc",
        }
        for _ in range(2):
            async with http.post(crm.url_for(DEMO_BEARER), json=lead, headers=headers) as answer:
                assert answer.status == 200
        async with http.post(crm.url_for(DEMO_HMAC), data=b"not json") as answer:
            assert answer.status == 200
        async with http.post(f"{crm.url}/leads/..%2Fescape", data=b"{}") as answer:
            assert answer.status == 404

    lines = [json.loads(line) for line in crm.file_for(DEMO_BEARER).read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["partnerId"] == DEMO_BEARER
    assert lines[0]["body"] == lead
    assert lines[0]["headers"] == {
        "Idempotency-Key": "l-1",
        "Authorization": "Bearer (present)",  # never the credential
        "Content-Type": "application/json",
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,abc",
    }
    assert "crm_secret_token" not in crm.file_for(DEMO_BEARER).read_text()
    [plain] = [json.loads(line) for line in crm.file_for(DEMO_HMAC).read_text().splitlines()]
    assert (plain["body"], plain["headers"]["Authorization"]) == ("not json", None)
    assert sorted(p.name for p in crm.directory.iterdir()) == [
        f"{DEMO_BEARER}.jsonl",
        f"{DEMO_HMAC}.jsonl",
    ]


# --- what a partner sends: the printed commands and `sluice leads send` ----------------------


@dataclass
class _Captured:
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@asynccontextmanager
async def _partner_route() -> AsyncIterator[tuple[str, _Captured]]:
    """Stands in for the ingress's partner route: records each request, answers 202."""
    captured = _Captured()

    async def receive(request: web.Request) -> web.Response:
        captured.requests.append((dict(request.headers), await request.read()))
        return web.json_response({"accepted": True}, status=202)

    app = web.Application()
    app.router.add_post("/v1/webhooks/partner/leads", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", captured
    finally:
        await runner.cleanup()


def _check_signed(partner_id: str, registry: PartnerRegistry, request: Any) -> dict[str, Any]:
    """Verify the request as the route would for the partner's mode; its decoded body."""
    headers, body = request
    partner = registry.get(partner_id)
    assert partner is not None
    if partner.auth == "hmac":
        expected = hmac.new(partner.secrets[0].encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Partner-Signature"], expected)
    elif partner.auth == "bearer":
        assert headers["Authorization"] == f"Bearer {partner.secrets[0]}"
    else:
        Webhook(partner.secrets[0]).verify(body, headers)  # raises unless valid and fresh
    decoded: dict[str, Any] = json.loads(body)
    assert decoded["partnerId"] == partner_id
    assert decoded["payload"]["email"]
    return decoded


@pytest.mark.skipif(not Path("/usr/bin/openssl").exists(), reason="needs openssl")
async def test_the_printed_commands_send_signed_leads(tmp_path: Path) -> None:
    content = demo_partners(_crm_url, {})
    partners_file = tmp_path / "partners.json"
    write_partners_file(partners_file, content)
    env_file = tmp_path / "dev.env"
    env_file.write_text(f"SLUICE_PARTNERS_FILE={partners_file}\n")
    registry = _registry(content)

    async with _partner_route() as (url, captured):
        commands = lead_commands(url, env_file, content["partners"])
        # The last one runs `sluice leads send` from the repository root, as printed; it
        # finds the route by INGRESS_PUBLIC_PORT.
        root = Path(__file__).resolve().parent.parent
        for command in commands:
            process = await asyncio.create_subprocess_exec(
                "bash",
                "-euo",
                "pipefail",
                "-c",
                command.replace(".venv/bin/sluice", f"{sys.executable} -m sluice"),
                cwd=root,
                env={**os.environ, "INGRESS_PUBLIC_PORT": url.rsplit(":", 1)[1]},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await process.communicate()
            assert process.returncode == 0, (command, out, err)
            assert b'"accepted"' in out

    assert len(captured.requests) == 3
    sent = [
        _check_signed(partner_id, registry, request)
        for partner_id, request in zip(
            (DEMO_HMAC, DEMO_BEARER, DEMO_SW), captured.requests, strict=True
        )
    ]
    assert len({lead["externalLeadId"] for lead in sent}) == 3


async def test_sluice_leads_send_signs_per_mode_and_reports_the_lead_id(tmp_path: Path) -> None:
    content = demo_partners(_crm_url, {})
    partners_file = tmp_path / "partners.json"
    write_partners_file(partners_file, content)
    registry = _registry(content)
    body_file = tmp_path / "lead.json"
    body_file.write_text(
        json.dumps({"partnerId": DEMO_HMAC, "externalLeadId": "x-1", "payload": {"email": "a@b.c"}})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARTNER_", "SLUICE_PARTNERS"))}
    env["SLUICE_PARTNERS_FILE"] = str(partners_file)

    async def send(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sluice",
            "leads",
            "send",
            *args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async with _partner_route() as (url, captured):
        route = f"{url}/v1/webhooks/partner/leads"
        for partner_id in (DEMO_HMAC, DEMO_BEARER, DEMO_SW):
            code, out, _ = await send("--partner", partner_id, "--url", route)
            assert code == 0
            assert json.loads(out) == {"accepted": True}
        code, _, err = await send("--partner", DEMO_HMAC, "--body", str(body_file), "--url", route)
        assert code == 0
        assert lead_id(DEMO_HMAC, "x-1") in err
        code, _, err = await send("--partner", "nobody", "--url", route)
        assert code == 2
        assert "nobody" in err

    assert len(captured.requests) == 4
    for partner_id, request in zip(
        (DEMO_HMAC, DEMO_BEARER, DEMO_SW, DEMO_HMAC), captured.requests, strict=True
    ):
        _check_signed(partner_id, registry, request)
    assert captured.requests[3][1] == body_file.read_bytes()  # the file, byte for byte
