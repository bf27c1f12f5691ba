"""The benchmark's server process: the real public ingress app plus a no-op route.

``bench.ingress`` runs this as ``python -m bench._server --bootstrap HOST:PORT`` so the
server has an event loop (and a GIL) of its own. It builds the public application the
way ``ingress.server.running_ingress`` does (``create_apps`` with a ``KafkaPublisher``
and the settings' codec), adds ``POST /bench/noop`` before the router freezes, and
serves on an ephemeral loopback port. Both routes go through the same middleware, so the
difference between them is the webhook handler's own work: verify, build and encode
the record, publish and wait for Kafka's acknowledgement.

When listening and Kafka answers, it prints one JSON line to stdout,
``{"url": "http://127.0.0.1:PORT", "pid": PID}``. It stops when its stdin closes (the
parent exited or is done) or on SIGTERM/SIGINT, then flushes the producer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from aiohttp import web

from base.clock import SystemClock
from base.logs import configure_logging
from base.settings import Settings, load_settings
from ingress.app import create_apps
from ingress.publisher import KafkaPublisher
from schemas.codec import make_codec

INGRESS_PATH = "/v1/webhooks/stripe"
BASELINE_PATH = "/bench/noop"
_READY_TIMEOUT_S = 30.0


def bench_settings(bootstrap: str, stripe_secret: str) -> Settings:
    """Production defaults, except: loopback only, ephemeral ports, a bench secret."""
    return load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STRIPE_WEBHOOK_SECRET": stripe_secret,
            "RAZORPAY_WEBHOOK_SECRET": "rzp_bench_secret",
            "INGRESS_PUBLIC_HOST": "127.0.0.1",
            "INGRESS_PUBLIC_PORT": "0",
        }
    )


async def _noop(request: web.Request) -> web.Response:
    """The baseline: receive the body like the webhook route does, then answer at once."""
    await request.read()
    return web.json_response({"received": True})


class _StopOnEof(asyncio.Protocol):
    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


async def serve(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await loop.connect_read_pipe(lambda: _StopOnEof(stop), sys.stdin)

    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers, timeout_s=settings.publish_timeout_s
    )
    try:
        apps = create_apps(
            settings,
            publisher=publisher,
            codec=make_codec(settings.schema_registry_url),
            clock=SystemClock(),
        )
        apps.public.router.add_post(BASELINE_PATH, _noop, name="bench.noop")
        runner = web.AppRunner(apps.public, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, settings.public_host, settings.public_port, reuse_address=True
            )
            await site.start()
            host, port = runner.addresses[0][:2]
            await _wait_for_kafka(publisher)
            print(json.dumps({"url": f"http://{host}:{port}", "pid": os.getpid()}), flush=True)
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        await publisher.close()


async def _wait_for_kafka(publisher: KafkaPublisher) -> None:
    deadline = asyncio.get_running_loop().time() + _READY_TIMEOUT_S
    while not await publisher.ready():
        if asyncio.get_running_loop().time() > deadline:
            raise SystemExit(f"bench server: Kafka not reachable within {_READY_TIMEOUT_S:g}s")
        await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._server")
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--secret", required=True, help="the Stripe webhook secret")
    args = parser.parse_args(argv)
    settings = bench_settings(args.bootstrap, args.secret)
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
