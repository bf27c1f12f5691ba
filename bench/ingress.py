"""Benchmark the ingress against a no-op route on the same server, in one run.

    python -m bench.ingress [--duration S] [--warmup S] [--concurrency 1,4,16,64] [--json]

Signed Stripe webhooks go to ``POST /v1/webhooks/stripe`` (verify, encode, publish with
``acks=all`` and wait for Kafka) and, from the same load generator, to ``POST
/bench/noop`` on the same aiohttp server (same middleware; reads the body, answers 200).
For each concurrency level a closed loop runs against each route in turn; then both are
paced (open loop) at half the ingress's peak rate for 10 s.

Kafka is ``KAFKA_BOOTSTRAP_SERVERS`` when set, else an embedded broker. The server is a
child process (``bench._server``), so the load generator never shares its event loop or
GIL; on a 2-core machine the server, the generator and Kafka still share the cores.

Goals: ingress/baseline peak ratio >= 0.5; p99 <= 50 ms at half the ingress's peak
rate. Exit status 1 if any request failed (goals are reported, not enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._inputs import PaymentWebhook, prepare_payment_webhooks
from bench._load import CpuMeter, gc_frozen, post, send_closed, send_paced
from bench._report import (
    BenchReport,
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
    table,
)
from bench._server import BASELINE_PATH, INGRESS_PATH
from bench._services import kafka, running

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
PACED_S = 10.0
# A fresh JVM compiles its hot paths during the first seconds under load (Kafka's CPU per
# record halves): this much unrecorded ingress load runs before anything is measured.
SETTLE_S = 8.0
_POOL_HEADROOM = 2.5  # requests built per second of run, times the best rate seen so far
_MAX_POOL = 200_000
_CLIENT_BOUND_PERCENT = 90.0


def prepare_stripe_requests(
    count: int, secret: str, *, timestamp: int | None = None
) -> list[PaymentWebhook]:
    """``count`` signed Stripe webhooks of ``EVENT_TYPES`` in turn, each a unique event,
    signed at ``timestamp`` (default now; the ingress accepts it for five minutes)."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    return prepare_payment_webhooks(count, secret, timestamp=signed_at, event_types=EVENT_TYPES)


class _Pool:
    """The pre-built requests in order, wrapping around (and counting) if they run out
    (the ingress does not deduplicate, so a request sent twice costs the same)."""

    def __init__(self, requests: Sequence[PaymentWebhook]) -> None:
        self._requests, self.reused = requests, 0

    def __iter__(self) -> Iterator[PaymentWebhook]:
        for index in itertools.count():
            self.reused += index >= len(self._requests)
            yield self._requests[index % len(self._requests)]


@dataclass
class Report(BenchReport):
    machine: dict[str, str]
    duration_s: float
    warmup_s: float
    paced_duration_s: float = PACED_S
    kafka: str = ""
    closed: list[Phase] = field(default_factory=list)
    paced: list[Phase] = field(default_factory=list)

    def best(self, target: str) -> Phase | None:
        runs = [r for r in self.closed if r.name == target]
        return max(runs, key=lambda r: r.accepted_per_s) if runs else None

    @property
    def ratio(self) -> float:
        return _ratio(self.best("ingress"), self.best("baseline"))

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
        ratio, paced_p99 = (
            "ingress / no-op route, peak req/s",
            f"ingress p99 paced at half its peak ({rate})",
        )
        return [
            goal(ratio, ratio_text(self.ratio), self.ratio, ">=", RATIO_GOAL),
            goal(paced_p99, f"{p99:.1f} ms", p99, "<=", P99_GOAL_MS, " ms"),
        ]

    def summary(self) -> dict[str, Any]:
        ingress, baseline = self.best("ingress"), self.best("baseline")
        return {
            "ratio": self.ratio,
            "ingress_server_us_per_request": server_cost_us(ingress) if ingress else None,
            "baseline_server_us_per_request": server_cost_us(baseline) if baseline else None,
            "errors": self.errors,
        }


def _ratio(ingress: Phase | None, baseline: Phase | None) -> float:
    return (
        div(ingress.accepted_per_s, baseline.accepted_per_s) if ingress and baseline else math.nan
    )


def server_cost_us(result: Phase) -> float | None:
    """The server process's CPU time per answered request, in microseconds."""
    server = result.cpu_percent.get("server")
    return None if server is None else div(server / 100, result.accepted_per_s) * 1e6


