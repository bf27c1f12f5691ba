"""Benchmark the whole pipeline, and the normalise agent against a bare loop and Quix.

    python -m bench.pipeline [--rate R] [--duration 60] [--warmup 3] [--burst 10000]
                             [--burst-concurrency 32] [--workers 1[,2]] [--events 20000]
                             [--duplicate-every 10] [--dedupe-ids 1000000]
                             [--first-sample 100000] [--skip-e2e] [--skip-race] [--json]
                             [--profile-dir DIR] [--fast-postgres] [--workdir DIR]

**Part 1, end to end.** ``sluice ingress`` alone first: a closed-loop burst of
``--burst`` signed Stripe ``payment_intent.succeeded`` webhooks (one fresh payment each)
with ``--burst-concurrency`` in flight and no worker running, what the front door
accepts on its own. Then ``sluice worker`` starts (its group committed past those
webhooks): webhooks POSTed at ``--rate`` (default: half the ingress-alone accepted/s)
for ``--duration`` seconds; end-to-end latency = when the ``payments`` row is first
visible minus when the HTTP 200 was read (p50/p99/max), the rows never seen (lost), the
sustained rows/s, and how the latency splits between the normalise agent (200 → billing
record) and the billing projection (billing record → row). Then the same burst end to
end: the most the pipeline sustains, over what the ingress alone accepted. ``--workers
1,2`` repeats the burst with ``sluice worker --processes 2`` (reported unavailable while
the worker has no such option).

**Part 2, agent throughput.** ``--events`` raw webhook records (every
``--duplicate-every``-th a provider retry) produced once to ``webhooks.stripe``; then,
one after the other, on that same input and broker: a bare confluent-kafka
consume → produce loop (the ceiling), Sluice's real ``normalise_webhooks`` agent, and the
same dedupe + normalisation written with Quix Streams. Each reports input events/s
between its first and last output, and its CPU time per event, also over the CPU of the
same domain work alone (no Kafka, no framework). Quix Streams is not a project
dependency: without it that comparison is skipped with an install hint.

**Part 3, dedupe memory** (``bench.dedupe_memory``; ``--dedupe-ids 0`` skips it): the
worker's RSS after ``--first-sample`` and after ``--dedupe-ids`` distinct ids.

Kafka and PostgreSQL are ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` when set (the
bench then writes to ``webhooks.stripe`` and the ``billing.*`` topics there: use a
throwaway cluster), else embedded servers in a temporary directory, stopped at the end.
Loopback only; every wait is bounded.

Goals (issue 9), each a ratio of things measured in this run, in a table at the end:
Sluice ≥ 1.0 x Quix Streams' events/s; Sluice's CPU per event ≤ 2 x the domain work's;
end-to-end burst rows/s ≥ 0.8 x the ingress-alone accepted/s; paced at half the
ingress-alone capacity, p99 ≤ 1 s and none lost; worker RSS flat from 100k to 1M dedupe
ids. They are reported, not enforced: the exit status is 1 only if webhooks were
refused, a contender failed or the dedupe part failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._goals import Goal, ratio_text, render_goals
from bench._pipeline_e2e import (
    POLL_EVERY_S,
    E2EOptions,
    EndToEnd,
    PhaseResult,
    new_run_id,
    run_end_to_end,
    worker_app_id,
)
from bench._pipeline_infra import (
    delete_groups,
    delete_topics,
    kafka,
    machine_info,
    postgres,
    progress,
    topics_containing,
)
from bench._pipeline_race import (
    CONTENDERS,
    ContenderResult,
    domain_cost_us,
    prepare_race_input,
    run_contender,
)
from bench._report import (
    NOISE_PERCENT,
    cpu_line,
    dist_line,
    ms,
    no_nan,
    noise_warning,
    num,
    temp_workdir,
    unwind_on_sigterm,
)
from bench.dedupe_memory import (
    DedupeMemory,
    add_arguments,
    check_arguments,
    dedupe_app_id,
)
from bench.dedupe_memory import render_part as render_dedupe
from bench.dedupe_memory import run_from_args as run_dedupe_from_args

__all__ = [
    "CAPACITY_RATIO_GOAL",
    "CPU_RATIO_GOAL",
    "P99_GOAL_MS",
    "QUIX_RATIO_GOAL",
    "Report",
    "main",
    "render",
]

# Issue 9's goals, each a ratio measured in one run (see bench._goals).
QUIX_RATIO_GOAL = 1.0
CPU_RATIO_GOAL = 2.0
CAPACITY_RATIO_GOAL = 0.8
P99_GOAL_MS = 1000.0
#: A contender measured over less than this many seconds gets a "rough" note.
ROUGH_WINDOW_S = 1.0


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
    dedupe: DedupeMemory | None = None
    rate_given: bool = False
    """The paced rate came from ``--rate``, not from the ingress-alone burst."""

    def contender(self, name: str) -> ContenderResult | None:
        return next((c for c in self.race if c.name == name), None)

    def ratio(self, name: str) -> float:
        """Sluice's events/s over ``name``'s (NaN if either is missing)."""
        sluice, other = self.contender("sluice"), self.contender(name)
        if sluice is None or other is None or not other.events_per_s > 0:
            return math.nan
        return sluice.events_per_s / other.events_per_s

    def cpu_ratio(self, name: str) -> float:
        """``name``'s CPU per event over Sluice's: the ratio with the machine's noise
        taken out (how much more work Sluice does per event, inverted)."""
        sluice, other = self.contender("sluice"), self.contender(name)
        if sluice is None or other is None or not sluice.cpu_us_per_event > 0:
            return math.nan
        return other.cpu_us_per_event / sluice.cpu_us_per_event

    def domain_ratio(self, name: str) -> float:
        """``name``'s CPU per event over the domain work's alone: what Kafka and the
        framework cost on top of Sluice's own code (NaN if either is missing)."""
        contender = self.contender(name)
        if contender is None or not self.domain_us_per_event > 0:
            return math.nan
        return contender.cpu_us_per_event / self.domain_us_per_event

    @property
    def paced(self) -> PhaseResult | None:
        return self.e2e.paced if self.e2e is not None else None

    def noisy_runs(self) -> list[str]:
        """Phases and contenders during which the machine was busy with other work."""
        runs: list[tuple[str, dict[str, float]]] = [
            (p.name, p.cpu_percent) for p in (self.e2e.phases if self.e2e else [])
        ]
        runs += [(c.name, c.cpu_percent) for c in self.race]
        return [name for name, percent in runs if percent.get("other", 0.0) >= NOISE_PERCENT]

    @property
    def failed(self) -> bool:
        refused = any(p.errors for p in self.e2e.phases) if self.e2e else False
        dedupe_failed = self.dedupe is not None and self.dedupe.error is not None
        return refused or dedupe_failed or any(c.error for c in self.race)

    def goals(self) -> list[Goal]:
        """Issue 9's rows this bench measures (the orders row is ``bench.orders``')."""
        goals = [self._quix_goal(), self._cpu_goal(), *self._capacity_goals()]
        goals.append(self._paced_goal())
        if self.dedupe is not None:
            goals.append(self.dedupe.goal())
        return goals

    def _quix_goal(self) -> Goal:
        ratio = self.ratio("quix")
        measured = ratio_text(ratio)
        if math.isnan(ratio) and self.contender("quix") is not None:
            quix = self.contender("quix")
            measured = "skipped: Quix Streams not installed" if quix and quix.skipped else "-"
        return Goal(
            "normalise agent events/s / Quix Streams, same records",
            measured,
            f">= {QUIX_RATIO_GOAL:g}",
            None if math.isnan(ratio) else ratio >= QUIX_RATIO_GOAL,
        )

    def _cpu_goal(self) -> Goal:
        ratio, quix = self.domain_ratio("sluice"), self.domain_ratio("quix")
        measured = ratio_text(ratio, "x")
        if not math.isnan(quix):
            measured += f" (Quix: {ratio_text(quix, 'x')})"
        return Goal(
            "normalise agent CPU per event / domain work alone",
            measured,
            f"<= {CPU_RATIO_GOAL:g}x",
            None if math.isnan(ratio) else ratio <= CPU_RATIO_GOAL,
        )

    def _capacity_goals(self) -> list[Goal]:
        e2e = self.e2e or EndToEnd()
        counts = sorted({*e2e.burst_workers(), *e2e.unavailable}) or [1]
        goals = []
        for processes in counts:
            workers = "1 worker" if processes == 1 else f"{processes} worker processes"
            measure = f"end-to-end rows/s / ingress-alone accepted/s, burst, {workers}"
            ratio, burst = e2e.capacity_ratio(processes), e2e.burst(processes)
            if processes in e2e.unavailable:
                measured = f"unavailable: {e2e.unavailable[processes]}"
            elif burst is None or math.isnan(ratio):
                measured = "-"
            else:
                measured = f"{ratio:.2f} ({num(burst.rows_per_s)} / {num(e2e.ingress_alone_rps)})"
            met = None if math.isnan(ratio) else ratio >= CAPACITY_RATIO_GOAL
            goals.append(Goal(measure, measured, f">= {CAPACITY_RATIO_GOAL:g}", met))
        return goals

    def _paced_goal(self) -> Goal:
        paced = self.paced
        goal = f"p99 <= {P99_GOAL_MS / 1000:g} s, 0 lost"
        if paced is None or paced.target_rps is None:
            return Goal("end to end paced at half the ingress-alone capacity", "-", goal, None)
        source = "--rate" if self.rate_given else "half the ingress-alone capacity"
        seconds = paced.sent / paced.target_rps
        measured = f"p50 {ms(paced.e2e.p50_ms)}, p99 {ms(paced.e2e.p99_ms)}, {paced.missing} lost"
        met = paced.e2e.p99_ms <= P99_GOAL_MS and not paced.missing
        return Goal(
            f"end to end paced at {paced.target_rps:,.0f}/s ({source}) for {seconds:.0f} s, "
            "200 -> row",
            measured,
            goal,
            met,
        )

    def as_json(self) -> dict[str, Any]:
        paced = self.paced
        document = {
            "machine": self.machine,
            "kafka": self.kafka,
            "postgres": self.postgres,
            "end_to_end": dataclasses.asdict(self.e2e) if self.e2e else None,
            "dedupe_memory": self.dedupe.as_json() if self.dedupe else None,
            "race": {
                "events": self.race_events,
                "unique": self.race_unique,
                "domain_us_per_event": self.domain_us_per_event,
                "contenders": [dataclasses.asdict(c) for c in self.race],
            },
            "summary": {
                "sluice_over_bare": self.ratio("bare"),
                "sluice_over_quix": self.ratio("quix"),
                "cpu_ratio_bare": self.cpu_ratio("bare"),
                "cpu_ratio_quix": self.cpu_ratio("quix"),
                "sluice_cpu_over_domain": self.domain_ratio("sluice"),
                "quix_cpu_over_domain": self.domain_ratio("quix"),
                "ingress_alone_rps": self.e2e.ingress_alone_rps if self.e2e else None,
                "capacity_ratio": self.e2e.capacity_ratio(1) if self.e2e else None,
                "paced_rps": paced.target_rps if paced else None,
                "paced_p50_ms": paced.e2e.p50_ms if paced else None,
                "paced_p99_ms": paced.e2e.p99_ms if paced else None,
                "paced_lost": paced.missing if paced else None,
            },
            "goals": [goal.as_json() for goal in self.goals()],
        }
        cleaned: dict[str, Any] = no_nan(document)
        return cleaned


