"""The ingress bench's server process: the real public ingress app plus a no-op route.

``bench.ingress`` runs ``python -m bench._server --bootstrap HOST:PORT --secret S
--announce FILE`` so the server has an event loop (and a GIL) of its own. It builds the
public application as ``ingress.server.running_ingress`` does (``create_apps`` with a
``KafkaPublisher`` and the settings' codec), adds ``POST /bench/noop`` before the router
freezes, and serves on an ephemeral loopback port. Both routes go through the same
middleware, so the difference between them is the webhook handler's own work: verify,
build and encode the record, publish and wait for Kafka's acknowledgement.

Once listening and Kafka answers, it writes its URL to ``FILE``. It stops on SIGTERM or
SIGINT, then flushes the producer.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from aiohttp import web

from base.clock import SystemClock
from base.logs import configure_logging
from base.settings import Settings, load_settings
from ingress.app import create_apps
from ingress.publisher import KafkaPublisher
from schemas.codec import make_codec

INGRESS_PATH = "/v1/webhooks/stripe"
BASELINE_PATH = "/bench/noop"


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


async def serve(settings: Settings, announce: Path) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers, timeout_s=settings.publish_timeout_s
    )
    codec = make_codec(settings.schema_registry_url)
    try:
        apps = create_apps(settings, publisher=publisher, codec=codec, clock=SystemClock())
        apps.public.router.add_post(BASELINE_PATH, _noop, name="bench.noop")
        runner = web.AppRunner(apps.public, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.public_host, settings.public_port).start()
            host, port = runner.addresses[0][:2]
            deadline = asyncio.get_running_loop().time() + 30.0
            while not await publisher.ready():
                if asyncio.get_running_loop().time() > deadline:
                    raise SystemExit("bench server: Kafka not reachable within 30 s")
                await asyncio.sleep(0.5)
            await asyncio.to_thread(announce.write_text, f"http://{host}:{port}")
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        await publisher.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._server")
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--secret", required=True, help="the Stripe webhook secret")
    parser.add_argument("--announce", type=Path, required=True, help="write the URL here")
    args = parser.parse_args(argv)
    settings = bench_settings(args.bootstrap, args.secret)
    configure_logging(settings.log_level)
    asyncio.run(serve(settings, args.announce))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
