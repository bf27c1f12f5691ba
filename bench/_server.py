"""The ingress bench's server process: the real public ingress app plus a no-op route.

``python -m bench._server BOOTSTRAP SECRET ANNOUNCE_FILE``, run by ``bench.ingress`` so
the server has an event loop (and a GIL) of its own. The public application is built as
``ingress.server.running_ingress`` builds it, plus ``POST /bench/noop`` added before the
router freezes: both routes go through the same middleware, so the difference between
them is the webhook handler's own work (verify, encode, publish, wait for Kafka's ack).
Once listening and Kafka answers, it writes its URL to the file; it stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
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
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers, timeout_s=settings.publish_timeout_s
    )
    codec = make_codec(settings.schema_registry_url)
    apps = create_apps(settings, publisher=publisher, codec=codec, clock=SystemClock())
    apps.public.router.add_post(BASELINE_PATH, _noop, name="bench.noop")
    runner = web.AppRunner(apps.public, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.public_host, settings.public_port).start()
        deadline = loop.time() + 30.0
        while not await publisher.ready():
            if loop.time() > deadline:
                raise SystemExit("bench server: Kafka not reachable within 30 s")
            await asyncio.sleep(0.5)
        host, port = runner.addresses[0][:2]
        await asyncio.to_thread(announce.write_text, f"http://{host}:{port}")
        await stop.wait()
    finally:
        await runner.cleanup()
        await publisher.close()


if __name__ == "__main__":
    bootstrap, secret, announce = sys.argv[1:4]
    configured = bench_settings(bootstrap, secret)
    configure_logging(configured.log_level)
    asyncio.run(serve(configured, Path(announce)))
