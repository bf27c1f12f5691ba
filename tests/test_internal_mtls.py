"""mTLS on the internal listener of the real ingress, with real certificates made here.

``trustme`` makes two certificate authorities: ours (it signs the server's certificate
and the callers' client certificates, and is ``INGRESS_INTERNAL_TLS_CLIENT_CA``) and a
stranger's. A caller without a client certificate, or with one the stranger signed, is
refused during the TLS handshake (no HTTP byte comes back); one with our certificate is
served over HTTPS, and still needs its token.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import trustme

from base.errors import ConfigError
from base.settings import Settings, load_settings
from ingress.server import _internal_tls, running_ingress
from tests.fixtures.ingress import INTERNAL_TOKEN, IngressUnderTest, ingress_settings

CLIENT_NAME = "orders-service.internal"


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    stranger: trustme.CA
    client: trustme.LeafCert
    strangers_client: trustme.LeafCert
    env: dict[str, str]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, client_ca = where / "server.pem", where / "server.key", where / "clients-ca.pem"
    for number, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(cert), append=number > 0)
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(client_ca))
    return Pki(
        ca=ca,
        stranger=stranger,
        client=ca.issue_cert(CLIENT_NAME),
        strangers_client=stranger.issue_cert(CLIENT_NAME),
        env={
            "INGRESS_INTERNAL_TLS_CERT": str(cert),
            "INGRESS_INTERNAL_TLS_KEY": str(key),
            "INGRESS_INTERNAL_TLS_CLIENT_CA": str(client_ca),
        },
    )


def _client_context(pki: Pki, cert: trustme.LeafCert | None) -> ssl.SSLContext:
    """A caller's context: trusts our CA for the server, presents ``cert`` (if any)."""
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


