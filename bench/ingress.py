"""Benchmark the ingress against a no-op route on the same server, in one run.

    python -m bench.ingress [--duration S] [--warmup S] [--settle S] [--concurrency 1,4,16,64]
                            [--paced-duration S] [--bootstrap HOST:PORT] [--json]

Signed Stripe webhooks go to ``POST /v1/webhooks/stripe`` (verify, encode, publish with
``acks=all`` and wait for Kafka) and, from the same load generator, to ``POST
/bench/noop`` on the same aiohttp server (same middleware; reads the body, answers 200).
For each concurrency level a closed loop runs against each route in turn; then both are
paced (open loop) at half the ingress's peak rate. Prints requests/s, p50/p99 latency,
errors, the ratio, CPU use of each process, and the machine.

Without ``--bootstrap`` or ``KAFKA_BOOTSTRAP_SERVERS`` an embedded Kafka broker runs in
a temporary directory. The server is a child process (``bench._server``), so the load
generator never shares its event loop or GIL; on a 2-core machine the server, the
generator and Kafka still share the cores. Loopback only; every run is bounded.

Goals: ingress/baseline peak ratio >= 0.5; p99 <= 50 ms at half the ingress's peak
rate. Exit status 1 if any request failed (goals are reported, not enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._load import CpuMeter, gc_frozen, post, send_closed, send_paced
from bench._report import (
    Goal,
    Phase,
    distribution,
    div,
    goal,
    machine_info,
    machine_lines,
    noise_warning,
    progress,
    ratio_text,
    render_goals,
    run_bench,
)
from bench._server import BASELINE_PATH, INGRESS_PATH
from bench._services import kafka, running
from tests.payloads import random_id
from tests.payloads.stripe import signed_stripe_request, stripe_event

SECRET = "whsec_bench_only"
RATIO_GOAL = 0.5
P99_GOAL_MS = 50.0
#: Rotated through, so bodies have realistic sizes (about 1.5 to 4 KB, 3 KB on average).
EVENT_TYPES = (
    "payment_intent.succeeded",
    "charge.refunded",
    "invoice.paid",
    "customer.subscription.updated",
    "checkout.session.completed",
)
_POOL_HEADROOM = 2.5  # requests built per second of run, times the best rate seen so far
_MAX_POOL = 200_000
_SETTLE_CONCURRENCY = 16
_CLIENT_BOUND_PERCENT = 90.0


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    body: bytes
    headers: Mapping[str, str]


def prepare_stripe_requests(
    count: int, secret: str, *, timestamp: int | None = None
) -> list[PreparedRequest]:
    """``count`` signed Stripe webhooks, each with a unique event id, signed at
    ``timestamp`` (default now; the ingress accepts it for five minutes)."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    templates = itertools.cycle([stripe_event(event_type) for event_type in EVENT_TYPES])
    return [
        PreparedRequest(*signed_stripe_request({**t, "id": random_id("evt")}, secret, signed_at))
        for t in itertools.islice(templates, count)
    ]


class _Pool:
    """The pre-built requests in order, wrapping around (and counting) if they run out
    (the ingress does not deduplicate, so a request sent twice costs the same)."""

    def __init__(self, requests: Sequence[PreparedRequest]) -> None:
        self._requests, self.reused = requests, 0

    def __iter__(self) -> Iterator[PreparedRequest]:
        for index in itertools.count():
            self.reused += index >= len(self._requests)
            yield self._requests[index % len(self._requests)]


