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
import json
import math
import os
import select
import subprocess
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
    machine_info,
    machine_lines,
    noise_warning,
    progress,
    ratio_text,
    render_goals,
    run_bench,
)
from bench._server import BASELINE_PATH, INGRESS_PATH
from bench._services import ROOT, kafka
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
_INITIAL_RATE_HINT = 2000.0
_POOL_HEADROOM = 2.5
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
    templates = [stripe_event(event_type) for event_type in EVENT_TYPES]
    return [
        PreparedRequest(*signed_stripe_request({**t, "id": random_id("evt")}, secret, signed_at))
        for t in itertools.islice(itertools.cycle(templates), count)
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
        if ingress is None or baseline is None or not baseline.accepted_per_s > 0:
            return math.nan
        return ingress.accepted_per_s / baseline.accepted_per_s

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
        ratio, paced = self.ratio, self.paced_ingress
        p99 = paced.http["request"].p99_ms if paced else math.nan
        rate = f"{paced.target_rps:,.0f}/s" if paced and paced.target_rps else "-"
        return [
            Goal(
                "ingress / no-op route, peak req/s",
                ratio_text(ratio),
                f">= {RATIO_GOAL:g}",
                None if math.isnan(ratio) else ratio >= RATIO_GOAL,
            ),
            Goal(
                f"ingress p99 paced at half its peak ({rate})",
                f"{p99:.1f} ms",
                f"<= {P99_GOAL_MS:g} ms",
                None if math.isnan(p99) else p99 <= P99_GOAL_MS,
            ),
        ]

    def as_json(self) -> dict[str, Any]:
        ingress, baseline, paced = self.best("ingress"), self.best("baseline"), self.paced_ingress
        return {
            "machine": self.machine,
            "kafka": self.kafka,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "closed": [dataclasses.asdict(r) for r in self.closed],
            "paced": [dataclasses.asdict(r) for r in self.paced],
            "summary": {
                "ratio": self.ratio,
                "ratio_goal": RATIO_GOAL,
                "ingress_peak_rps": ingress.accepted_per_s if ingress else None,
                "baseline_peak_rps": baseline.accepted_per_s if baseline else None,
                "ingress_server_us_per_request": server_cost_us(ingress) if ingress else None,
                "baseline_server_us_per_request": server_cost_us(baseline) if baseline else None,
                "paced_rps": paced.target_rps if paced else None,
                "paced_p99_ms": paced.http["request"].p99_ms if paced else None,
                "p99_goal_ms": P99_GOAL_MS,
                "errors": self.errors,
            },
            "goals": [goal.as_json() for goal in self.goals()],
        }


def server_cost_us(result: Phase) -> float | None:
    """The server process's CPU time per answered request, in microseconds."""
    server = result.cpu_percent.get("server")
    if server is None or not result.accepted_per_s > 0:
        return None
    return server / 100 / result.accepted_per_s * 1e6


# -- the run --------------------------------------------------------------------------------


async def _start_at(meter: CpuMeter, at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    meter.start()


async def _run_one(
    target: str,
    url: str,
    requests: Sequence[PreparedRequest],
    meter: CpuMeter,
    *,
    warmup_s: float,
    duration_s: float,
    concurrency: int | None = None,
    rate: float | None = None,
) -> Phase:
    """A closed loop (``concurrency``) or a paced run (``rate``, exactly ``rate x
    (warmup + duration)`` requests, latency from each one's scheduled send time);
    the last ``duration_s`` measured. Errors count over the whole run."""
    log: list[tuple[float, float, bool]] = []  # sent or scheduled, answered, 2xx

    async def one(session: aiohttp.ClientSession, request: PreparedRequest, at: float) -> None:
        ok = await post(session, url, request.body, request.headers, 200)
        log.append((at, time.monotonic(), ok))

    began = time.monotonic()
    measure_from = began + warmup_s
    starter = asyncio.create_task(_start_at(meter, measure_from))
    pool = _Pool(requests)
    with gc_frozen():
        if concurrency is not None:
            await send_closed(pool, concurrency, one, until=measure_from + duration_s)
        else:
            await send_paced(requests, rate or 1.0, one)
    await starter
    cpu = meter.stop()
    if concurrency is not None:  # answers within the window
        measured = [
            b - a for a, b, ok in log if ok and measure_from <= b < began + warmup_s + duration_s
        ]
    else:  # requests scheduled after the warm-up (latency from the schedule)
        first = min((a for a, _, _ in log), default=began)
        measured = [b - a for a, b, ok in log if ok and a >= first + warmup_s - 1e-9]
    return Phase(
        name=target,
        sent=len(log),
        errors=sum(not ok for _, _, ok in log),
        accepted_per_s=len(measured) / duration_s,
        http={"request": distribution(measured)},
        target_rps=rate,
        concurrency=concurrency,
        reused=pool.reused,
        cpu_percent=cpu,
    )


def _pool_size(rate_hint: float, seconds: float, concurrency: int = 0) -> int:
    return min(_MAX_POOL, math.ceil(rate_hint * _POOL_HEADROOM * seconds) + concurrency)


async def _run(
    report: Report, url: str, pids: dict[str, int | None], args: argparse.Namespace
) -> None:
    urls = {"ingress": url + INGRESS_PATH, "baseline": url + BASELINE_PATH}
    hints = dict.fromkeys(urls, _INITIAL_RATE_HINT)
    if args.settle > 0:
        # A fresh JVM compiles its hot paths during the first seconds under load (Kafka's
        # CPU per record halves); let that happen before anything is measured.
        progress(
            f"settling: {args.settle:g} s of ingress load at c={_SETTLE_CONCURRENCY}, not recorded"
        )
        requests = prepare_stripe_requests(_pool_size(_INITIAL_RATE_HINT, args.settle), SECRET)
        await _run_one(
            "settle",
            urls["ingress"],
            requests,
            CpuMeter({}),
            warmup_s=0,
            duration_s=args.settle,
            concurrency=_SETTLE_CONCURRENCY,
        )
    for concurrency, (target, target_url) in itertools.product(args.concurrency, urls.items()):
        seconds = report.warmup_s + report.duration_s
        requests = prepare_stripe_requests(_pool_size(hints[target], seconds, concurrency), SECRET)
        progress(f"closed loop  c={concurrency:<4} {target:<8} ({len(requests)} requests)")
        result = await _run_one(
            target,
            target_url,
            requests,
            CpuMeter(pids),
            warmup_s=report.warmup_s,
            duration_s=report.duration_s,
            concurrency=concurrency,
        )
        report.closed.append(result)
        hints[target] = max(hints[target], result.accepted_per_s)
        progress(f"  {_brief(result)}")
    peak = report.best("ingress")
    if peak is None or not peak.accepted_per_s > 0:
        return
    rate = peak.accepted_per_s / 2
    warmup = max(report.warmup_s, 2.0)  # opens the connections a paced run needs
    for target, target_url in urls.items():
        requests = prepare_stripe_requests(math.ceil(rate * (warmup + args.paced_duration)), SECRET)
        progress(f"paced        {rate:.0f} req/s {target:<8} ({len(requests)} requests)")
        result = await _run_one(
            target,
            target_url,
            requests,
            CpuMeter(pids),
            warmup_s=warmup,
            duration_s=args.paced_duration,
            rate=rate,
        )
        report.paced.append(result)
        progress(f"  {_brief(result)}")


def _brief(r: Phase) -> str:
    d = r.http["request"]
    return (
        f"{r.accepted_per_s:,.0f} req/s  p50 {d.p50_ms:.1f} ms  p99 {d.p99_ms:.1f} ms  "
        f"errors {r.errors}  cpu {_cpu_cell(r)}"
    )


# -- output ---------------------------------------------------------------------------------


def render(report: Report) -> str:
    """The closed-loop table, the paced results, the machine, the summary and goals."""
    lines = [
        f"Sluice ingress benchmark: POST {INGRESS_PATH} (verify, encode, publish acks=all) "
        f"vs POST {BASELINE_PATH} (same server and middleware, answers 200)",
        f"closed loop: {report.duration_s:g} s per run after {report.warmup_s:g} s warm-up; "
        "latency per request; cpu = % of one core: server/kafka/load generator/rest of machine",
        "",
        f"{'conc':>5} | {'ingress rps':>11} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} "
        f"| {'baseline rps':>12} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | {'ratio':>5} "
        f"| {'cpu% ingress':>12} | {'cpu% baseline':>13}",
    ]
    lines.append("-" * len(lines[-1]))
    by_level: dict[int, dict[str, Phase]] = {}
    for r in report.closed:
        by_level.setdefault(r.concurrency or 0, {})[r.name] = r
    for level, runs in by_level.items():
        ing, base = runs.get("ingress"), runs.get("baseline")
        ratio = (
            ing.accepted_per_s / base.accepted_per_s
            if ing and base and base.accepted_per_s
            else math.nan
        )
        lines.append(
            f"{level:>5} | {_cells(ing, 11)} | {_cells(base, 12)} | {ratio:>5.2f} "
            f"| {_cpu_cell(ing):>12} | {_cpu_cell(base):>13}"
        )
    if report.paced:
        first = report.paced[0]
        lines += [
            "",
            f"paced (open loop) at {first.target_rps or 0:,.0f} req/s = half the ingress "
            f"peak, {report.paced_duration_s:g} s; latency "
            "from each request's scheduled send time",
        ]
        for r in report.paced:
            d = r.http["request"]
            lines.append(
                f"  {r.name:<8} {r.accepted_per_s:>7,.0f} req/s  p50 {d.p50_ms:6.1f} ms  "
                f"p99 {d.p99_ms:6.1f} ms  max {d.max_ms:6.1f} ms  errors {r.errors}  "
                f"cpu% {_cpu_cell(r)}"
            )
    lines += ["", *machine_lines(report.machine, {"kafka": report.kafka}), _summary(report)]
    lines += render_goals(report.goals())
    return "\n".join(lines)


def _cells(r: Phase | None, width: int) -> str:
    if r is None:
        return f"{'-':>{width}} {'-':>7} {'-':>7} {'-':>4}"
    d = r.http["request"]
    return f"{r.accepted_per_s:>{width},.0f} {d.p50_ms:>7.1f} {d.p99_ms:>7.1f} {r.errors:>4}"


def _cpu_cell(r: Phase | None) -> str:
    order = ("server", "kafka", "loadgen", "other")
    return (
        "-"
        if r is None
        else "/".join(f"{r.cpu_percent[n]:.0f}" for n in order if n in r.cpu_percent)
    )


def _summary(report: Report) -> str:
    ingress, baseline = report.best("ingress"), report.best("baseline")
    if ingress is None or baseline is None:
        return "summary: no results"
    ratio = report.ratio
    parts = [
        f"summary: peak ingress {ingress.accepted_per_s:,.0f} req/s (c={ingress.concurrency}) "
        f"vs baseline {baseline.accepted_per_s:,.0f} req/s (c={baseline.concurrency}): ratio "
        f"{ratio:.2f} (goal >= {RATIO_GOAL}: {'met' if ratio >= RATIO_GOAL else 'NOT met'})"
    ]
    if (paced := report.paced_ingress) is not None:
        p99 = paced.http["request"].p99_ms
        parts.append(
            f"p99 at {paced.target_rps or 0:,.0f} req/s {p99:.1f} ms (goal <= "
            f"{P99_GOAL_MS:g} ms: {'met' if p99 <= P99_GOAL_MS else 'NOT met'})"
        )
    lines = ["; ".join([*parts, f"errors {report.errors}"])]
    ingress_cost, baseline_cost = server_cost_us(ingress), server_cost_us(baseline)
    if ingress_cost is not None and baseline_cost is not None:
        lines.append(
            f"server CPU per request at those peaks: ingress {ingress_cost:.0f} us, baseline "
            f"{baseline_cost:.0f} us (cost ratio {baseline_cost / ingress_cost:.2f})"
        )
    if baseline.cpu_percent.get("loadgen", 0.0) >= _CLIENT_BOUND_PERCENT:
        lines.append(
            f"note: the load generator used {baseline.cpu_percent['loadgen']:.0f}% of a core at "
            "the baseline peak, so the baseline is capped by the client and the ratio above "
            "flatters the ingress; the cost ratio is the server-side view"
        )
    runs = [(f"{r.name} c={r.concurrency}", r.cpu_percent) for r in (*report.closed, *report.paced)]
    return "\n".join([*lines, *noise_warning(runs)])


# -- the command ----------------------------------------------------------------------------


def parse_levels(text: str) -> list[int]:
    """``"1,4,16,64"`` -> ``[1, 4, 16, 64]``; each level a positive integer."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1: {text!r}")
    return levels


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingress",
        description="Ingress vs a no-op route on the same server: req/s, p50/p99, ratio.",
    )
    add = parser.add_argument
    add("--duration", type=float, default=5.0, help="seconds measured per closed loop (5)")
    add("--warmup", type=float, default=1.0, help="seconds before each measurement (1)")
    add(
        "--concurrency",
        type=parse_levels,
        default=[1, 4, 16, 64],
        help="closed-loop concurrency levels (1,4,16,64)",
    )
    add("--paced-duration", type=float, default=10.0, help="seconds paced at half the peak (10)")
    add(
        "--bootstrap", default=None, help="Kafka (default: $KAFKA_BOOTSTRAP_SERVERS, else embedded)"
    )
    add(
        "--settle",
        type=float,
        default=8.0,
        help="seconds of unrecorded load first, to warm up Kafka's JIT (8)",
    )
    add("--json", action="store_true", help="print the report as JSON")
    return parser


def _server(bootstrap: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    """``bench._server`` in a child process; it stops when its stdin closes."""
    log = (workdir / "server.log").open("ab")
    argv = [sys.executable, "-m", "bench._server", "--bootstrap", bootstrap, "--secret", SECRET]
    child = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=ROOT
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 60.0)
    if not (line := child.stdout.readline() if ready else b""):
        child.kill()
        raise RuntimeError(f"bench server did not start; see {workdir / 'server.log'}")
    announced = json.loads(line)
    return child, str(announced["url"]), int(announced["pid"])


def _measure(args: argparse.Namespace) -> Report:
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or None
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp,
        kafka(bootstrap, Path(tmp)) as broker,
    ):
        report = Report(machine_info(), args.duration, args.warmup, args.paced_duration)
        report.kafka = broker.description
        progress(f"starting the bench server (Kafka at {broker.url}) ...")
        child, url, pid = _server(broker.url, Path(tmp))
        try:
            progress(f"server pid {pid} at {url}")
            pids = {"server": pid, "kafka": broker.pid, "loadgen": os.getpid()}
            asyncio.run(_run(report, url, pids, args))
        finally:
            assert child.stdin is not None
            child.stdin.close()  # the server's signal to stop
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.paced_duration <= 0 or min(args.warmup, args.settle) < 0:
        parser.error("durations must be positive (warm-up and settle may be 0)")
    return run_bench(lambda: _measure(args), render, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
