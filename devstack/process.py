"""Child-process handling shared by every embedded service.

One place knows how to spawn a server with its output in a log file, wait until it is
really ready, stop it cleanly (signal, wait, then SIGKILL) or kill it outright, and
quote the tail of its log when something goes wrong. ``EmbeddedService`` wraps that
into the lifecycle the Kafka, PostgreSQL and Redis classes share.

Every child runs in its own session (process group). That keeps a terminal Ctrl-C
away from the servers, so ``sluice dev`` can stop them in order, and lets ``kill()``
take a server down together with its helper processes (PostgreSQL backends), which is
what a crash looks like. A last-resort ``atexit`` hook stops children that their owner
forgot; for an owner that is itself SIGKILLed (or loses its terminal), each server has an
orphan guard (``devstack/orphan_guard.py``) that stops it once its owner is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self, TypedDict

from base.errors import SluiceError
from devstack.orphan_guard import start_guard, stop_guard
from devstack.ports import free_port, is_port_free

__all__ = [
    "ChildProcess",
    "EmbeddedService",
    "EmbeddedServiceError",
    "ServiceStartError",
    "run_logged",
    "tail_logs",
]

_log = logging.getLogger(__name__)

_TAIL_LINES = 40
_TAIL_BYTES = 64 * 1024
_POLL_INTERVAL = 0.05


class EmbeddedServiceError(SluiceError):
    """An embedded service could not be prepared, started or used."""


class ServiceStartError(EmbeddedServiceError):
    """A service did not become ready; the message ends with the tail of its log."""

    def __init__(self, service: str, reason: str, log_tail: str = "") -> None:
        message = f"{service}: {reason}"
        if log_tail:
            message += f"\n--- tail of {service} logs ---\n{log_tail}"
        super().__init__(message)
        self.service = service
        self.reason = reason
        self.log_tail = log_tail


def tail_logs(paths: Sequence[Path], lines: int = _TAIL_LINES) -> str:
    """Return the last ``lines`` lines of each existing file, each under a header.

    Reads at most the last 64 KiB of a file, so a huge log costs nothing. Never raises.
    """
    chunks: list[str] = []
    for path in paths:
        try:
            with path.open("rb") as fh:
                fh.seek(max(0, path.stat().st_size - _TAIL_BYTES))
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        tail = "\n".join(text.splitlines()[-lines:])
        if tail:
            chunks.append(f"[{path}]\n{tail}")
    return "\n".join(chunks)


def run_logged(
    service: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    timeout: float,
    user: str | None = None,
    cwd: Path | None = None,
) -> None:
    """Run a one-shot command (initdb, the Kafka storage formatter) into ``log_path``.

    Blocks until the command exits or ``timeout`` seconds pass (then it is killed).
    Raises ``ServiceStartError`` with the log tail on a non-zero exit or a timeout.
    """
    with log_path.open("ab") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                cwd=cwd,
                **_as_user(user),
            )
        except subprocess.TimeoutExpired:
            reason = f"{Path(argv[0]).name} did not finish within {timeout:.0f}s"
            raise ServiceStartError(service, reason, tail_logs([log_path])) from None
    if proc.returncode != 0:
        reason = f"{Path(argv[0]).name} exited with status {proc.returncode}"
        raise ServiceStartError(service, reason, tail_logs([log_path]))


class _UserArgs(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


def _as_user(user: str | None) -> _UserArgs:
    """Popen arguments that make the child drop root privileges to ``user``."""
    if user is None:
        return {}
    import pwd  # POSIX only; imported here so the module still imports elsewhere

    entry = pwd.getpwnam(user)
    # extra_groups=[] matters: without it the child keeps root's supplementary groups.
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


# Children still running, for the atexit safety net. A plain set (not a WeakSet): a
# service object that was dropped without stop() must not take its child's
# last reference with it.
_live_children: set[ChildProcess] = set()


class ChildProcess:
    """One long-running server process with its output going to a log file.

    Not thread-safe: one owner drives it. Use ``spawn`` to create one.
    """

    def __init__(
        self,
        service: str,
        popen: subprocess.Popen[bytes],
        logs: Sequence[Path],
        pid_file: Path,
        guard: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.service = service
        self._popen = popen
        self._logs = tuple(logs)
        self._pid_file = pid_file
        self._guard = guard

    @classmethod
    def spawn(
        cls,
        service: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        pid_file: Path,
        extra_logs: Sequence[Path] = (),
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        orphan_signal: signal.Signals = signal.SIGTERM,
        orphan_grace_s: float = 30.0,
    ) -> ChildProcess:
        """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``.

        If this process dies without stopping it, its orphan guard sends the new
        session's group ``orphan_signal``, then SIGKILL after ``orphan_grace_s``.
        Returns at once (does not wait for readiness). Raises ``ServiceStartError`` if a
        process recorded in ``pid_file`` from an earlier run is still alive — two servers
        on one data directory corrupt it — or if the executable cannot be started.
        """
        _refuse_leftover(service, pid_file)
        with log_path.open("ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=dict(env) if env is not None else None,
                    start_new_session=True,
                    **_as_user(user),
                )
            except OSError as exc:
                raise ServiceStartError(service, f"cannot run {argv[0]}: {exc}") from exc
        pid_file.write_text(f"{popen.pid}\n")
        guard = start_guard(-popen.pid, orphan_signal, orphan_grace_s)
        child = cls(service, popen, (log_path, *extra_logs), pid_file, guard)
        _live_children.add(child)
        return child

    @property
    def pid(self) -> int:
        return self._popen.pid

    def is_running(self) -> bool:
        """Whether the process has not exited yet. Never blocks."""
        return self._popen.poll() is None

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        return tail_logs(self._logs, lines)

    def wait_ready(self, probe: Callable[[], bool], *, timeout: float, interval: float) -> None:
        """Call ``probe`` every ``interval`` seconds until it returns True.

        A probe that raises counts as "not ready yet"; its last error is quoted if the
        wait fails. Blocks for at most about ``timeout`` seconds plus one probe. Raises
        ``ServiceStartError`` (with the log tail) as soon as the process exits, or when
        the timeout passes; the process is left running in that case — the caller
        decides whether to kill it.
        """
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            if not self.is_running():
                reason = f"exited with status {self._popen.returncode} before it was ready"
                raise ServiceStartError(self.service, reason, self.log_tail())
            try:
                if probe():
                    return
            except Exception as exc:  # any probe failure just means "not yet"
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                reason = f"not ready after {timeout:.0f}s"
                if last_error:
                    reason += f" (last check failed with {last_error})"
                raise ServiceStartError(self.service, reason, self.log_tail())
            time.sleep(interval)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Send ``sig`` and wait up to ``timeout`` seconds, then SIGKILL the whole group.

        Blocks until the process is gone. Idempotent: stopping an exited process only
        reaps it.
        """
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(sig)
            if not self._exited_within(timeout):
                _log.warning("%s ignored %s for %.0fs; killing it", self.service, sig.name, timeout)
        self._kill_group_and_reap()

    def kill(self) -> None:
        """SIGKILL the process and everything in its process group, then reap it.

        Blocks briefly (until the kernel reports the exit). Idempotent.
        """
        self._kill_group_and_reap()

    def _exited_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._exited_unreaped():
                return True
            time.sleep(_POLL_INTERVAL)
        return self._exited_unreaped()

    def _exited_unreaped(self) -> bool:
        """Whether the leader exited, without reaping it.

        Keeping the leader a zombie until the group is killed means its pid — which is
        also the process group id — cannot be reused meanwhile, so ``killpg`` can only
        ever hit processes we started.
        """
        if self._popen.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _kill_group_and_reap(self) -> None:
        if self._popen.returncode is None:
            # The leader is alive or an unreaped zombie: the group id is still ours.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._popen.wait()
        if self._guard is not None:
            stop_guard(self._guard)
        _live_children.discard(self)
        with contextlib.suppress(FileNotFoundError):
            self._pid_file.unlink()