# -- rendering ------------------------------------------------------------------------------


def _render_machine(report: Report) -> list[str]:
    m = report.machine
    return [
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']}, {m['os']}, "
        f"Python {m['python']}",
        f"clients: librdkafka {m['librdkafka']} (confluent-kafka {m['confluent-kafka']}), "
        f"faust-streaming {m['faust-streaming']} (aiokafka {m['aiokafka']}), "
        f"quixstreams {m['quixstreams']}, rocksdict {m['rocksdict']}",
        f"kafka: {report.kafka}",
        f"postgres: {report.postgres}",
    ]


def _render_e2e(e2e: EndToEnd) -> list[str]:
    lines = [
        "",
        "end to end: signed Stripe webhooks -> sluice ingress -> Kafka -> sluice worker "
        "-> Postgres row",
        f"(latency = row first visible - HTTP 200 read; rows polled every "
        f"{POLL_EVERY_S * 1000:.0f} ms; worker's first row {e2e.worker_ready_s:.1f} s after "
        "start-up; the ingress-alone burst ran before any worker)",
        f"{'phase':<22} {'sent':>7} {'errors':>6} {'200s/s':>7} {'rows/s':>7} "
        f"{'http p99':>9} {'e2e p50':>8} {'e2e p99':>8} {'e2e max':>8} {'drain':>7} "
        f"{'missing':>7}",
    ]
    for phase in e2e.phases:
        lines.append(
            f"{phase.name:<22} {phase.sent:>7,} {phase.errors:>6} "
            f"{num(phase.ingress_rps):>7} {num(phase.rows_per_s):>7} "
            f"{ms(phase.http.p99_ms):>9} {ms(phase.e2e.p50_ms):>8} "
            f"{ms(phase.e2e.p99_ms):>8} {ms(phase.e2e.max_ms):>8} "
            f"{num(phase.drain_s, 1) + ' s':>7} {phase.missing:>7}"
        )
    for phase in e2e.phases:
        for stage, distribution in phase.stages.items():
            lines.append(f"  {phase.name}, {stage}: {dist_line(distribution)}")
        if phase.cpu_percent:
            lines.append(f"  {phase.name}, CPU (% of one core): {cpu_line(phase.cpu_percent)}")
        if phase.cpu_wait_percent:
            lines.append(
                f"  {phase.name}, runnable but waiting for a CPU: "
                f"{cpu_line(phase.cpu_wait_percent)}"
            )
    for processes, why in e2e.unavailable.items():
        lines.append(f"  {processes} worker processes: unavailable ({why})")
    return lines


