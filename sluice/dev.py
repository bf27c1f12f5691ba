"""``sluice dev``: the whole pipeline on the embedded stack, in one command.

Starts (or reuses, when its URL is set) Kafka, PostgreSQL and Redis under the data
directory, and Elasticsearch with ``--with-search``, creates the catalog topics, applies
migrations, generates dev secrets unless set, starts the local CRM and the local SMTP
server and SMS/push sink (``sluice/dev_notify.py``) unless their settings are set, writes
every effective URL and secret to ``DIR/dev.env``, runs the ingress and the worker (a
child process), and stops everything on Ctrl-C. Secrets already in ``DIR/dev.env`` are
kept across runs, so a `curl` command signed with them keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.logs import LogFormat
from base.settings import INGRESS_REQUIRED, load_settings
from connectors.kafka_admin import create_topics
from connectors.migrate import apply_migrations
from devstack import DEFAULT_SERVICES, ELASTICSEARCH_SERVICE, EmbeddedStack, free_port
from devstack.crm import LocalCrm, running_crm
from devstack.orphan_guard import start_guard, stop_guard
from devstack.stack import STRIPE_SERVICE
from devstack.stripe import LOCAL_STRIPE_API_KEY, LocalStripeServer
from ingress.server import running_ingress
from schemas.catalog import all_topics
from sluice.dev_leads import demo_partners, lead_commands, read_partners_file, write_partners_file
from sluice.dev_notify import NotifyOutlets, notification_command, running_notify_outlets
from sluice.dev_output import is_ready, is_shown, to_record

__all__ = ["DEV_READY_EVENT", "dev_secrets", "read_env_file", "run_dev", "write_env_file"]

log = logging.getLogger(__name__)

# The worker commits and leaves its group on SIGTERM; past this it is SIGKILLed.
_WORKER_STOP_S = 30.0
_MAX_WORKER_LINE = 16 * 1024 * 1024
_CRM_PORT = 8090  # the local CRM's port when free (else any)

# Generated unless the environment (or an earlier dev.env) already has them.
_SECRET_MAKERS: dict[str, Callable[[], str]] = {
    "STRIPE_WEBHOOK_SECRET": lambda: "whsec_dev_" + secrets.token_hex(16),
    "RAZORPAY_WEBHOOK_SECRET": lambda: "rzp_dev_" + secrets.token_hex(16),
    "INTERNAL_API_TOKEN": lambda: "int_dev_" + secrets.token_hex(16),
    "ADMIN_API_TOKEN": lambda: "adm_dev_" + secrets.token_hex(16),
}


async def run_dev(
    data_dir: Path,
    stop: asyncio.Event,
    *,
    with_search: bool = False,
    log_format: LogFormat = "json",
) -> None:
    """Run everything until ``stop`` is set; ``with_search`` adds Elasticsearch.

    Without it, ``ELASTICSEARCH_URL`` reaches the worker only if it is set already. The
    banner (every URL and secret) comes once the ingress serves and the worker consumes,
    and is the last line of start-up.
    """
    data_dir, earlier = await asyncio.to_thread(_prepare, data_dir)
    env_file = data_dir / "dev.env"
    env: dict[str, str] = {**earlier, **os.environ}

    services = [*DEFAULT_SERVICES]
    if with_search:
        services.append(ELASTICSEARCH_SERVICE)
    # The Stripe API: a local server unless the developer brought a key (real Stripe in
    # test mode) or a server of their own.
    local_stripe = not os.environ.get("STRIPE_API_KEY") and LocalStripeServer.available()
    if local_stripe:
        services.append(STRIPE_SERVICE)
    stack = EmbeddedStack(data_dir, env=os.environ, services=services)
    urls = await asyncio.to_thread(stack.start)
    try:
        # The demo partners' CRM: up before the partners file names its URL.
        # And the notification outlets: up before dev.env names their URLs.
        async with (
            running_crm(data_dir / "crm", free_port(_CRM_PORT)) as crm,
            running_notify_outlets(data_dir) as outlets,
        ):
            effective = {**urls, **dev_secrets(env), **outlets.settings}
            if local_stripe:
                effective["STRIPE_API_KEY"] = LOCAL_STRIPE_API_KEY
            demo = await asyncio.to_thread(_demo_partners, data_dir, crm)
            if demo is not None:
                effective["SLUICE_PARTNERS_FILE"] = str(data_dir / "partners.json")
            effective["INGRESS_PUBLIC_PORT"] = env.get("INGRESS_PUBLIC_PORT") or str(
                free_port(8080)
            )
            effective["INGRESS_INTERNAL_PORT"] = env.get("INGRESS_INTERNAL_PORT") or str(
                free_port(8081)
            )
            write_env_file(env_file, effective)
            # The dev ingress listens on loopback only, whatever INGRESS_PUBLIC_HOST says.
            dev_env = {**env, **effective, "INGRESS_PUBLIC_HOST": "127.0.0.1"}
            settings = load_settings(dev_env, require=INGRESS_REQUIRED)

            created = await asyncio.to_thread(
                create_topics, settings.kafka_bootstrap_servers, all_topics()
            )
            log.info("topics ready", extra={"topics_created": len(created)})
            assert settings.database_url is not None
            applied = await asyncio.to_thread(apply_migrations, settings.database_url)
            log.info("migrations applied", extra={"migrations": applied})

            worker_env = {
                **os.environ,
                **effective,
                "SLUICE_STATE_DIR": str(data_dir / "state"),
                "SLUICE_LOG_FORMAT": "json",  # parsed and re-emitted here (sluice/dev_output.py)
            }
            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sluice",
                "worker",
                env=worker_env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # Longest line read whole (asyncio's default is 64 KiB): a stalled reader
                # would leave the worker blocked on a full pipe.
                limit=_MAX_WORKER_LINE,
            )
            worker_ready = asyncio.Event()
            relay = asyncio.create_task(_relay_output(worker, worker_ready))
            # Stops the worker if this process dies without doing so (SIGKILL), like the
            # servers' own guards (devstack/orphan_guard.py).
            worker_guard = start_guard(worker.pid, signal.SIGTERM, _WORKER_STOP_S)
            try:
                async with running_ingress(settings) as ingress:
                    stripe = stack.started.get("STRIPE_API_BASE")
                    if isinstance(stripe, LocalStripeServer):
                        # The local server's events (a paid intent, an expired session) reach
                        # the ingress signed like Stripe's, so the whole flow runs locally.
                        await asyncio.to_thread(
                            stripe.register_webhook,
                            f"{ingress.public_url}/v1/webhooks/stripe",
                            effective["STRIPE_WEBHOOK_SECRET"].split(",")[0],
                        )
                    if await _until_ready(stop, worker, worker_ready):
                        commands = demo and lead_commands(ingress.public_url, env_file, demo)
                        _print_banner(
                            env_file,
                            effective,
                            ingress.public_url,
                            ingress.internal_url,
                            log_format,
                            _LeadHints(commands or [], crm.directory),
                            _NotifyHints(
                                notification_command(
                                    ingress.internal_url,
                                    effective["INTERNAL_API_TOKEN"].split(",")[0],
                                ),
                                outlets,
                            ),
                        )
                        await _until_stopped_or_exited(stop, worker)
            finally:
                await _stop_process(worker)
                stop_guard(worker_guard)
                await relay  # the worker's last lines (its shutdown) are shown too
    finally:
        await asyncio.to_thread(stack.stop)


async def _relay_output(worker: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
    """Show the worker's lines in this process's format; set ``ready`` when it consumes."""
    assert worker.stdout is not None
    async for raw in worker.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        if not line.strip():
            continue
        record = to_record(line)
        if is_ready(record):
            ready.set()
        if is_shown(record):
            logging.getLogger(record.name).handle(record)


async def _until_ready(
    stop: asyncio.Event, worker: asyncio.subprocess.Process, ready: asyncio.Event
) -> bool:
    """Wait until the worker consumes; False if Ctrl-C or the worker's exit came first."""
    waits = {
        asyncio.create_task(ready.wait()),
        asyncio.create_task(stop.wait()),
        asyncio.create_task(worker.wait()),
    }
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    if ready.is_set():
        return True
    if worker.returncode is not None:
        log.error("worker exited before it was ready", extra={"returncode": worker.returncode})
    return False