async def _measure_one(
    target: str,
    url: str,
    requests: Sequence[PaymentWebhook],
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

    async def one(session: aiohttp.ClientSession, request: PaymentWebhook, at: float) -> None:
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


async def _run(report: Report, url: str, pids: dict[str, int | None], levels: list[int]) -> None:
    urls = {"ingress": url + INGRESS_PATH, "baseline": url + BASELINE_PATH}
    best = dict.fromkeys(urls, 2000.0)  # req/s: sizes the pool of pre-built requests

    def pool(target: str, seconds: float, extra: int = 0) -> list[PaymentWebhook]:
        count = min(_MAX_POOL, math.ceil(best[target] * _POOL_HEADROOM * seconds) + extra)
        return prepare_stripe_requests(count, SECRET)

    progress(f"settling: {SETTLE_S:g} s of ingress load, not recorded")
    settle = (0.0, SETTLE_S)
    await _measure_one(
        "settle", urls["ingress"], pool("ingress", SETTLE_S), CpuMeter({}), settle, concurrency=16
    )
    seconds = (report.warmup_s, report.duration_s)
    for concurrency, (target, target_url) in itertools.product(levels, urls.items()):
        requests = pool(target, sum(seconds), concurrency)
        progress(f"closed loop  c={concurrency:<4} {target:<8} ({len(requests)} requests)")
        meter = CpuMeter(pids)
        result = await _measure_one(
            target, target_url, requests, meter, seconds, concurrency=concurrency
        )
        report.closed.append(result)
        best[target] = max(best[target], result.accepted_per_s)
        progress(f"  {_brief(result)}")
    if (peak := report.best("ingress")) is None or not peak.accepted_per_s > 0:
        return
    rate = peak.accepted_per_s / 2
    seconds = (max(report.warmup_s, 2.0), PACED_S)  # the warm-up opens the connections
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
        f"max {d.max_ms:.1f} ms  errors {r.errors}  cpu% {_cpu(r)}"
    )


def _cpu(r: Phase | None) -> str:
    names = ("server", "kafka", "loadgen", "other")
    return (
        "-"
        if r is None
        else "/".join(f"{r.cpu_percent[n]:.0f}" for n in names if n in r.cpu_percent)
    )


def _cells(r: Phase | None) -> list[str]:
    if r is None:
        return ["-"] * 4
    d = r.http["request"]
    return [f"{r.accepted_per_s:,.0f}", f"{d.p50_ms:.1f}", f"{d.p99_ms:.1f}", str(r.errors)]


def render(report: Report) -> str:
    """The closed-loop table, the paced runs, the machine, the summary and the goals."""
    levels: dict[int, dict[str, Phase]] = {}
    for r in report.closed:
        levels.setdefault(r.concurrency or 0, {})[r.name] = r
    rows = [
        [
            str(level),
            *_cells(i := runs.get("ingress")),
            *_cells(b := runs.get("baseline")),
            ratio_text(_ratio(i, b)),
            _cpu(i),
            _cpu(b),
        ]
        for level, runs in levels.items()
    ]
    heads = "conc|ingress rps|p50 ms|p99 ms|err|baseline rps|p50 ms|p99 ms|err|ratio|cpu% ingress"
    heads += "|cpu% baseline"
    columns = [
        (head, len(head) + 1, lambda row, i=i: row[i]) for i, head in enumerate(heads.split("|"))
    ]
    lines = [
        f"Sluice ingress benchmark: POST {INGRESS_PATH} (verify, encode, publish acks=all) "
        f"vs POST {BASELINE_PATH} (same server and middleware, answers 200)",
        f"closed loop: {report.duration_s:g} s per run after {report.warmup_s:g} s warm-up; "
        "latency per request; cpu = % of one core: server/kafka/load generator/rest of machine",
        "",
        *table(columns, rows),
    ]
    if report.paced:
        lines += [
            "",
            f"paced (open loop) at {report.paced[0].target_rps or 0:,.0f} req/s = half the "
            f"ingress peak, {report.paced_duration_s:g} s; latency from each request's "
            "scheduled send time",
            *(f"  {r.name:<8} {_brief(r)}" for r in report.paced),
        ]
    lines += ["", *machine_lines(report.machine, {"kafka": report.kafka}), *_summary(report)]
    return "\n".join(lines + render_goals(report.goals()))


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
    return lines + noise_warning(runs + [(f"{r.name} paced", r.cpu_percent) for r in report.paced])


def parse_levels(text: str) -> list[int]:
    """``"1,4,16,64"`` -> ``[1, 4, 16, 64]``; each level a positive integer."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise argparse.ArgumentTypeError(f"concurrency levels must be integers >= 1: {text!r}")
    return [int(part) for part in parts]


def _measure(args: argparse.Namespace) -> Report:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp, kafka(Path(tmp)) as broker:
        report = Report(machine_info(), args.duration, args.warmup, kafka=broker.description)
        announce = Path(tmp) / "server.url"
        argv = [sys.executable, "-m", "bench._server", broker.url, SECRET, str(announce)]
        progress(f"starting the bench server (Kafka at {broker.url}) ...")
        with running("server", argv, dict(os.environ), Path(tmp)) as server:
            server.wait_ready(announce.exists, timeout=60.0, interval=0.1)
            pids = {"server": server.pid, "kafka": broker.pid, "loadgen": os.getpid()}
            asyncio.run(_run(report, announce.read_text(), pids, args.concurrency))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingress", description=__doc__)
    add = parser.add_argument
    add("--duration", type=float, default=5.0, help="seconds measured per closed loop (5)")
    add("--warmup", type=float, default=1.0, help="seconds before each measurement (1)")
    add("--concurrency", type=parse_levels, default=[1, 4, 16, 64], help="levels (1,4,16,64)")
    add("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive, --warmup not negative")
    return run_bench(lambda: _measure(args), render, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
