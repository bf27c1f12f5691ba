"""Host chores the embedded services share: reading a marker file, a cross-process lock
on a cache directory, fetching an artifact with Maven, and running a server as an
unprivileged system user when started as root (PostgreSQL and Elasticsearch both refuse
to run as root)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from devstack.process import EmbeddedServiceError

__all__ = [
    "chown_tree",
    "ensure_system_user",
    "exclusive_lock",
    "make_traversable",
    "read_text",
    "run_maven",
]

MAVEN_TIMEOUT_S = 900.0  # a cold Maven cache downloads up to ~100 MB


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_maven(
    args: Sequence[str],
    *,
    what: str,
    home: Path,
    produced: Callable[[], bool],
    cwd: Path | None = None,
) -> None:
    """Run ``mvn -q -B <args>`` to fetch ``what`` into the cache entry ``home``, and check
    with ``produced`` that it left what was asked for (Maven can exit 0 having fetched
    nothing).

    :raises EmbeddedServiceError: Maven is not installed, did not finish within
        :data:`MAVEN_TIMEOUT_S`, failed, or produced nothing (with its last 30 lines).
    """
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EmbeddedServiceError(f"no {what} in the cache ({home}) and `mvn` is not installed")
    cmd = [mvn, "-q", "-B", "-Dstyle.color=never", *args]
    try:
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False, cwd=cwd
        )
    except subprocess.TimeoutExpired:
        raise EmbeddedServiceError(f"mvn did not finish within {MAVEN_TIMEOUT_S:.0f}s") from None
    if result.returncode != 0 or not produced():
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise EmbeddedServiceError(
            f"mvn could not fetch {what} (exit {result.returncode}):\n{tail}"
        )


def ensure_system_user(name: str, server: str) -> pwd.struct_passwd:
    """Return ``name``'s passwd entry, creating a no-login system user if needed."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        raise EmbeddedServiceError(
            f"{server} cannot run as root and `useradd` is missing to create {name!r}; "
            "create that user or run as a non-root user"
        )
    cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    try:
        return pwd.getpwnam(name)  # also covers a concurrent useradd winning the race
    except KeyError:
        raise EmbeddedServiceError(
            f"could not create system user {name!r}: {result.stderr.strip()}"
        ) from None


def make_traversable(path: Path) -> None:
    """Add o+x to ``path`` and every parent that lacks it, so another user can reach it.

    Needed because pytest's ``/tmp/pytest-of-root`` is 0700. Only the execute
    (search) bit is added: directory listings stay private.
    """
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def chown_tree(root: Path, entry: pwd.struct_passwd) -> None:
    if root.stat().st_uid == entry.pw_uid:
        return  # ownership is all-or-nothing here, so the top tells us enough
    os.chown(root, entry.pw_uid, entry.pw_gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)