@pytest_asyncio.fixture(scope="module")
async def mtls(catalog_topics: str, pki: Pki) -> AsyncIterator[IngressUnderTest]:
    settings = ingress_settings(catalog_topics, pki.env)
    async with (
        running_ingress(settings) as running,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        yield IngressUnderTest(running, http, catalog_topics, settings)


def _order_created() -> dict[str, Any]:
    return {
        "eventType": "order.created",
        "source": "mtls-test",
        "data": {
            "orderId": f"ord_{uuid.uuid4().hex[:12]}",
            "userId": "user_1",
            "amount": 500,
            "currency": "usd",
            "items": [{"productId": "sku_1", "quantity": 1}],
        },
    }


@dataclass(frozen=True)
class Exchange:
    """What a raw TLS caller saw: whether its handshake completed, then the first bytes
    of the answer (``b""``: the server closed the connection)."""

    handshake_done: bool
    answer: bytes
    error: ssl.SSLError | None = None


def _raw_exchange(url: str, context: ssl.SSLContext) -> Exchange:
    """Open TLS to ``url``'s port with ``context`` on a plain blocking socket, send a
    request and report what came back."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        try:
            tls = context.wrap_socket(plain, server_hostname="127.0.0.1")
        except ssl.SSLError as exc:
            return Exchange(handshake_done=False, answer=b"", error=exc)
        with tls:
            try:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                return Exchange(handshake_done=True, answer=tls.recv(64))
            except (ssl.SSLError, ConnectionError):
                return Exchange(handshake_done=True, answer=b"")


# --- the real listener -------------------------------------------------------------------


@pytest.mark.integration
async def test_the_right_client_certificate_is_served(mtls: IngressUnderTest, pki: Pki) -> None:
    assert mtls.internal.startswith("https://")
    context = _client_context(pki, pki.client)
    async with mtls.http.get(f"{mtls.internal}/healthz", ssl=context) as response:
        assert response.status == 200
    async with mtls.http.post(
        f"{mtls.internal}/internal/v1/events",
        json=_order_created(),
        headers={"X-Internal-Token": INTERNAL_TOKEN},
        ssl=context,
    ) as response:
        assert response.status == 202, await response.text()
    # The certificate is no token: without one, still 401.
    async with mtls.http.post(
        f"{mtls.internal}/internal/v1/events", json=_order_created(), ssl=context
    ) as response:
        assert response.status == 401
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        pinned = _client_context(pki, pki.client)
        pinned.minimum_version = pinned.maximum_version = version
        served = await asyncio.to_thread(_raw_exchange, mtls.internal, pinned)
        assert served.answer.startswith(b"HTTP/1.1 200"), (version, served)


@pytest.mark.integration
@pytest.mark.parametrize("who", ["no-certificate", "another-ca"])
async def test_other_callers_are_refused_at_tls(mtls: IngressUnderTest, pki: Pki, who: str) -> None:
    cert = None if who == "no-certificate" else pki.strangers_client
    context = _client_context(pki, cert)

    with pytest.raises(aiohttp.ClientError) as raised:
        async with mtls.http.get(f"{mtls.internal}/healthz", ssl=context):
            pass
    assert not isinstance(raised.value, aiohttp.ClientResponseError)

    # TLS 1.2: the server checks the client's certificate inside the handshake, so the
    # handshake itself fails.
    tls12 = _client_context(pki, cert)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    refused = await asyncio.to_thread(_raw_exchange, mtls.internal, tls12)
    assert not refused.handshake_done, refused
    # TLS 1.3: the client's side of the handshake ends before the server has checked its
    # certificate; the server then drops the connection without reading the request.
    refused = await asyncio.to_thread(_raw_exchange, mtls.internal, context)
    assert refused.answer == b"", refused


@pytest.mark.integration
async def test_plain_http_on_the_tls_listener_gets_nothing(mtls: IngressUnderTest) -> None:
    plain = mtls.internal.replace("https://", "http://")
    with pytest.raises(aiohttp.ClientError):
        async with mtls.http.get(f"{plain}/healthz") as response:
            # Should a response come back at all, it must not be a served request.
            assert response.status >= 400


# --- configuration -----------------------------------------------------------------------


def _settings(env: dict[str, str]) -> Settings:
    return load_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", **env})


async def _tls_answer(server_context: ssl.SSLContext, client: ssl.SSLContext) -> bytes | None:
    """What a TLS server with ``server_context`` says to a caller with ``client``:
    ``b"ok"`` once the handshake passed, ``None`` if it was refused."""

    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"
        )
        try:
            return await asyncio.wait_for(reader.read(), timeout=10) or None
        except (ssl.SSLError, OSError):
            return None
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_only_the_client_ca_is_trusted_not_the_system_store(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make the stranger's CA the "system" store: a context that loaded the system's
    # trusted CAs (as ssl.create_default_context(Purpose.CLIENT_AUTH) does) would now
    # accept the stranger's client certificate.
    stranger_ca = tmp_path / "system-ca.pem"
    pki.stranger.cert_pem.write_to_path(str(stranger_ca))
    monkeypatch.setenv("SSL_CERT_FILE", str(stranger_ca))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))

    context = _internal_tls(_settings(pki.env))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert await _tls_answer(context, _client_context(pki, pki.client)) == b"ok"
    assert await _tls_answer(context, _client_context(pki, pki.strangers_client)) is None


def test_tls_without_a_client_ca_asks_for_no_certificate(pki: Pki) -> None:
    env = {k: v for k, v in pki.env.items() if k != "INGRESS_INTERNAL_TLS_CLIENT_CA"}
    context = _internal_tls(_settings(env))
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE


def test_a_client_ca_without_a_server_certificate_is_refused(pki: Pki) -> None:
    env = {"INGRESS_INTERNAL_TLS_CLIENT_CA": pki.env["INGRESS_INTERNAL_TLS_CLIENT_CA"]}
    with pytest.raises(ConfigError, match="INGRESS_INTERNAL_TLS_CLIENT_CA: needs"):
        _settings(env)


def test_an_unreadable_certificate_is_a_config_error(pki: Pki, tmp_path: Path) -> None:
    env = {**pki.env, "INGRESS_INTERNAL_TLS_CLIENT_CA": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigError, match="INGRESS_INTERNAL_TLS"):
        _internal_tls(_settings(env))
