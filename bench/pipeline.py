"""Benchmark the whole pipeline, and the normalise agent against a bare loop and Quix.

    python -m bench.pipeline [--rate R] [--duration 60] [--warmup 3] [--burst 10000]
        [--burst-concurrency 32] [--workers 1[,2]] [--events 20000] [--duplicate-every 10]
        [--dedupe-ids 1000000] [--first-sample 100000] [--skip-e2e] [--skip-race] [--json]
        [--fast-postgres] [--workdir DIR]

**Part 1, end to end.** ``sluice ingress`` alone first: a closed-loop burst of ``--burst``
signed Stripe ``payment_intent.succeeded`` webhooks (one fresh payment each, after an
unmeasured burst a tenth its size) with ``--burst-concurrency`` in flight and no worker
running: what the front door accepts on its own. Then ``sluice worker`` starts (its group
committed past those webhooks): a probe, a paced warm-up, then webhooks at ``--rate``
(default: half the ingress-alone accepted/s, open loop) for ``--duration`` seconds.
End-to-end latency = when the ``payments`` row is first visible (polled every 20 ms)
minus when the HTTP 200 was read; rows never seen (lost); sustained rows/s; and, from the
billing records' timestamps, its split between the normalise agent (200 -> billing
record) and the billing projection (billing record -> row). Then the same burst end to
end: the most the pipeline sustains, over what the ingress alone accepted. ``--workers
1,2`` repeats the burst with ``sluice worker --processes 2``.

**Part 2, agent throughput** (``bench._race``): a bare confluent-kafka loop, Sluice's
``normalise_webhooks`` agent and the same work in Quix Streams on one input.
**Part 3, dedupe memory** (``bench.dedupe_memory``; ``--dedupe-ids 0`` skips it).

Goals (issue 9), each a ratio of things measured in this run, in a table at the end:
Sluice >= 1.0 x Quix Streams' events/s; Sluice's CPU per event <= 2 x the domain work's;
end-to-end burst rows/s >= 0.8 x the ingress-alone accepted/s; paced at half the
ingress-alone capacity, p99 <= 1 s and none lost; worker RSS flat from 100k to 1M ids.
Reported, not enforced: the exit status is 1 only if webhooks were refused, a contender
failed or the dedupe part failed. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench import dedupe_memory as dedupe
from bench._inputs import WEBHOOK, PaymentWebhook, signed_now
from bench._load import CpuMeter, Log, post, send_closed, send_paced
from bench._race import (
    CONTENDERS,
    ContenderResult,
    domain_cost_us,
    prepare_race_input,
    run_contender,
)
from bench._report import (
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
    Ingress,
    RowWatcher,
    Stack,
    add_arguments,
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


async def _send(url: str, webhooks: Sequence[PaymentWebhook], rate: float = 0, c: int = 1) -> Log:
    """Paced at ``rate`` (latency from each one's schedule), else ``c`` in a closed loop."""
    log = Log()

    async def one(session: aiohttp.ClientSession, w: PaymentWebhook, at: float) -> None:
        log.scheduled[w.payment_id] = log.sent[w.payment_id] = at
        if await post(session, url, w.body, w.headers, 200):
            log.acked[w.payment_id] = time.monotonic()
        else:
            log.refused[WEBHOOK] += 1

    await (send_paced(webhooks, rate, one) if rate else send_closed(webhooks, c, one))
    return log


@dataclass
class _Part1:
    """Part 1's run: the ingress started, the phases measured into ``result``."""

    args: argparse.Namespace
    at: Stack
    ingress: Ingress
    result: EndToEnd = field(default_factory=EndToEnd)

    @property
    def url(self) -> str:
        return self.ingress.url("/v1/webhooks/stripe")

    def meter(self, *trees: str, **pids: int) -> CpuMeter:
        named = {**self.at.pids(), "ingress": self.ingress.child.pid, "bench": os.getpid()}
        return CpuMeter(named | pids, trees=("postgres", *trees))

    async def ingress_alone(self) -> None:
        """The closed-loop burst with no worker: the yardstick for the end-to-end one."""
        c = self.args.burst_concurrency
        # Unmeasured first: the first requests pay for connections, the producer's metadata
        # and cold caches, which the end-to-end burst (it runs later) does not.
        progress(f"ingress alone: warm-up, then {self.args.burst:,} webhooks, {c} in flight ...")
        await _send(self.url, signed_now(max(1, self.args.burst // 10), SECRET), c=c)
        webhooks, meter = signed_now(self.args.burst, SECRET), self.meter()
        meter.start()
        log = await _send(self.url, webhooks, c=c)
        phase = log.phase(f"ingress alone c={c}", log.scheduled)
        phase.cpu_percent, phase.cpu_wait_percent = meter.stop(), meter.waited
        phase.concurrency, phase.workers = c, 0  # no worker, no rows
        self.result.phases.append(phase)
        self.result.ingress_alone_rps = phase.accepted_per_s
        progress(f"ingress alone: {phase.accepted_per_s:,.0f} webhooks accepted/s")

    async def with_worker(
        self, watcher: RowWatcher, worker: ChildProcess, processes: int, rate: float
    ) -> None:
        """Probe (waits for the worker), then with ``rate`` a paced warm-up and the paced
        run, then the burst."""
        suffix, began = f", {processes} workers" if processes > 1 else "", time.monotonic()
        probe = await self.sent(signed_now(1, SECRET), watcher, worker, timeout_s=_PROBE_TIMEOUT_S)
        if probe.refused or watcher.outstanding():
            raise RuntimeError(f"the probe webhook made no row in {_PROBE_TIMEOUT_S:g} s")
        if math.isnan(self.result.worker_ready_s):
            self.result.worker_ready_s = time.monotonic() - began
        progress(f"worker ready: first row {time.monotonic() - began:.1f} s after the webhook")
        if rate:
            await self.sent(
                signed_now(round(rate * self.args.warmup), SECRET), watcher, worker, rate
            )
        c, runs = self.args.burst_concurrency, []
        if rate:
            runs.append((f"paced {rate:,.0f}/s{suffix}", round(rate * self.args.duration), rate))
        if self.args.burst:
            runs.append((f"burst c={c}{suffix}", self.args.burst, 0.0))
        for name, count, paced_rate in runs:
            progress(f"{name}: {count:,} webhooks ...")
            webhooks, meter = signed_now(count, SECRET), self.meter("worker", worker=worker.pid)
            before = end_offsets(self.at.bootstrap, [BILLING_TOPIC])
            meter.start()
            log = await self.sent(webhooks, watcher, worker, paced_rate)
            rows = watcher.seen()["row"]
            phase = log.phase(name, log.scheduled, {"row": rows})
            phase.cpu_percent, phase.cpu_wait_percent = meter.stop(), meter.waited
            phase.workers, phase.target_rps = processes, paced_rate or None
            phase.concurrency = None if paced_rate else c
            if paced_rate:  # where the time goes, from the billing records' timestamps
                after = end_offsets(self.at.bootstrap, [BILLING_TOPIC])
                billed = written_at(self.at.bootstrap, BILLING_TOPIC, before, after, _payment_id)
                phase.stages["200 -> billing record"] = hop(log.acked, billed)
                phase.stages["billing record -> row"] = hop(billed, rows)
            self.result.phases.append(phase)
            e2e, lost = phase.latency["row"], phase.missing["row"]
            progress(
                f"{name}: {phase.done_per_s:.0f} rows/s, end to end p50 {e2e.p50_ms:.0f} ms, "
                f"p99 {e2e.p99_ms:.0f} ms, {lost} missing, {phase.errors} errors"
            )

    async def sent(
        self,
        webhooks: list[PaymentWebhook],
        watcher: RowWatcher,
        worker: ChildProcess,
        rate: float = 0,
        *,
        timeout_s: float = 0,
    ) -> Log:
        """Send, then wait for their rows: a minute plus what 250 rows/s (half the slowest
        pipeline seen) needs."""
        watcher.expect(w.payment_id for w in webhooks)
        log = await _send(self.url, webhooks, rate, self.args.burst_concurrency)
        await watcher.wait(worker, timeout_s or 60.0 + len(webhooks) / 250.0)
        return log


def _payment_id(record: Any) -> str | None:
    return record.get("paymentId") if isinstance(record.get("paymentId"), str) else None


def run_end_to_end(args: argparse.Namespace, at: Stack) -> EndToEnd:
    """Start the ingress; burst it alone; then per worker count start the worker(s) and
    run the phases. Blocks; bounded by time-outs."""
    with ingress_process(at, SECRET) as ingress:
        part = _Part1(args, at, ingress)
        asyncio.run(ingress.wait_ready())
        if args.burst:
            asyncio.run(part.ingress_alone())
        rate = args.rate if args.rate is not None else part.result.ingress_alone_rps / 2
        if not rate > 0:
            raise RuntimeError("no paced rate: the ingress accepted nothing in its burst")
        for index, processes in enumerate(args.workers):
            app_id = worker_app_id(at.run_id, processes)
            with worker_process(at, app_id, processes=processes) as worker:
                watcher = RowWatcher(at.postgres.url, _ROWS, ("row",))
                first_rate = rate if index == 0 else 0.0
                watcher.drive(
                    functools.partial(part.with_worker, watcher, worker, processes, first_rate)
                )
    return part.result


@dataclass
class Report:
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
        cpu = ratio_text(sluice_cpu, "x") + (
            f" (Quix: {ratio_text(quix_cpu, 'x')})" if not math.isnan(quix_cpu) else ""
        )
        goals = [
            goal(
                "normalise agent events/s / Quix Streams, same records",
                quix,
                "skipped: Quix Streams not installed" if skipped else ratio_text(quix),
                f">= {QUIX_RATIO_GOAL:g}",
                lambda r: r >= QUIX_RATIO_GOAL,
            ),
            goal(
                "normalise agent CPU per event / domain work alone",
                sluice_cpu,
                cpu,
                f"<= {CPU_RATIO_GOAL:g}x",
                lambda r: r <= CPU_RATIO_GOAL,
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
                else (f"{ratio:.2f} ({num(burst.done_per_s)} / {num(e2e.ingress_alone_rps)})")
            )
            workers = "1 worker" if processes == 1 else f"{processes} worker processes"
            measure = f"end-to-end rows/s / ingress-alone accepted/s, burst, {workers}"
            target = f">= {CAPACITY_RATIO_GOAL:g}"
            goals.append(goal(measure, ratio, measured, target, lambda r: r >= CAPACITY_RATIO_GOAL))
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

    def as_json(self) -> dict[str, Any]:
        summary = {
            "sluice_over_bare": self.ratio("bare"),
            "sluice_over_quix": self.ratio("quix"),
            "cpu_ratio_bare": self.cpu_ratio("bare"),
            "cpu_ratio_quix": self.cpu_ratio("quix"),
            "sluice_cpu_over_domain": self.domain_ratio("sluice"),
            "quix_cpu_over_domain": self.domain_ratio("quix"),
            "capacity_ratio": self.e2e.capacity_ratio(1) if self.e2e else None,
        }
        document = dataclasses.asdict(self) | {"summary": summary}
        document["dedupe"] = self.dedupe.as_json() if self.dedupe else None
        return document | {"goals": [g.as_json() for g in self.goals()]}


def _render_e2e(e2e: EndToEnd) -> list[str]:
    none = distribution([])
    columns: list[tuple[str, int, Any]] = [
        ("phase", -22, lambda p: p.name),
        ("sent", 7, lambda p: f"{p.sent:,}"),
        ("errors", 6, lambda p: str(p.errors)),
        ("200s/s", 7, lambda p: num(p.accepted_per_s)),
        ("rows/s", 7, lambda p: num(p.done_per_s)),
        ("http p99", 9, lambda p: ms(p.http[WEBHOOK].p99_ms)),
        ("e2e p50", 8, lambda p: ms(p.latency.get("row", none).p50_ms)),
        ("e2e p99", 8, lambda p: ms(p.latency.get("row", none).p99_ms)),
        ("e2e max", 8, lambda p: ms(p.latency.get("row", none).max_ms)),
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
    ran = [c for c in report.race if not (c.skipped or c.error)]
    lines = [
        "",
        f"agent throughput on one input: {report.race_events:,} raw webhooks on webhooks.stripe "
        f"({report.race_unique:,} unique, {report.race_events - report.race_unique:,} retries)",
        "(events/s = input events between a contender's first and last output; CPU = its "
        "process's CPU time per input event over that window)",
        *table(columns, ran),
    ]
    for c in report.race:
        if c.skipped or c.error:
            lines.append(f"{c.label:<32} skipped: {c.skipped or f'FAILED: {c.error}'}")
        elif c.rate is not None and c.rate.window_s < ROUGH_WINDOW_S:
            lines.append(
                f"  {c.name}: window under {ROUGH_WINDOW_S:g} s: the rate is rough; more "
                "--events measure it better"
            )
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description="Webhooks to Postgres rows end to end; the normalise agent against a "
        "bare loop and Quix Streams.",
    )
    add = parser.add_argument
    add("--rate", type=float, default=None, help="paced webhooks/s (half the burst's accepted/s)")
    add("--events", type=int, default=20_000, help="raw webhooks in the agent race (20000)")
    add(
        "--duplicate-every", type=int, default=10, help="every Nth race input a retry (10; 0: none)"
    )
    add("--workers", type=_worker_counts, default=(1,), help="worker process counts, e.g. 1,2 (1)")
    add("--skip-e2e", action="store_true", help="only the agent race")
    add("--skip-race", action="store_true", help="only the end-to-end part")
    dedupe.add_dedupe_arguments(parser, skippable=True)
    add_arguments(parser, duration=60.0, burst=10_000)
    return parser


def _worker_counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(part) for part in text.split(",") if part.strip().isdigit())
    if len(counts) != len(text.split(",")) or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"need distinct counts >= 1: {text!r}")
    return counts


def _measure(args: argparse.Namespace) -> Report:
    report = Report(machine=machine_info(), rate_given=args.rate is not None)
    with stack(args.workdir, "pipeline", fast_postgres=args.fast_postgres) as at:
        report.kafka, report.postgres = at.kafka.description, at.postgres.description
        try:
            report.e2e = None if args.skip_e2e else run_end_to_end(args, at)
            if not args.skip_race:
                progress(f"race: producing {args.events:,} raw webhooks to webhooks.stripe ...")
                given = prepare_race_input(at.bootstrap, args.events, args.duplicate_every)
                report.race_events, report.race_unique = given.events, given.unique
                report.race = [run_contender(name, given, at) for name in CONTENDERS]
                progress("race: measuring the domain work alone ...")
                report.domain_us_per_event = domain_cost_us(given)
            report.dedupe = dedupe.run_dedupe_memory(args, at) if args.dedupe_ids else None
        finally:
            groups = [f"bench-{name}-{at.run_id}" for name in CONTENDERS]
            groups += [worker_app_id(at.run_id, count) for count in args.workers]
            at.clean_up([*groups, dedupe.dedupe_app_id(at.run_id)])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if min(args.rate or 1.0, args.duration) <= 0 or args.warmup < 0 or args.burst < 0:
        parser.error("--rate and --duration must be positive; --warmup and --burst >= 0")
    if args.rate is None and not args.burst and not args.skip_e2e:
        parser.error("--burst 0 needs --rate: the paced rate is half the burst's")
    dedupe.check_arguments(parser, args, skippable=True)
    if (
        args.burst_concurrency < 1
        or args.events < 2
        or args.duplicate_every == 1
        or args.duplicate_every < 0
    ):
        parser.error("need --burst-concurrency >= 1, --events >= 2, --duplicate-every 0 or > 1")
    return run_bench(lambda: _measure(args), render, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
