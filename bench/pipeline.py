"""Benchmark the whole pipeline, and the normalise agent against a bare loop and Quix.

    python -m bench.pipeline [--rate R] [--workers 1[,2]] [--dedupe-ids N] [--json] ...

**Part 1, end to end.** ``sluice ingress`` alone first: a closed-loop burst of signed
Stripe ``payment_intent.succeeded`` webhooks with no worker running (after an unmeasured
one a tenth its size): what the front door accepts on its own. Then ``sluice worker``
starts: a probe, a paced warm-up, webhooks at ``--rate`` (default: half the ingress-alone
accepted/s, open loop) for ``--duration`` seconds, then the same burst end to end. End-to-
end latency = the ``payments`` row first visible (polled every 20 ms) minus the HTTP 200;
rows never seen are lost. ``--workers 1,2`` repeats the burst with ``--processes 2``.
**Part 2, agent throughput** (``bench._race``). **Part 3, dedupe memory**
(``bench.dedupe_memory``; ``--dedupe-ids 0`` skips it).

Goals (issue 9), each measured in this run: Sluice >= 1.0 x Quix Streams' events/s; its
CPU per event <= 2 x the domain work's; burst rows/s >= 0.8 x the ingress-alone
accepted/s; paced at half that, p99 <= 1 s and none lost; worker RSS flat from 100k to 1M
ids. Reported, not enforced: exit status 1 only if webhooks were refused or a part failed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import dedupe_memory as dedupe
from bench._inputs import WEBHOOK, signed_now
from bench._load import CpuMeter, Request, send_items
from bench._race import (
    CONTENDERS,
    ContenderResult,
    domain_cost_us,
    prepare_race_input,
    run_contender,
)
from bench._report import (
    BenchReport,
    Goal,
    Phase,
    cpu_line,
    distribution,
    div,
    goal,
    hop,
    machine_info,
    machine_lines,
    ms,
    noise_warning,
    num,
    progress,
    ratio_text,
    render_goals,
    run_bench,
    table,
)
from bench._services import (
    POLL_EVERY_S,
    RowWatcher,
    Stack,
    bench_parser,
    check_paced,
    end_offsets,
    ingress_process,
    stack,
    worker_process,
    written_at,
)
from devstack.process import ChildProcess

# Issue 9's goals, each a ratio measured in one run.
QUIX_RATIO_GOAL = 1.0
CPU_RATIO_GOAL = 2.0
CAPACITY_RATIO_GOAL = 0.8
P99_GOAL_MS = 1000.0
ROUGH_WINDOW_S = 1.0  # a contender measured over less gets a "rough" note
SECRET = "whsec_bench_pipeline"
BILLING_TOPIC = "billing.payment.succeeded"
_PROBE_TIMEOUT_S = 180.0  # the worker's start: imports, group join, topic declaration
_ROWS = (
    "SELECT 'row', provider_payment_id FROM payments "
    "WHERE provider = 'stripe' AND provider_payment_id = ANY(%(row)s)"
)
Items = list[tuple[str, list[Request]]]


@dataclass
class EndToEnd:
    worker_ready_s: float = math.nan
    phases: list[Phase] = field(default_factory=list)
    ingress_alone_rps: float = math.nan  # webhooks accepted/s with no worker, closed loop

    @property
    def paced(self) -> Phase | None:
        return next((p for p in self.phases if p.target_rps is not None), None)

    def burst(self, processes: int) -> Phase | None:
        return next((p for p in self.phases if p.concurrency and p.workers == processes), None)

    def capacity_ratio(self, processes: int) -> float:
        """End-to-end burst rows/s with ``processes`` workers over the ingress-alone
        burst's accepted/s (NaN if either is missing)."""
        burst = self.burst(processes)
        return div(burst.done_per_s, self.ingress_alone_rps) if burst else math.nan


def worker_app_id(run_id: str, processes: int) -> str:
    return f"bench-worker-{run_id}" if processes == 1 else f"bench-worker{processes}-{run_id}"


def _webhooks(url: str, count: int) -> Items:
    """``count`` webhooks signed now, each paying for its own order, keyed by payment."""
    return [
        (w.payment_id, [Request(WEBHOOK, url, w.body, w.headers, 200)])
        for w in signed_now(count, SECRET)
    ]