def _render_race(report: Report) -> list[str]:
    lines = [
        "",
        f"agent throughput on one input: {report.race_events:,} raw webhooks on "
        f"webhooks.stripe ({report.race_unique:,} unique, "
        f"{report.race_events - report.race_unique:,} provider retries)",
        "(events/s = input events between a contender's first and last output; CPU = its "
        "process's CPU time per input event over that window)",
        f"{'contender':<32} {'events/s':>9} {'window':>7} {'start-up':>8} "
        f"{'CPU us/event':>12} {'Sluice/it':>9}  CPU (% of one core)",
    ]
    for result in report.race:
        if result.skipped or result.error:
            reason = result.skipped or f"FAILED: {result.error}"
            lines.append(f"{result.label:<32} skipped: {reason}")
            continue
        window = result.rate.window_s if result.rate else math.nan
        ratio = report.ratio(result.name) if result.name != "sluice" else math.nan
        lines.append(
            f"{result.label:<32} {num(result.events_per_s):>9} "
            f"{num(window, 2) + ' s':>7} {num(result.startup_s, 1) + ' s':>8} "
            f"{num(result.cpu_us_per_event):>12} {num(ratio, 2):>9}  "
            f"{cpu_line(result.cpu_percent)}"
        )
        if window < ROUGH_WINDOW_S:
            lines.append(
                f"{'':<32} (window under {ROUGH_WINDOW_S:g} s: the rate is rough; more "
                "--events measure it better)"
            )
        waited = result.cpu_wait_percent.get("contender")
        if waited is not None:
            lines.append(f"{'':<32} (contender runnable but waiting for a CPU: {waited:.0f}%)")
    lines.append(
        f"domain work alone (decode, dedupe, normalise, encode; no Kafka, no framework): "
        f"{num(report.domain_us_per_event)} us CPU per event"
    )
    over_domain = [
        f"{result.name} {ratio_text(report.domain_ratio(result.name), 'x')}"
        for result in report.race
        if not math.isnan(report.domain_ratio(result.name))
    ]
    if over_domain:
        lines.append(f"CPU per event / domain work alone: {', '.join(over_domain)}")
    return lines


