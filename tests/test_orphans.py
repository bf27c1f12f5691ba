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
import uuid
from pathlib import Path

import pytest

from devstack import PostgresServer, free_port

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


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2 :].split()[1]) == parent:
            children.append(int(entry))
    return children


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def test_sluice_dev_sigkilled_leaves_neither_worker_nor_servers(
    tmp_path: Path, catalog_topics: str, postgres_server: PostgresServer
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_SECRET", "_TOKEN"))}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": catalog_topics,
        "DATABASE_URL": postgres_server.url,
        "REDIS_URL": "redis://127.0.0.1:1/0",  # given, so not started; nothing uses it
        "INGRESS_PUBLIC_PORT": str(free_port(0)),
        "INGRESS_INTERNAL_PORT": str(free_port(0)),
        "SLUICE_APP_ID": f"sluice-orphans-{uuid.uuid4().hex[:8]}",
    }
    dev = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sluice",
            "dev",
            "--data-dir",
            str(tmp_path),
            "--log-format",
            "json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert dev.stdout is not None
        for line in dev.stdout:  # bounded by the test's timeout
            if '"event": "dev.ready"' in line:
                break
        else:
            raise AssertionError("sluice dev ended before it was ready")
        # The worker, the local Stripe server and their orphan guards.
        started = _children_of(dev.pid)
        assert len(started) >= 4, started
    finally:
        dev.send_signal(signal.SIGKILL)
        dev.wait()

    deadline = time.monotonic() + 90
    while (left := [pid for pid in started if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"still running after sluice dev was SIGKILLed: {left}"
