"""Benchmark the ingress against a no-op route on the same server, in one run.

    python -m bench.ingress [--duration S] [--warmup S] [--settle S] [--concurrency 1,4,16,64]
                            [--paced-duration S] [--bootstrap HOST:PORT] [--json]
                            [--profile-server FILE]

Signed Stripe webhooks go to ``POST /v1/webhooks/stripe`` (verify, encode, publish with
``acks=all`` and wait for Kafka) and, from the same load generator, to ``POST
/bench/noop`` on the same aiohttp server (same middleware; reads the body, answers 200).
For each concurrency level, a closed loop runs against each route in turn; then both are
paced (open loop) at half the ingress's peak rate. Prints requests/s, p50/p99 latency,
errors, the ratio, CPU use of each process, and the machine.

Without ``--bootstrap`` or ``KAFKA_BOOTSTRAP_SERVERS``, an embedded Kafka broker is
started in a temporary directory and stopped at the end. The server runs in a child
process (``bench._server``), so the load generator never shares its event loop or GIL;
on a 2-core machine the server, the generator and Kafka still share the cores. Every
run is bounded by the durations given, and only loopback addresses are used.

Goals (issue acceptance): ingress/baseline peak ratio >= 0.5; p99 <= 50 ms at half the
ingress's peak rate. Exit status 1 if any request failed, else 0 (goals are reported,
not enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import confluent_kafka

from bench._load import (
    CpuMeter,
    PhaseResult,
    closed_loop,
    gc_frozen,
    paced,
    prepare_stripe_requests,
)
from bench._report import no_nan, unwind_on_sigterm
from bench._server import BASELINE_PATH, INGRESS_PATH

__all__ = ["Report", "machine_info", "main", "parse_levels", "render", "server_cost_us"]

SECRET = "whsec_bench_only"
RATIO_GOAL = 0.5
P99_GOAL_MS = 50.0

_ROOT = Path(__file__).resolve().parent.parent
_SERVER_START_TIMEOUT_S = 60.0
_SERVER_STOP_TIMEOUT_S = 30.0
_INITIAL_RATE_HINT = 2000.0
_POOL_HEADROOM = 2.5
_MAX_POOL = 200_000
_SETTLE_CONCURRENCY = 16
_CLIENT_BOUND_PERCENT = 90.0


@dataclass
class Report:
    machine: dict[str, str]
    duration_s: float
    warmup_s: float
    closed: list[PhaseResult] = field(default_factory=list)
    paced: list[PhaseResult] = field(default_factory=list)

    def best(self, target: str) -> PhaseResult | None:
        runs = [r for r in self.closed if r.target == target]
        return max(runs, key=lambda r: r.rps) if runs else None

    @property
    def ratio(self) -> float:
        ingress, baseline = self.best("ingress"), self.best("baseline")
        if ingress is None or baseline is None or baseline.rps == 0:
            return math.nan
        return ingress.rps / baseline.rps

    @property
    def paced_ingress(self) -> PhaseResult | None:
        return next((r for r in self.paced if r.target == "ingress"), None)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in (*self.closed, *self.paced))

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready data; NaN (a run with no answers) becomes null."""
        ingress, baseline = self.best("ingress"), self.best("baseline")
        paced_ingress = self.paced_ingress
        document = {
            "machine": self.machine,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "closed": [dataclasses.asdict(r) for r in self.closed],
            "paced": [dataclasses.asdict(r) for r in self.paced],
            "summary": {
                "ratio": self.ratio,
                "ratio_goal": RATIO_GOAL,
                "ingress_peak_rps": ingress.rps if ingress else None,
                "baseline_peak_rps": baseline.rps if baseline else None,
                "ingress_server_us_per_request": server_cost_us(ingress) if ingress else None,
                "baseline_server_us_per_request": server_cost_us(baseline) if baseline else None,
                "paced_rps": paced_ingress.target_rps if paced_ingress else None,
                "paced_p99_ms": paced_ingress.p99_ms if paced_ingress else None,
                "p99_goal_ms": P99_GOAL_MS,
                "errors": self.errors,
            },
        }
        cleaned: dict[str, Any] = no_nan(document)
        return cleaned