async def _until_stopped_or_exited(stop: asyncio.Event, worker: asyncio.subprocess.Process) -> None:
    """Wait for Ctrl-C; a worker that dies on its own also ends the dev run, loudly."""
    stopped = asyncio.create_task(stop.wait())
    exited = asyncio.create_task(worker.wait())
    await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if exited.done():
        log.error("worker exited", extra={"returncode": worker.returncode})
    else:
        exited.cancel()


async def _stop_process(
    process: asyncio.subprocess.Process, timeout_s: float = _WORKER_STOP_S
) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()


def _demo_partners(data_dir: Path, crm: LocalCrm) -> dict[str, Any] | None:
    """Write the demo partners to ``DIR/partners.json`` and return them; ``None`` (and
    nothing written) when the developer set a partners file of their own."""
    if os.environ.get("SLUICE_PARTNERS_FILE"):
        return None
    path = data_dir / "partners.json"
    content = demo_partners(crm.url_for, read_partners_file(path))
    write_partners_file(path, content)
    partners: dict[str, Any] = content["partners"]
    return partners


def _prepare(data_dir: Path) -> tuple[Path, dict[str, str]]:
    """Create the data directory; return it absolute, with an earlier run's dev.env."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir, read_env_file(data_dir / "dev.env")


def dev_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """Every dev secret: the one in ``env`` when set, a fresh random one otherwise."""
    return {name: env.get(name) or make() for name, make in _SECRET_MAKERS.items()}


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines; blank lines and ``#`` comments ignored; missing file → {}."""
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write ``values`` readable by ``set -a; . dev.env`` and by ``read_env_file``."""
    lines = ["# Written by `sluice dev`: the effective URLs and secrets of this run."]
    lines += [f"{name}={value}" for name, value in sorted(values.items())]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)  # it holds secrets


#: The ``event`` field of the banner's JSON line.
DEV_READY_EVENT = "dev.ready"


@dataclass(frozen=True, slots=True)
class _LeadHints:
    """How to send a lead (one command per demo partner) and where it arrives."""

    commands: Sequence[str]
    crm_dir: Path


@dataclass(frozen=True, slots=True)
class _NotifyHints:
    """How to send a notification, and where it lands."""

    command: str
    outlets: NotifyOutlets


def _print_banner(
    env_file: Path,
    values: Mapping[str, str],
    public: str,
    internal: str,
    log_format: LogFormat,
    leads: _LeadHints,
    notify: _NotifyHints,
) -> None:
    webhooks = [f"{public}/v1/webhooks/stripe", f"{public}/v1/webhooks/razorpay"]
    probes = [f"{internal}/healthz", f"{internal}/readyz", f"{internal}/metrics"]
    load = f"set -a; . {env_file}; set +a"
    arrive = (
        f"each lead arrives in {leads.crm_dir}/<partnerId>.jsonl;"
        f" status: GET {internal}/internal/v1/leads/<leadId>; records: sluice tail leads.received"
    )
    landed = (
        f"{notify.outlets.where()}; status: GET {internal}/internal/v1/notifications/<id>;"
        " records: sluice tail notifications.requested"
    )
    if log_format == "json":
        # One line like every other, with what a developer copies from it.
        log.info(
            "Sluice dev stack is up. Ctrl-C stops everything.",
            extra={
                "event": DEV_READY_EVENT,
                "settings": [f"{name}={value}" for name, value in sorted(values.items())],
                "webhooks": webhooks,
                "internal": probes,
                "env_file": str(env_file),
                "load_env": load,
                "send_lead": list(leads.commands),
                "leads_arrive": arrive,
                "send_notification": notify.command,
                "notifications_arrive": landed,
            },
        )
        return
    sys.stderr.flush()  # every log line before the banner
    print("\nSluice dev stack is up. Ctrl-C stops everything.\n")
    for name, value in sorted(values.items()):
        print(f"  {name}={value}")
    print(f"\n  webhooks:  {'  '.join(webhooks)}")
    print(f"  internal:  {'  '.join(probes)}")
    print(f"  env file:  {env_file}   (load it with: {load})\n")
    if leads.commands:
        print("  send a partner lead (demo partners: hmac, bearer, standard webhooks):")
        for command in leads.commands:
            print(f"    {command}")
    else:
        print("  send a partner lead: .venv/bin/sluice leads send --partner ID")
    print(f"  {arrive}\n")
    print("  send a notification (an ORDER_PAID email):")
    print(f"    {notify.command}")
    print(f"  {landed}\n", flush=True)