@dataclass
class Report:
    machine: dict[str, str]
    duration_s: float
    warmup_s: float
    paced_duration_s: float = math.nan
    kafka: str = ""
    closed: list[Phase] = field(default_factory=list)
    paced: list[Phase] = field(default_factory=list)

    def best(self, target: str) -> Phase | None:
        runs = [r for r in self.closed if r.name == target]
        return max(runs, key=lambda r: r.accepted_per_s) if runs else None

    @property
    def ratio(self) -> float:
        ingress, baseline = self.best("ingress"), self.best("baseline")
        return (
            div(ingress.accepted_per_s, baseline.accepted_per_s)
            if ingress and baseline
            else math.nan
        )

    @property
    def paced_ingress(self) -> Phase | None:
        return next((r for r in self.paced if r.name == "ingress"), None)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in (*self.closed, *self.paced))

    @property
    def failed(self) -> bool:
        return self.errors > 0

    def goals(self) -> list[Goal]:
        paced = self.paced_ingress
        p99 = paced.http["request"].p99_ms if paced else math.nan
        rate = f"{paced.target_rps or 0:,.0f}/s" if paced else "-"
        ratio_goal, p99_goal = f">= {RATIO_GOAL:g}", f"<= {P99_GOAL_MS:g} ms"
        return [
            goal(
                "ingress / no-op route, peak req/s",
                self.ratio,
                ratio_text(self.ratio),
                ratio_goal,
                lambda r: r >= RATIO_GOAL,
            ),
            goal(
                f"ingress p99 paced at half its peak ({rate})",
                p99,
                f"{p99:.1f} ms",
                p99_goal,
                lambda p: p <= P99_GOAL_MS,
            ),
        ]

    def as_json(self) -> dict[str, Any]:
        ingress, baseline = self.best("ingress"), self.best("baseline")
        summary = {
            "ratio": self.ratio,
            "ingress_server_us_per_request": server_cost_us(ingress) if ingress else None,
            "baseline_server_us_per_request": server_cost_us(baseline) if baseline else None,
            "errors": self.errors,
        }
        goals = [g.as_json() for g in self.goals()]
        return dataclasses.asdict(self) | {"summary": summary, "goals": goals}


def server_cost_us(result: Phase) -> float | None:
    """The server process's CPU time per answered request, in microseconds."""
    server = result.cpu_percent.get("server")
    return None if server is None else div(server / 100, result.accepted_per_s) * 1e6


async def _measure_one(
    target: str,
    url: str,
    requests: Sequence[PreparedRequest],
    meter: CpuMeter,
    seconds: tuple[float, float],
    *,
    concurrency: int | None = None,
    rate: float = 0,
) -> Phase:
    """A closed loop (``concurrency``) or a paced run (exactly ``rate x (warm-up +
    duration)`` requests; latency from each one's scheduled send time), measured over
    its last ``seconds[1]`` after ``seconds[0]`` of warm-up. Errors count throughout."""
    warmup_s, duration_s = seconds
    log: list[tuple[float, float, bool]] = []  # sent (or scheduled), answered, 2xx

    async def one(session: aiohttp.ClientSession, request: PreparedRequest, at: float) -> None:
        ok = await post(session, url, request.body, request.headers, 200)
        log.append((at, time.monotonic(), ok))

    async def start_meter() -> None:
        await asyncio.sleep(warmup_s)
        meter.start()

    began, pool = time.monotonic(), _Pool(requests)
    starter = asyncio.create_task(start_meter())
    with gc_frozen():
        if concurrency:
            await send_closed(pool, concurrency, one, until=began + warmup_s + duration_s)
        else:
            await send_paced(requests, rate, one)
    await starter
    cpu = meter.stop()
    if concurrency:  # the answers within the measured window
        window = (began + warmup_s, began + warmup_s + duration_s)
        measured = [b - a for a, b, ok in log if ok and window[0] <= b < window[1]]
    else:  # the requests scheduled after the warm-up
        first = min((a for a, _, _ in log), default=began)
        measured = [b - a for a, b, ok in log if ok and a >= first + warmup_s - 1e-9]
    return Phase(
        name=target,
        sent=len(log),
        errors=sum(not ok for _, _, ok in log),
        accepted_per_s=len(measured) / duration_s,
        http={"request": distribution(measured)},
        target_rps=rate or None,
        concurrency=concurrency,
        reused=pool.reused,
        cpu_percent=cpu,
    )