def render(report: Report) -> str:
    lines = ["Sluice pipeline bench", *_render_machine(report)]
    if report.e2e is not None:
        lines += _render_e2e(report.e2e)
    if report.race:
        lines += _render_race(report)
    if report.dedupe is not None:
        lines += render_dedupe(report.dedupe)
    lines += render_goals(report.goals())
    lines += noise_warning(report.noisy_runs())
    return "\n".join(lines)


# -- the run --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description="Webhooks to Postgres rows end to end; the normalise agent against a "
        "bare loop and Quix Streams.",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="paced webhooks/s (default: half the ingress-alone burst's accepted/s)",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="paced seconds (60)")
    parser.add_argument("--warmup", type=float, default=3.0, help="paced warm-up seconds (3)")
    parser.add_argument(
        "--burst",
        type=int,
        default=10_000,
        help="webhooks in the closed-loop burst (10000; 0: none)",
    )
    parser.add_argument(
        "--burst-concurrency", type=int, default=32, help="requests in flight in the burst (32)"
    )
    parser.add_argument(
        "--events", type=int, default=20_000, help="raw webhooks in the agent race (20000)"
    )
    parser.add_argument(
        "--duplicate-every",
        type=int,
        default=10,
        help="every Nth race input is a retry of an earlier webhook (10; 0: none)",
    )
    parser.add_argument(
        "--workers",
        type=_worker_counts,
        default=(1,),
        help="worker process counts for the end-to-end part, e.g. 1,2 (1); the first runs "
        "every phase, each further one its burst (`sluice worker --processes K`)",
    )
    add_arguments(parser, skippable=True)
    parser.add_argument("--skip-e2e", action="store_true", help="only the agent race")
    parser.add_argument("--skip-race", action="store_true", help="only the end-to-end part")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--profile-dir", type=Path, default=None, help="cProfile each contender into DIR"
    )
    parser.add_argument(
        "--fast-postgres",
        action="store_true",
        help="embedded PostgreSQL without fsync (separates disk latency from the pipeline)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep data and logs (ingress, worker, agents, servers) in this new directory",
    )
    return parser


