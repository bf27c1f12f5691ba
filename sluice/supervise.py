"""``sluice worker --processes N``: N worker processes in one consumer group, supervised.

Each child is a plain ``sluice worker`` (one faust worker, the same app id, so the same
consumer group) with its own RocksDB directory ``<state_dir>/w<i>``. Kafka's consumer
group spreads the partitions over the children, and over the workers other machines run
with the same command; this module only starts, signals and reaps processes.

A child that exits on its own is a failure: the supervisor stops the other children
(SIGTERM, so they commit and leave the group) and exits 1, and the process manager
(systemd, Kubernetes, compose) restarts the unit. Restarting children here would be a
second restart policy, with its own backoff, hiding crash loops from the one that
operators watch. While the unit is down, the group moves its partitions to the workers
still running elsewhere.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

__all__ = ["STOP_GRACE_S", "child_state_dir", "run_worker_processes"]

log = logging.getLogger(__name__)

# A child still running this long after SIGTERM is SIGKILLed, so the supervisor always
# ends (the children's state is in Kafka's changelogs, a hard stop loses nothing).
STOP_GRACE_S = 60.0
# How often the supervisor looks at its children; exits are noticed within this.
POLL_S = 0.2


def child_state_dir(state_dir: Path, index: int) -> Path:
    """Child ``index``'s own RocksDB directory (two faust workers cannot share one)."""
    return state_dir / f"w{index}"


def run_worker_processes(
    count: int,
    state_dir: Path,
    *,
    metrics_port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``count`` worker processes until SIGTERM/SIGINT or until one exits on its own.

    :param metrics_port: ``SLUICE_WORKER_METRICS_PORT``; child ``i`` serves on this + ``i``.

    :returns: 0 when stopped by a signal and every child exited cleanly, else 1.
    """
    env = os.environ if env is None else env
    children: list[subprocess.Popen[bytes]] = []
    stop_requested: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        # The children may have had the signal already (Ctrl-C reaches the whole process
        # group); a second one is harmless, faust's worker stops once.
        stop_requested.append(signum)
        _signal_all(children, signum)

    previous = {signum: signal.signal(signum, forward) for signum in _STOP_SIGNALS}
    try:
        for index in range(count):
            if stop_requested:
                break
            child_dir = child_state_dir(state_dir, index)
            # faust creates its data directory but not the parents.
            child_dir.mkdir(parents=True, exist_ok=True)
            child_env = {**env, "SLUICE_STATE_DIR": str(child_dir)}
            if metrics_port is not None:
                child_env["SLUICE_WORKER_METRICS_PORT"] = str(metrics_port + index)
            children.append(
                subprocess.Popen([sys.executable, "-m", "sluice", "worker"], env=child_env)
            )
            log.info("worker process started", extra={"index": index, "pid": children[-1].pid})
        failed = _wait(children, stop_requested)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 1 if failed or any(child.returncode != 0 for child in children) else 0


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _wait(children: list[subprocess.Popen[bytes]], stop_requested: list[int]) -> bool:
    """Reap the children; True if one exited without being asked to."""
    failed = False
    stop_deadline: float | None = None
    while any(child.poll() is None for child in children):
        if not stop_requested and not failed:
            exited = [child for child in children if child.returncode is not None]
            if exited:
                failed = True
                for child in exited:
                    log.error(
                        "worker process exited unexpectedly; stopping the others",
                        extra={"pid": child.pid, "returncode": child.returncode},
                    )
                _signal_all(children, signal.SIGTERM)
        if (stop_requested or failed) and stop_deadline is None:
            stop_deadline = time.monotonic() + STOP_GRACE_S
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            log.error("worker processes did not stop in time; killing them")
            _signal_all(children, signal.SIGKILL)
            stop_deadline = float("inf")
        time.sleep(POLL_S)
    if not stop_requested and not failed:
        # Every child ended between two looks, none of them asked to.
        failed = True
        log.error("worker processes exited unexpectedly")
    return failed


def _signal_all(children: list[subprocess.Popen[bytes]], signum: int) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signum)