# -- machine ---------------------------------------------------------------------------


def machine_info(kafka: str) -> dict[str, str]:
    """What the numbers were measured on."""
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": _cpu_model(),
        "memory": _memory(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka": kafka,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                return value.strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def _java_version() -> str:
    from devstack.kafka import find_java

    try:
        out = subprocess.run(
            [find_java(), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = (out.stderr or out.stdout).splitlines()[:1]
    parts = first[0].split('"') if first else []
    return parts[1] if len(parts) > 1 else "unknown"


# -- Kafka and the server process -------------------------------------------------------


@dataclass(frozen=True)
class _Kafka:
    bootstrap: str
    description: str
    pid: int | None


@contextlib.contextmanager
def _kafka(bootstrap: str | None, workdir: Path) -> Iterator[_Kafka]:
    """The given cluster, or an embedded broker for the duration of the block."""
    from connectors.kafka_admin import create_topics
    from devstack.kafka import KAFKA_VERSION, KafkaBroker
    from schemas.catalog import all_topics

    if bootstrap:
        create_topics(bootstrap, all_topics())
        yield _Kafka(bootstrap, f"external cluster at {bootstrap}", None)
        return
    _progress("starting an embedded Kafka broker ...")
    with KafkaBroker(workdir / "kafka") as broker:
        create_topics(broker.bootstrap_servers, all_topics())
        description = (
            f"Apache Kafka {KAFKA_VERSION} (embedded, KRaft, 1 broker, "
            f"Java {_java_version()}, heap {broker.heap})"
        )
        yield _Kafka(broker.bootstrap_servers, description, broker.pid)
        _progress("stopping Kafka ...")


@dataclass(frozen=True)
class _Server:
    url: str
    pid: int


@contextlib.contextmanager
def _server(bootstrap: str, workdir: Path, profile: Path | None) -> Iterator[_Server]:
    """``bench._server`` in a child process; stopped (stdin closed) at the end."""
    log_path = workdir / "server.log"
    argv = [sys.executable, "-m", "bench._server", "--bootstrap", bootstrap, "--secret", SECRET]
    if profile is not None:
        argv += ["--profile", str(profile)]
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=_ROOT
        )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        ready, _, _ = select.select([child.stdout], [], [], _SERVER_START_TIMEOUT_S)
        line = child.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"bench server did not start; see {log_path}:\n{_tail(log_path)}")
        announced = json.loads(line)
        yield _Server(url=str(announced["url"]), pid=int(announced["pid"]))
    finally:
        child.stdin.close()  # the server's signal to stop
        try:
            child.wait(_SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# -- the run ----------------------------------------------------------------------------


def parse_levels(text: str) -> list[int]:
    """``"1,4,16,64"`` -> ``[1, 4, 16, 64]``; each level a positive integer."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1: {text!r}")
    return levels


def _pool_size(rate_hint: float, seconds: float, concurrency: int = 0) -> int:
    return min(_MAX_POOL, math.ceil(rate_hint * _POOL_HEADROOM * seconds) + concurrency)


async def _run(
    report: Report,
    server: _Server,
    kafka_pid: int | None,
    levels: Sequence[int],
    paced_duration_s: float,
    settle_s: float,
) -> None:
    urls = {"ingress": server.url + INGRESS_PATH, "baseline": server.url + BASELINE_PATH}
    pids = {"server": server.pid, "kafka": kafka_pid, "loadgen": os.getpid()}
    hints = dict.fromkeys(urls, _INITIAL_RATE_HINT)
    seconds = report.warmup_s + report.duration_s
    if settle_s > 0:
        # A fresh JVM compiles its hot paths during the first seconds under load (Kafka's
        # CPU per record halves); let that happen before anything is measured.
        requests = prepare_stripe_requests(_pool_size(_INITIAL_RATE_HINT, settle_s), SECRET)
        _progress(
            f"settling: {settle_s:g} s of ingress load at c={_SETTLE_CONCURRENCY}, not recorded"
        )
        settled = await closed_loop(
            "settle",
            urls["ingress"],
            requests,
            concurrency=_SETTLE_CONCURRENCY,
            warmup_s=0,
            duration_s=settle_s,
        )
        del requests
        if settled.errors:
            _progress(f"  {settled.errors} requests failed while settling (not counted)")
    for concurrency in levels:
        for target, url in urls.items():
            requests = prepare_stripe_requests(
                _pool_size(hints[target], seconds, concurrency), SECRET
            )
            _progress(f"closed loop  c={concurrency:<4} {target:<8} ({len(requests)} requests)")
            with gc_frozen():
                result = await closed_loop(
                    target,
                    url,
                    requests,
                    concurrency=concurrency,
                    warmup_s=report.warmup_s,
                    duration_s=report.duration_s,
                    cpu=CpuMeter(pids),
                )
            del requests
            report.closed.append(result)
            hints[target] = max(hints[target], result.rps)
            _progress(f"  {_brief(result)}")

    peak = report.best("ingress")
    if peak is None or peak.rps <= 0:
        return
    rate = peak.rps / 2
    warmup = max(report.warmup_s, 2.0)  # opens the connections a paced run needs
    for target, url in urls.items():
        requests = prepare_stripe_requests(math.ceil(rate * (warmup + paced_duration_s)), SECRET)
        _progress(f"paced        {rate:.0f} req/s {target:<8} ({len(requests)} requests)")
        with gc_frozen():
            result = await paced(
                target,
                url,
                requests,
                rate=rate,
                warmup_s=warmup,
                duration_s=paced_duration_s,
                cpu=CpuMeter(pids),
            )
        del requests
        report.paced.append(result)
        _progress(f"  {_brief(result)}")


def _brief(r: PhaseResult) -> str:
    return (
        f"{r.rps:,.0f} req/s  p50 {r.p50_ms:.1f} ms  p99 {r.p99_ms:.1f} ms  errors {r.errors}  "
        f"cpu {_cpu(r)}"
    )


def _cpu(r: PhaseResult) -> str:
    return " ".join(f"{name} {pct:.0f}%" for name, pct in r.cpu_percent.items())


# -- output -----------------------------------------------------------------------------


def render(report: Report) -> str:
    """The human-readable report: closed-loop table, paced results, machine, summary."""
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
    by_level: dict[int, dict[str, PhaseResult]] = {}
    for r in report.closed:
        by_level.setdefault(r.concurrency or 0, {})[r.target] = r
    for level, runs in by_level.items():
        ing, base = runs.get("ingress"), runs.get("baseline")
        ratio = ing.rps / base.rps if ing and base and base.rps else math.nan
        lines.append(
            f"{level:>5} | {_cells(ing, 11)} | {_cells(base, 12)} | {ratio:>5.2f} "
            f"| {_cpu_cell(ing):>12} | {_cpu_cell(base):>13}"
        )
    if report.paced:
        rate = report.paced[0].target_rps or 0.0
        lines += [
            "",
            f"paced (open loop) at {rate:,.0f} req/s = half the ingress peak, "
            f"{report.paced[0].duration_s:g} s; latency from each request's scheduled send time",
        ]
        for r in report.paced:
            lines.append(
                f"  {r.target:<8} {r.rps:>7,.0f} req/s  p50 {r.p50_ms:6.1f} ms  "
                f"p99 {r.p99_ms:6.1f} ms  max {r.max_ms:6.1f} ms  errors {r.errors}  "
                f"cpu% {_cpu_cell(r)}"
            )
    m = report.machine
    lines += [
        "",
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']}, {m['os']}; "
        f"Python {m['python']}, aiohttp {m['aiohttp']}, librdkafka {m['librdkafka']}; "
        f"{m['kafka']}",
        _summary(report),
    ]
    return "\n".join(lines)


def _cells(r: PhaseResult | None, width: int) -> str:
    if r is None:
        return f"{'-':>{width}} {'-':>7} {'-':>7} {'-':>4}"
    return f"{r.rps:>{width},.0f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {r.errors:>4}"


def _cpu_cell(r: PhaseResult | None) -> str:
    if r is None:
        return "-"
    order = ("server", "kafka", "loadgen", "other")
    return "/".join(f"{r.cpu_percent[name]:.0f}" for name in order if name in r.cpu_percent)


def _summary(report: Report) -> str:
    ingress, baseline = report.best("ingress"), report.best("baseline")
    if ingress is None or baseline is None:
        return "summary: no results"
    ratio = report.ratio
    parts = [
        f"summary: peak ingress {ingress.rps:,.0f} req/s (c={ingress.concurrency}) vs baseline "
        f"{baseline.rps:,.0f} req/s (c={baseline.concurrency}): ratio {ratio:.2f} "
        f"(goal >= {RATIO_GOAL}: {_verdict(ratio >= RATIO_GOAL)})"
    ]
    paced_ingress = report.paced_ingress
    if paced_ingress is not None:
        parts.append(
            f"p99 at {paced_ingress.target_rps or 0:,.0f} req/s {paced_ingress.p99_ms:.1f} ms "
            f"(goal <= {P99_GOAL_MS:g} ms: {_verdict(paced_ingress.p99_ms <= P99_GOAL_MS)})"
        )
    parts.append(f"errors {report.errors}")
    lines = ["; ".join(parts)]
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
    noisy = [r for r in (*report.closed, *report.paced) if r.cpu_percent.get("other", 0.0) >= 25]
    if noisy:
        lines.append(
            f"warning: {len(noisy)} run(s) shared the machine with other work (>= 25% of a core "
            "outside the bench); rerun on a quiet machine before quoting the numbers"
        )
    return "\n".join(lines)


def server_cost_us(result: PhaseResult) -> float | None:
    """The server process's CPU time per answered request, in microseconds."""
    server = result.cpu_percent.get("server")
    if server is None or result.rps <= 0:
        return None
    return server / 100 / result.rps * 1e6


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _progress(message: str, stream: TextIO = sys.stderr) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=stream, flush=True)


# -- entry point ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingress",
        description="Ingress vs a no-op route on the same server: req/s, p50/p99, ratio.",
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds measured per closed-loop run (5)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds before each measurement (1)"
    )
    parser.add_argument(
        "--concurrency",
        type=parse_levels,
        default=parse_levels("1,4,16,64"),
        help="closed-loop concurrency levels (1,4,16,64)",
    )
    parser.add_argument(
        "--paced-duration",
        type=float,
        default=10.0,
        help="seconds measured in the paced runs at half the peak (10)",
    )
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="Kafka to use (default: $KAFKA_BOOTSTRAP_SERVERS, else an embedded broker)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=8.0,
        help="seconds of unrecorded ingress load first, to warm up Kafka's JIT (8)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--profile-server", type=Path, default=None, help="cProfile the server into this file"
    )
    return parser


def _measure(args: argparse.Namespace, bootstrap: str | None) -> Report:
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp,
        _kafka(bootstrap, Path(tmp)) as kafka,
    ):
        report = Report(
            machine=machine_info(kafka.description),
            duration_s=args.duration,
            warmup_s=args.warmup,
        )
        _progress(f"starting the bench server (Kafka at {kafka.bootstrap}) ...")
        with _server(kafka.bootstrap, Path(tmp), args.profile_server) as server:
            _progress(f"server pid {server.pid} at {server.url}")
            asyncio.run(
                _run(
                    report,
                    server,
                    kafka.pid,
                    args.concurrency,
                    args.paced_duration,
                    args.settle,
                )
            )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    unwind_on_sigterm()  # the server and the embedded broker are stopped on the way out
    if args.duration <= 0 or args.paced_duration <= 0 or min(args.warmup, args.settle) < 0:
        _parser().error("durations must be positive (warm-up and settle may be 0)")
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or None
    try:
        report = _measure(args, bootstrap)
    except KeyboardInterrupt:
        _progress("interrupted; the server and Kafka were stopped")
        return 130
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(render(report))
    if args.profile_server is not None:
        _progress(f"server profile written to {args.profile_server}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