async def _run(
    report: Report, url: str, pids: dict[str, int | None], args: argparse.Namespace
) -> None:
    urls = {"ingress": url + INGRESS_PATH, "baseline": url + BASELINE_PATH}
    best = dict.fromkeys(urls, 2000.0)  # req/s: sizes the pool of pre-built requests

    def pool(target: str, seconds: float, extra: int = 0) -> list[PreparedRequest]:
        count = min(_MAX_POOL, math.ceil(best[target] * _POOL_HEADROOM * seconds) + extra)
        return prepare_stripe_requests(count, SECRET)

    if args.settle > 0:
        # A fresh JVM compiles its hot paths during the first seconds under load (Kafka's
        # CPU per record halves); let that happen before anything is measured.
        progress(f"settling: {args.settle:g} s of ingress load, not recorded")
        requests, settle = pool("ingress", args.settle), (0.0, args.settle)
        await _measure_one(
            "settle",
            urls["ingress"],
            requests,
            CpuMeter({}),
            settle,
            concurrency=_SETTLE_CONCURRENCY,
        )
    seconds = (report.warmup_s, report.duration_s)
    for concurrency, (target, target_url) in itertools.product(args.concurrency, urls.items()):
        requests = pool(target, sum(seconds), concurrency)
        progress(f"closed loop  c={concurrency:<4} {target:<8} ({len(requests)} requests)")
        result = await _measure_one(
            target, target_url, requests, CpuMeter(pids), seconds, concurrency=concurrency
        )
        report.closed.append(result)
        best[target] = max(best[target], result.accepted_per_s)
        progress(f"  {_brief(result)}")
    if (peak := report.best("ingress")) is None or not peak.accepted_per_s > 0:
        return
    rate = peak.accepted_per_s / 2
    seconds = (max(report.warmup_s, 2.0), args.paced_duration)  # opens the connections
    for target, target_url in urls.items():
        requests = prepare_stripe_requests(math.ceil(rate * sum(seconds)), SECRET)
        progress(f"paced        {rate:.0f} req/s {target:<8} ({len(requests)} requests)")
        result = await _measure_one(
            target, target_url, requests, CpuMeter(pids), seconds, rate=rate
        )
        report.paced.append(result)
        progress(f"  {_brief(result)}")


def _brief(r: Phase) -> str:
    d = r.http["request"]
    return (
        f"{r.accepted_per_s:,.0f} req/s  p50 {d.p50_ms:.1f} ms  p99 {d.p99_ms:.1f} ms  "
        f"errors {r.errors}  cpu {_cpu(r)}"
    )


def _cpu(r: Phase | None) -> str:
    names = ("server", "kafka", "loadgen", "other")
    return (
        "-"
        if r is None
        else "/".join(f"{r.cpu_percent[n]:.0f}" for n in names if n in r.cpu_percent)
    )


def render(report: Report) -> str:
    """The closed-loop table, the paced runs, the machine, the summary and the goals."""
    levels: dict[int, dict[str, Phase]] = {}
    for r in report.closed:
        levels.setdefault(r.concurrency or 0, {})[r.name] = r
    header = (
        f"{'conc':>5} | {'ingress rps':>11} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | "
        f"{'baseline rps':>12} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | {'ratio':>5} | "
        f"{'cpu% ingress':>12} | {'cpu% baseline':>13}"
    )
    rows = [header, "-" * len(header)]
    for level, runs in levels.items():
        ingress, base = runs.get("ingress"), runs.get("baseline")
        ratio = div(ingress.accepted_per_s, base.accepted_per_s) if ingress and base else math.nan
        rows.append(
            f"{level:>5} | {_cells(ingress, 11)} | {_cells(base, 12)} | {ratio:>5.2f} | "
            f"{_cpu(ingress):>12} | {_cpu(base):>13}"
        )
    lines = [
        f"Sluice ingress benchmark: POST {INGRESS_PATH} (verify, encode, publish acks=all) "
        f"vs POST {BASELINE_PATH} (same server and middleware, answers 200)",
        f"closed loop: {report.duration_s:g} s per run after {report.warmup_s:g} s warm-up; "
        "latency per request; cpu = % of one core: server/kafka/load generator/rest of machine",
        "",
        *rows,
    ]
    if report.paced:
        lines += [
            "",
            f"paced (open loop) at {report.paced[0].target_rps or 0:,.0f} req/s = half the "
            f"ingress peak, {report.paced_duration_s:g} s; latency from each request's "
            "scheduled send time",
        ]
        for r in report.paced:
            d = r.http["request"]
            lines.append(
                f"  {r.name:<8} {r.accepted_per_s:>7,.0f} req/s  p50 {d.p50_ms:6.1f} ms  "
                f"p99 {d.p99_ms:6.1f} ms  max {d.max_ms:6.1f} ms  errors {r.errors}  cpu% {_cpu(r)}"
            )
    lines += ["", *machine_lines(report.machine, {"kafka": report.kafka}), *_summary(report)]
    return "\n".join(lines + render_goals(report.goals()))


def _cells(r: Phase | None, width: int) -> str:
    if r is None:
        return f"{'-':>{width}} {'-':>7} {'-':>7} {'-':>4}"
    d = r.http["request"]
    return f"{r.accepted_per_s:>{width},.0f} {d.p50_ms:>7.1f} {d.p99_ms:>7.1f} {r.errors:>4}"