def _payment_id(record: Any) -> str | None:
    return record.get("paymentId") if isinstance(record.get("paymentId"), str) else None


async def _ingress_alone(
    args: argparse.Namespace, url: str, meter: CpuMeter, e2e: EndToEnd
) -> None:
    """The closed-loop burst with no worker: the yardstick for the end-to-end one."""
    c = args.burst_concurrency
    progress(f"ingress alone: warm-up, then {args.burst:,} webhooks, {c} in flight ...")
    # Unmeasured first: the first requests pay for connections, the producer's metadata
    # and cold caches, which the end-to-end burst (it runs later) does not.
    await send_items(_webhooks(url, max(1, args.burst // 10)), 0, c)
    items = _webhooks(url, args.burst)
    meter.start()
    log = await send_items(items, 0, c)
    phase = log.phase(f"ingress alone c={c}", log.scheduled)
    phase.cpu_percent, phase.cpu_wait_percent = meter.stop(), meter.waited
    phase.concurrency, phase.workers = c, 0  # no worker, no rows
    e2e.phases.append(phase)
    e2e.ingress_alone_rps = phase.accepted_per_s
    progress(f"ingress alone: {phase.accepted_per_s:,.0f} webhooks accepted/s")


async def _with_worker(
    args: argparse.Namespace,
    at: Stack,
    url: str,
    e2e: EndToEnd,
    watcher: RowWatcher,
    worker: ChildProcess,
    pids: dict[str, int | None],
    processes: int,
    rate: float,
) -> None:
    """The probe (waits for the worker), then with ``rate`` a paced warm-up and the paced
    run, then the burst."""
    began, c = time.monotonic(), args.burst_concurrency
    _, probe = await watcher.phase(
        "probe", _webhooks(url, 1), 0, 1, worker, CpuMeter({}), _PROBE_TIMEOUT_S
    )
    if probe.errors or probe.missing["row"]:
        raise RuntimeError(f"the probe webhook made no row in {_PROBE_TIMEOUT_S:g} s")
    if math.isnan(e2e.worker_ready_s):
        e2e.worker_ready_s = time.monotonic() - began
    progress(f"worker ready: first row {time.monotonic() - began:.1f} s after the webhook")
    suffix = f", {processes} workers" if processes > 1 else ""
    runs = [("warm-up", round(rate * args.warmup), rate)] if rate else []
    runs += [(f"paced {rate:,.0f}/s{suffix}", round(rate * args.duration), rate)] if rate else []
    runs += [(f"burst c={c}{suffix}", args.burst, 0.0)] if args.burst else []
    for name, count, paced_rate in runs:
        progress(f"{name}: {count:,} webhooks ...")
        before, meter = (
            end_offsets(at.bootstrap, [BILLING_TOPIC]),
            CpuMeter(pids, ("postgres", "worker")),
        )
        # A minute plus what 250 rows/s (half the slowest pipeline seen) needs.
        log, phase = await watcher.phase(
            name, _webhooks(url, count), paced_rate, c, worker, meter, 60.0 + count / 250.0
        )
        if name == "warm-up":
            continue
        phase.workers = processes
        if paced_rate:
            billed = written_at(at.bootstrap, BILLING_TOPIC, before, _payment_id)
            phase.stages["200 -> billing record"] = hop(log.acked, billed)
            phase.stages["billing record -> row"] = hop(billed, watcher.seen()["row"])
        e2e.phases.append(phase)
        e2e_p, lost = phase.latency["row"], phase.missing["row"]
        progress(
            f"{name}: {phase.done_per_s:.0f} rows/s, end to end p50 {e2e_p.p50_ms:.0f} ms, "
            f"p99 {e2e_p.p99_ms:.0f} ms, {lost} missing, {phase.errors} errors"
        )


def run_end_to_end(args: argparse.Namespace, at: Stack) -> EndToEnd:
    """Start the ingress; burst it alone; then per worker count start the worker(s) and
    run the phases. Blocks; bounded by time-outs."""
    e2e = EndToEnd()
    with ingress_process(at, SECRET) as ingress:
        url = ingress.url("/v1/webhooks/stripe")
        pids = at.pids() | {"ingress": ingress.child.pid, "bench": os.getpid()}
        if args.burst:
            asyncio.run(_ingress_alone(args, url, CpuMeter(pids, ("postgres",)), e2e))
        rate = args.rate if args.rate is not None else e2e.ingress_alone_rps / 2
        if not rate > 0:
            raise RuntimeError("no paced rate: the ingress accepted nothing in its burst")
        for index, processes in enumerate(args.workers):
            with worker_process(at, worker_app_id(at.run_id, processes), processes=processes) as w:
                watcher = RowWatcher(at.postgres.url, _ROWS, ("row",))
                named = pids | {"worker": w.pid}
                first_rate = rate if index == 0 else 0.0  # paced once, with the first count
                run = functools.partial(_with_worker, args, at, url, e2e, watcher, w, named)
                watcher.drive(functools.partial(run, processes, first_rate))
    return e2e


@dataclass
class Report(BenchReport):
    machine: dict[str, str]
    kafka: str = ""
    postgres: str = ""
    e2e: EndToEnd | None = None
    race_events: int = 0
    race_unique: int = 0
    race: list[ContenderResult] = field(default_factory=list)
    domain_us_per_event: float = math.nan
    dedupe: dedupe.DedupeMemory | None = None
    rate_given: bool = False  # the paced rate came from --rate, not from the burst

    def contender(self, name: str) -> ContenderResult | None:
        return next((c for c in self.race if c.name == name), None)

    def ratio(self, name: str) -> float:
        """Sluice's events/s over ``name``'s (NaN if either is missing)."""
        sluice, other = self.contender("sluice"), self.contender(name)
        return div(sluice.events_per_s, other.events_per_s) if sluice and other else math.nan

    def cpu_ratio(self, name: str) -> float:
        """``name``'s CPU per event over Sluice's (the throughput ratio without noise)."""
        sluice, other = self.contender("sluice"), self.contender(name)
        return (
            div(other.cpu_us_per_event, sluice.cpu_us_per_event) if sluice and other else math.nan
        )

    def domain_ratio(self, name: str) -> float:
        """``name``'s CPU per event over the domain work's alone: what Kafka and the
        framework cost on top of Sluice's own code."""
        contender = self.contender(name)
        return div(contender.cpu_us_per_event, self.domain_us_per_event) if contender else math.nan

    @property
    def failed(self) -> bool:
        refused = any(p.errors for p in self.e2e.phases) if self.e2e else False
        return refused or bool(self.dedupe and self.dedupe.error) or any(c.error for c in self.race)

    def goals(self) -> list[Goal]:
        """Issue 9's rows this bench measures (the orders row is ``bench.orders``')."""
        quix, sluice_cpu, quix_cpu = self.ratio("quix"), *map(self.domain_ratio, ("sluice", "quix"))
        skipped = (q := self.contender("quix")) is not None and q.skipped and math.isnan(quix)
        measured = "skipped: Quix Streams not installed" if skipped else ratio_text(quix)
        events = "normalise agent events/s / Quix Streams, same records"
        cpu = ratio_text(sluice_cpu, "x")
        cpu += f" (Quix: {ratio_text(quix_cpu, 'x')})" if not math.isnan(quix_cpu) else ""
        goals = [
            goal(events, measured, quix, ">=", QUIX_RATIO_GOAL),
            goal(
                "normalise agent CPU per event / domain work alone",
                cpu,
                sluice_cpu,
                "<=",
                CPU_RATIO_GOAL,
                "x",
            ),
        ]
        e2e = self.e2e or EndToEnd()
        for processes in sorted({p.workers for p in e2e.phases if p.concurrency and p.workers}) or [
            1
        ]:
            ratio, burst = e2e.capacity_ratio(processes), e2e.burst(processes)
            measured = (
                "-"
                if burst is None or math.isnan(ratio)
                else f"{ratio:.2f} ({num(burst.done_per_s)} / {num(e2e.ingress_alone_rps)})"
            )
            workers = "1 worker" if processes == 1 else f"{processes} worker processes"
            measure = f"end-to-end rows/s / ingress-alone accepted/s, burst, {workers}"
            goals.append(goal(measure, measured, ratio, ">=", CAPACITY_RATIO_GOAL))
        goals.append(self._paced_goal())
        return goals + ([self.dedupe.goal()] if self.dedupe is not None else [])

    def _paced_goal(self) -> Goal:
        paced, target = (
            self.e2e.paced if self.e2e else None,
            f"p99 <= {P99_GOAL_MS / 1000:g} s, 0 lost",
        )
        if paced is None or paced.target_rps is None:
            return Goal("end to end paced at half the ingress-alone capacity", "-", target, None)
        source = "--rate" if self.rate_given else "half the ingress-alone capacity"
        e2e, lost = paced.latency["row"], paced.missing["row"]
        return Goal(
            f"end to end paced at {paced.target_rps:,.0f}/s ({source}) for "
            f"{paced.sent / paced.target_rps:.0f} s, 200 -> row",
            f"p50 {ms(e2e.p50_ms)}, p99 {ms(e2e.p99_ms)}, {lost} lost",
            target,
            e2e.p99_ms <= P99_GOAL_MS and not lost,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "sluice_over_bare": self.ratio("bare"),
            "sluice_over_quix": self.ratio("quix"),
            "cpu_ratio_bare": self.cpu_ratio("bare"),
            "cpu_ratio_quix": self.cpu_ratio("quix"),
            "sluice_cpu_over_domain": self.domain_ratio("sluice"),
            "quix_cpu_over_domain": self.domain_ratio("quix"),
            "capacity_ratio": self.e2e.capacity_ratio(1) if self.e2e else None,
        }

    def as_json(self) -> dict[str, Any]:
        return super().as_json() | {"dedupe": self.dedupe.as_json() if self.dedupe else None}


def _render_e2e(e2e: EndToEnd) -> list[str]:
    row = distribution([])
    columns: list[tuple[str, int, Any]] = [
        ("phase", -22, lambda p: p.name),
        ("sent", 7, lambda p: f"{p.sent:,}"),
        ("errors", 6, lambda p: str(p.errors)),
        ("200s/s", 7, lambda p: num(p.accepted_per_s)),
        ("rows/s", 7, lambda p: num(p.done_per_s)),
        ("http p99", 9, lambda p: ms(p.http[WEBHOOK].p99_ms)),
        ("e2e p50", 8, lambda p: ms(p.latency.get("row", row).p50_ms)),
        ("e2e p99", 8, lambda p: ms(p.latency.get("row", row).p99_ms)),
        ("e2e max", 8, lambda p: ms(p.latency.get("row", row).max_ms)),
        ("drain", 7, lambda p: num(p.drain_s, 1) + " s"),
        ("missing", 7, lambda p: str(sum(p.missing.values()))),
    ]
    head = [
        "",
        "end to end: signed Stripe webhooks -> sluice ingress -> Kafka -> sluice worker -> row",
        f"(latency = row first visible - HTTP 200 read; rows polled every "
        f"{POLL_EVERY_S * 1000:.0f} ms; worker's first row {e2e.worker_ready_s:.1f} s after "
        "start-up; the ingress-alone burst ran before any worker)",
    ]
    return head + table(columns, e2e.phases) + [ln for p in e2e.phases for ln in p.details()]


def _render_race(report: Report) -> list[str]:
    columns: list[tuple[str, int, Any]] = [
        ("contender", -32, lambda c: c.label),
        ("events/s", 9, lambda c: num(c.events_per_s)),
        ("window", 7, lambda c: num(c.rate.window_s if c.rate else math.nan, 2) + " s"),
        ("start-up", 8, lambda c: num(c.startup_s, 1) + " s"),
        ("CPU us/event", 12, lambda c: num(c.cpu_us_per_event)),
        (
            "Sluice/it",
            9,
            lambda c: num(report.ratio(c.name) if c.name != "sluice" else math.nan, 2),
        ),
        (" CPU (% of one core)", -1, lambda c: " " + cpu_line(c.cpu_percent)),
    ]
    lines = [
        "",
        f"agent throughput on one input: {report.race_events:,} raw webhooks on webhooks.stripe "
        f"({report.race_unique:,} unique, {report.race_events - report.race_unique:,} retries)",
        "(events/s = input events between a contender's first and last output; CPU = its "
        "process's CPU time per input event over that window)",
        *table(columns, [c for c in report.race if not (c.skipped or c.error)]),
    ]
    for c in report.race:
        if c.skipped or c.error:
            lines.append(f"{c.label:<32} skipped: {c.skipped or f'FAILED: {c.error}'}")
        elif c.rate is not None and c.rate.window_s < ROUGH_WINDOW_S:
            rough = f"window under {ROUGH_WINDOW_S:g} s: the rate is rough"
            lines.append(f"  {c.name}: {rough}; more --events measure it better")
        if (waited := c.cpu_wait_percent.get("contender")) is not None:
            lines.append(f"  {c.name}: runnable but waiting for a CPU {waited:.0f}% of the time")
    over = [
        f"{c.name} {ratio_text(report.domain_ratio(c.name), 'x')}"
        for c in report.race
        if not math.isnan(report.domain_ratio(c.name))
    ]
    lines.append(
        "domain work alone (decode, dedupe, normalise, encode; no Kafka, no framework): "
        f"{num(report.domain_us_per_event)} us CPU per event"
    )
    return lines + ([f"CPU per event / domain work alone: {', '.join(over)}"] if over else [])


def render(report: Report) -> str:
    services = {"kafka": report.kafka, "postgres": report.postgres}
    lines = ["Sluice pipeline bench", *machine_lines(report.machine, services)]
    lines += _render_e2e(report.e2e) if report.e2e is not None else []
    lines += _render_race(report) if report.race else []
    lines += dedupe.render_part(report.dedupe) if report.dedupe is not None else []
    runs = [(p.name, p.cpu_percent) for p in (report.e2e.phases if report.e2e else [])]
    runs += [(c.name, c.cpu_percent) for c in report.race]
    return "\n".join([*lines, *render_goals(report.goals()), *noise_warning(runs)])


def _worker_counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(part) for part in text.split(",") if part.strip().isdigit())
    if len(counts) != len(text.split(",")) or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"need distinct counts >= 1: {text!r}")
    return counts


def _parser() -> argparse.ArgumentParser:
    description = "Webhooks to Postgres rows end to end; the normalise agent against others."
    parser = bench_parser(
        "python -m bench.pipeline", description, rate=None, duration=60.0, burst=10_000
    )
    add = parser.add_argument
    add("--events", type=int, default=20_000, help="raw webhooks in the agent race (20000)")
    add(
        "--duplicate-every", type=int, default=10, help="every Nth race input a retry (10; 0: none)"
    )
    add("--workers", type=_worker_counts, default=(1,), help="worker process counts, e.g. 1,2 (1)")
    add("--skip-e2e", action="store_true", help="only the agent race")
    add("--skip-race", action="store_true", help="only the end-to-end part")
    dedupe.add_dedupe_arguments(parser, skippable=True)
    return parser


def _measure(args: argparse.Namespace) -> Report:
    report = Report(machine=machine_info(), rate_given=args.rate is not None)
    with stack("pipeline") as at:
        report.kafka, report.postgres = at.kafka.description, at.postgres.description
        report.e2e = None if args.skip_e2e else run_end_to_end(args, at)
        if not args.skip_race:
            progress(f"race: producing {args.events:,} raw webhooks to webhooks.stripe ...")
            given = prepare_race_input(at.bootstrap, args.events, args.duplicate_every)
            report.race_events, report.race_unique = given.events, given.unique
            report.race = [run_contender(name, given, at) for name in CONTENDERS]
            progress("race: measuring the domain work alone ...")
            report.domain_us_per_event = domain_cost_us(given)
        report.dedupe = dedupe.run_dedupe_memory(args, at) if args.dedupe_ids else None
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    check_paced(parser, args)
    if args.rate is None and not args.burst and not args.skip_e2e:
        parser.error("--burst 0 needs --rate: the paced rate is half the burst's")
    dedupe.check_arguments(parser, args, skippable=True)
    if args.events < 2 or args.duplicate_every == 1 or args.duplicate_every < 0:
        parser.error("need --events >= 2, --duplicate-every 0 or > 1")
    return run_bench(lambda: _measure(args), render, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
