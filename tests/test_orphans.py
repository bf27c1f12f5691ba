"""Servers stop with their owner: a SIGKILLed ``sluice dev`` leaves nothing running
(issue 10 §5.11).

A child process starts the embedded stack the way ``sluice dev`` does (from a worker
thread, which rules out a thread-bound parent-death signal) and reports the servers'
process groups; the test SIGKILLs it and waits, bounded, until no process of any of
those groups, nor any orphan guard, is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

_OWNER = textwrap.dedent(
    """
    import json, sys, threading
    from pathlib import Path
    from devstack import DEFAULT_SERVICES, EmbeddedStack
    from devstack.stack import STRIPE_SERVICE

    stack = EmbeddedStack(Path(sys.argv[1]), env={}, services=[*DEFAULT_SERVICES, STRIPE_SERVICE])
    thread = threading.Thread(target=stack.start)
    thread.start()
    thread.join()
    print(json.dumps({name: service.pid for name, service in stack.started.items()}), flush=True)
    threading.Event().wait()
    """
)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid``, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    state, _ppid, pgrp = stat[stat.rindex(b")") + 2 :].split()[:3]
    return state.decode(), int(pgrp)


def _live_members(groups: set[int]) -> list[int]:
    """Processes (zombies excluded: they are dead) in any of ``groups``."""
    live = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] in groups and stat[0] not in ("Z", "X"):
                live.append(int(entry))
    return live


def _guards_of(owner: int) -> list[int]:
    guards = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"orphan_guard.py") for arg in argv) and str(owner).encode() in argv:
            stat = _stat(int(entry))
            if stat is not None and stat[0] not in ("Z", "X"):
                guards.append(int(entry))
    return guards


def test_servers_stop_when_their_owner_is_sigkilled(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()  # blocks until every server is ready
        assert line, "the stack did not start"
        pids: dict[str, int] = json.loads(line)
        assert set(pids) == {
            "KAFKA_BOOTSTRAP_SERVERS",
            "DATABASE_URL",
            "REDIS_URL",
            "STRIPE_API_BASE",
        }
        groups = set(pids.values())  # each server leads its own process group
        assert all(pid in _live_members(groups) for pid in groups)
        assert len(_guards_of(owner.pid)) == len(groups)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()

    # Each server gets its clean-stop signal first (Kafka takes a few seconds to leave),
    # SIGKILL after its stop timeout; the wait is bounded by that and polled, not slept.
    deadline = time.monotonic() + 90
    while (left := _live_members(groups) + _guards_of(owner.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"still running after their owner died: {left}"