def _summary(report: Report) -> list[str]:
    ingress, baseline, paced = report.best("ingress"), report.best("baseline"), report.paced_ingress
    if ingress is None or baseline is None:
        return ["summary: no results"]
    ratio, verdict = report.ratio, {True: "met", False: "NOT met"}
    parts = [
        f"summary: peak ingress {ingress.accepted_per_s:,.0f} req/s (c={ingress.concurrency}) "
        f"vs baseline {baseline.accepted_per_s:,.0f} req/s (c={baseline.concurrency}): ratio "
        f"{ratio:.2f} (goal >= {RATIO_GOAL}: {verdict[ratio >= RATIO_GOAL]})"
    ]
    if paced is not None:
        p99 = paced.http["request"].p99_ms
        parts.append(
            f"p99 at {paced.target_rps or 0:,.0f} req/s {p99:.1f} ms (goal <= "
            f"{P99_GOAL_MS:g} ms: {verdict[p99 <= P99_GOAL_MS]})"
        )
    lines = ["; ".join([*parts, f"errors {report.errors}"])]
    costs = server_cost_us(ingress), server_cost_us(baseline)
    if costs[0] is not None and costs[1] is not None:
        lines.append(
            f"server CPU per request at those peaks: ingress {costs[0]:.0f} us, baseline "
            f"{costs[1]:.0f} us (cost ratio {costs[1] / costs[0]:.2f})"
        )
    if (loadgen := baseline.cpu_percent.get("loadgen", 0.0)) >= _CLIENT_BOUND_PERCENT:
        lines.append(
            f"note: the load generator used {loadgen:.0f}% of a core at the baseline peak, so "
            "the baseline is capped by the client and the ratio above flatters the ingress; "
            "the cost ratio is the server-side view"
        )
    runs = [(f"{r.name} c={r.concurrency}", r.cpu_percent) for r in report.closed]
    runs += [(f"{r.name} paced", r.cpu_percent) for r in report.paced]
    return lines + noise_warning(runs)


def parse_levels(text: str) -> list[int]:
    """``"1,4,16,64"`` -> ``[1, 4, 16, 64]``; each level a positive integer."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise argparse.ArgumentTypeError(f"concurrency levels must be integers >= 1: {text!r}")
    return [int(part) for part in parts]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingress",
        description="Ingress vs a no-op route on the same server: req/s, p50/p99, ratio.",
    )
    add = parser.add_argument
    add("--duration", type=float, default=5.0, help="seconds measured per closed loop (5)")
    add("--warmup", type=float, default=1.0, help="seconds before each measurement (1)")
    add("--concurrency", type=parse_levels, default=[1, 4, 16, 64], help="levels (1,4,16,64)")
    add("--paced-duration", type=float, default=10.0, help="seconds paced at half the peak (10)")
    add("--bootstrap", default=None, help="Kafka (default: $KAFKA_BOOTSTRAP_SERVERS or embedded)")
    add("--settle", type=float, default=8.0, help="unrecorded seconds first, for Kafka's JIT (8)")
    add("--json", action="store_true", help="print the report as JSON")
    return parser


def _measure(args: argparse.Namespace) -> Report:
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or None
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp,
        kafka(bootstrap, Path(tmp)) as broker,
    ):
        report = Report(
            machine_info(), args.duration, args.warmup, args.paced_duration, broker.description
        )
        announce = Path(tmp) / "server.url"
        argv = [sys.executable, "-m", "bench._server", "--bootstrap", broker.url]
        argv += ["--secret", SECRET, "--announce", str(announce)]
        progress(f"starting the bench server (Kafka at {broker.url}) ...")
        with running("server", argv, dict(os.environ), Path(tmp)) as server:
            server.wait_ready(announce.exists, timeout=60.0, interval=0.1)
            url = announce.read_text()
            progress(f"server pid {server.pid} at {url}")
            pids = {"server": server.pid, "kafka": broker.pid, "loadgen": os.getpid()}
            asyncio.run(_run(report, url, pids, args))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.paced_duration <= 0 or min(args.warmup, args.settle) < 0:
        parser.error("durations must be positive (warm-up and settle may be 0)")
    return run_bench(lambda: _measure(args), render, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