def _worker_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"need distinct counts >= 1: {text!r}")
    return counts


def _measure(args: argparse.Namespace) -> Report:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or None
    database_url = os.environ.get("DATABASE_URL", "").strip() or None
    run_id = new_run_id()
    report = Report(machine=machine_info(), rate_given=args.rate is not None)
    with (
        temp_workdir(args.workdir, "sluice-bench-pipeline-") as tmp,
        kafka(bootstrap, Path(tmp)) as broker,
        postgres(database_url, Path(tmp), fast=args.fast_postgres) as database,
    ):
        report.kafka, report.postgres = broker.description, database.description
        pids = {"kafka": broker.pid, "postgres": database.pid}
        try:
            if not args.skip_e2e:
                options = E2EOptions(
                    rate=args.rate,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    burst=args.burst,
                    burst_concurrency=args.burst_concurrency,
                    workers=args.workers,
                )
                report.e2e = run_end_to_end(
                    options,
                    bootstrap=broker.bootstrap,
                    database_url=database.url,
                    run_id=run_id,
                    workdir=Path(tmp),
                    pids=pids,
                )
            if not args.skip_race:
                _race(args, report, broker.bootstrap, database.url, run_id, Path(tmp), broker.pid)
            if args.dedupe_ids:
                report.dedupe = run_dedupe_from_args(
                    args, broker.bootstrap, database.url, run_id, Path(tmp)
                )
        finally:
            if not broker.embedded:  # an embedded broker goes away with its directory
                _clean_up(broker.bootstrap, run_id, args.workers)
    return report


def _race(
    args: argparse.Namespace,
    report: Report,
    bootstrap: str,
    database_url: str,
    run_id: str,
    workdir: Path,
    kafka_pid: int | None,
) -> None:
    progress(f"race: producing {args.events:,} raw webhooks to webhooks.stripe ...")
    race = prepare_race_input(bootstrap, args.events, args.duplicate_every)
    report.race_events, report.race_unique = race.events, race.unique
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    for name in CONTENDERS:
        report.race.append(
            run_contender(
                name,
                race,
                bootstrap=bootstrap,
                database_url=database_url,
                run_id=run_id,
                workdir=workdir,
                kafka_pid=kafka_pid,
                profile_dir=args.profile_dir,
            )
        )
        skipped = report.race[-1].skipped
        if skipped:
            progress(skipped)
    progress("race: measuring the domain work alone ...")
    report.domain_us_per_event = domain_cost_us(race)


def _clean_up(bootstrap: str, run_id: str, workers: Sequence[int]) -> None:
    """Remove this run's own topics and groups from an external cluster (the input it
    wrote to webhooks.stripe and billing.* stays: those are catalog topics)."""
    delete_topics(bootstrap, topics_containing(bootstrap, run_id))
    groups = [f"bench-{name}-{run_id}" for name in CONTENDERS]
    groups += [worker_app_id(run_id, count) for count in workers]
    delete_groups(bootstrap, [*groups, dedupe_app_id(run_id)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    rate = 1.0 if args.rate is None else args.rate
    if min(rate, args.duration) <= 0 or args.warmup < 0 or args.burst < 0:
        parser.error("--rate and --duration must be positive; --warmup and --burst >= 0")
    if args.rate is None and not args.burst and not args.skip_e2e:
        parser.error("--burst 0 needs --rate: the paced rate is half the burst's")
    check_arguments(parser, args, skippable=True)
    if (
        args.burst_concurrency < 1
        or args.events < 2
        or args.duplicate_every == 1
        or args.duplicate_every < 0
    ):
        parser.error("need --burst-concurrency >= 1, --events >= 2, --duplicate-every 0 or > 1")
    # SIGTERM unwinds like Ctrl-C, so every child process and embedded server is stopped.
    unwind_on_sigterm()
    try:
        report = _measure(args)
    except KeyboardInterrupt:
        progress("interrupted; child processes and embedded servers were stopped")
        return 130
    print(json.dumps(report.as_json(), indent=2) if args.json else render(report))
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