def _refuse_leftover(service: str, pid_file: Path) -> None:
    """Raise if ``pid_file`` names a live process whose command line mentions our data."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # alive, just not ours to signal
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        cmdline = None  # no /proc: assume the worst
    if cmdline is not None and str(pid_file.parent) not in cmdline:
        return  # the pid was reused by an unrelated process
    raise ServiceStartError(
        service,
        f"another {service} (pid {pid}) already uses {pid_file.parent}, perhaps left over "
        f"from an earlier run; stop it (kill {pid}) first",
    )


@atexit.register
def _stop_forgotten_children() -> None:
    for child in list(_live_children):
        _log.warning("stopping %s (pid %d) left running at exit", child.service, child.pid)
        child.stop(timeout=10.0)


class EmbeddedService(ABC):
    """A real server run as a child process, all its data and logs under ``data_dir``.

    Lifecycle: ``start()`` blocks until the server answers a real request; ``stop()``
    shuts it down cleanly; ``kill()`` SIGKILLs it (for fault tests); ``start()`` again
    brings it back on the same port with the same data. Usable as a context manager.
    Synchronous and not thread-safe: async callers use ``asyncio.to_thread``.

    Subclasses provide the command line, the readiness check and the value the
    matching environment variable should hold (``endpoint``).
    """

    name: ClassVar[str]
    #: Signal that asks for a clean shutdown.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 30.0
    ready_interval: ClassVar[float] = 0.1

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        # Absolute, because children run with other working directories.
        self.data_dir = Path(data_dir).absolute()
        self._port = free_port(port)
        self._port_pinned = False  # becomes True once a server has listened on it
        self._child: ChildProcess | None = None
        #: Seconds the last successful ``start()`` took, for the curious and the report.
        self.last_start_seconds: float | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group id), or None when stopped."""
        return self._child.pid if self.is_running() and self._child is not None else None

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """What clients are given: a URL, or Kafka's bootstrap servers."""

    @property
    def log_path(self) -> Path:
        """The file the server's stdout and stderr are appended to."""
        return self.data_dir / f"{self.name}.log"

    def start(self, timeout: float | None = None) -> None:
        """Start the server and block until it is ready; a no-op if already running.

        Waits at most ``timeout`` seconds (default ``start_timeout``) for readiness.
        Raises ``ServiceStartError`` naming the cause and quoting the log tail if the
        server exits, is not ready in time, or its pinned port is taken; nothing is left
        running in that case.
        """
        if self.is_running():
            return
        if self._child is not None:  # it died on its own: reap it before replacing it
            self._child.kill()
            self._child = None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._claim_port()
        began = time.monotonic()
        self._prepare()
        child = ChildProcess.spawn(
            self.name,
            self._command(),
            log_path=self.log_path,
            pid_file=self.data_dir / f"{self.name}.pid",
            extra_logs=self._extra_logs(),
            cwd=self.data_dir,
            user=self._run_as(),
            orphan_signal=self.stop_signal,
            orphan_grace_s=self.stop_timeout,
        )
        try:
            child.wait_ready(
                self._is_ready,
                timeout=self.start_timeout if timeout is None else timeout,
                interval=self.ready_interval,
            )
        except BaseException:
            child.kill()  # also on KeyboardInterrupt: never leave a half-started server
            raise
        self._child = child
        self._port_pinned = True
        self.last_start_seconds = time.monotonic() - began
        _log.info("%s ready at %s in %.1fs", self.name, self.endpoint, self.last_start_seconds)

    def stop(self, timeout: float | None = None) -> None:
        """Shut the server down cleanly and block until it exited.

        Sends ``stop_signal``, waits up to ``timeout`` (default ``stop_timeout``)
        seconds, then SIGKILLs. Idempotent; data stays for the next ``start()``.
        """
        child, self._child = self._child, None
        if child is not None:
            child.stop(self.stop_signal, self.stop_timeout if timeout is None else timeout)

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown), as a crash would. Idempotent."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()

    def is_running(self) -> bool:
        """Whether the server process is alive (not whether it is ready). Never blocks."""
        return self._child is not None and self._child.is_running()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {self.endpoint} {state} data_dir={self.data_dir}>"

    def _claim_port(self) -> None:
        """Check the port right before spawning; re-pick only if clients never saw it."""
        if is_port_free(self._port):
            return
        if self._port_pinned:
            raise ServiceStartError(
                self.name, f"port {self._port} is now taken by another process; cannot restart"
            )
        self._port = free_port(None)

    @abstractmethod
    def _prepare(self) -> None:
        """Work before each spawn: find binaries, write config, format storage once."""

    def _extra_logs(self) -> Sequence[Path]:
        """Further log files worth quoting when start fails."""
        return ()

    def _run_as(self) -> str | None:
        """System user to run the server as (``None``: the current user)."""
        return None

    @abstractmethod
    def _command(self) -> list[str]:
        """The server's argv."""

    @abstractmethod
    def _is_ready(self) -> bool:
        """One readiness check: True when a real request succeeded. May raise."""
