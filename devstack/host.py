"""Host chores the embedded services share: reading a marker file, a cross-process lock
on a cache directory, and running a server as an unprivileged system user when started
as root (PostgreSQL and Elasticsearch both refuse to run as root)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from devstack.process import EmbeddedServiceError

__all__ = ["chown_tree", "ensure_system_user", "exclusive_lock", "make_traversable", "read_text"]


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
