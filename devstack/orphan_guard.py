"""A watchdog that stops a server when the process that started it dies without stopping it.

``sluice dev`` (or a test session) runs each embedded server in its own session, so
Ctrl-C does not reach the servers directly and they can be stopped in order. The price:
when the owner itself dies abruptly (SIGKILL, a closed terminal, an OOM kill), nothing
stops them, and Kafka, PostgreSQL, Elasticsearch and the rest keep running, orphaned.

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) is not enough here: it fires
when the *thread* that forked the child ends, and ``sluice dev`` starts its servers from
a worker thread (``asyncio.to_thread``); it also reaches only the direct child, not the
helpers a server forks. So each server gets one of these: a tiny process (standard
library only, started with ``python -I -S``, about 11 MiB) that polls its own parent. When
its parent is gone (the guard has been re-parented), it sends the server's process group
the server's clean-stop signal, waits up to a grace period, then SIGKILLs the group. It
exits by itself as soon as the server's group is gone, and its owner kills it when it
stops the server normally.

Run as: ``python -I -S orphan_guard.py OWNER_PID TARGET SIGNAL GRACE_S`` where TARGET is
``-PGID`` (a whole process group) or ``PID`` (one process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.25


def _alive(target: int) -> bool:
    """Whether any process of the group (target < 0) or the process is left, zombies
    excluded (a zombie is dead; it only waits for its new parent to reap it)."""
    if target > 0:
        return _running(target)
    pgid = -target
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_running(pid) for pid in _group_members(pgid)) if os.path.isdir("/proc") else True


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not os.path.isdir("/proc")
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            members.append(int(entry))
    return members


def _signal(target: int, signum: int) -> None:
    try:
        if target < 0:
            os.killpg(-target, signum)
        else:
            os.kill(target, signum)
    except (ProcessLookupError, PermissionError):
        pass


def guard(owner: int, target: int, stop_signal: int, grace_s: float) -> int:
    # The owner kills the guard when it stops the server itself. Meanwhile only two cheap
    # looks per poll (the parent id, the leader's stat), no walk over /proc.
    while os.getppid() == owner:
        if not _running(abs(target)):
            return 0
        time.sleep(POLL_S)
    _signal(target, stop_signal)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(target):
            return 0
        time.sleep(POLL_S)
    _signal(target, signal.SIGKILL)
    return 0


def main(argv: list[str]) -> int:
    owner, target, stop_signal, grace_s = argv
    return guard(int(owner), int(target), int(stop_signal), float(grace_s))


def start_guard(target: int, stop_signal: int, grace_s: float) -> subprocess.Popen[bytes]:
    """Start a guard owned by this process for ``target`` (``-pgid`` or ``pid``).

    The caller keeps the handle and kills the guard (``stop_guard``) once it has stopped
    the target itself.
    """
    argv = [sys.executable, "-I", "-S", __file__, str(os.getpid()), str(target)]
    return subprocess.Popen(
        [*argv, str(int(stop_signal)), str(grace_s)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: the terminal's hang-up or Ctrl-C must not take the guard down
        # with its owner, or nothing would stop the server.
        start_new_session=True,
        close_fds=True,
    )


def stop_guard(guard_process: subprocess.Popen[bytes]) -> None:
    """Kill and reap a guard whose target its owner has stopped."""
    if guard_process.poll() is None:
        guard_process.kill()
    guard_process.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
