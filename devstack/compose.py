"""Docker Compose v2, built once from its Go module into the cache, for the compose tests.

``tests/test_compose.py`` checks ``docker-compose.yml`` with the real Compose (``config``
parses and resolves the file; no Docker engine needed). A fresh machine has the
``docker`` client without the Compose plugin, and Debian ships only Compose v1 (no JSON
output), so ``make test`` builds Compose v2 from source with the machine's Go::

    python -m devstack.fetch compose [--cache-dir DIR]

The binary lands in ``<cache>/compose-<version>/docker-compose``; a marker makes later
calls return at once. A cold build downloads ~500 MB of modules and compiles for about
4.5 minutes on two busy cores; the module and build caches are removed afterwards
(about 1.4 GB), only the 96 MB binary stays.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from devstack.host import exclusive_lock, read_text
from devstack.kafka import default_cache_dir
from devstack.process import EmbeddedServiceError

__all__ = ["COMPOSE_MODULE", "COMPOSE_VERSION", "cached_compose", "ensure_compose"]

_log = logging.getLogger(__name__)

COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = "v2.40.3"
_BINARY = "docker-compose"
_MARKER = ".built"
_BUILD_TIMEOUT_S = 1800.0


def _home(cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / f"compose-{COMPOSE_VERSION}"


def cached_compose(cache_dir: Path | None = None) -> Path | None:
    """The cached binary if a build finished, else None. Never builds."""
    home = _home(cache_dir)
    binary = home / _BINARY
    return binary if read_text(home / _MARKER) == COMPOSE_VERSION and binary.is_file() else None


def ensure_compose(cache_dir: Path | None = None) -> Path:
    """Return the path of a Compose v2 binary, building it first if it is not cached.

    Safe to call from several processes (a file lock serialises the build). Raises
    ``EmbeddedServiceError`` when Go is missing or the build fails.
    """
    found = cached_compose(cache_dir)
    if found is not None:
        return found
    home = _home(cache_dir)
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home.parent / f"compose-{COMPOSE_VERSION}.lock"):
        if cached_compose(cache_dir) is None:
            _build(home)
            (home / _MARKER).write_text(COMPOSE_VERSION)
    return home / _BINARY


def _build(home: Path) -> None:
    go = shutil.which("go")
    if go is None:
        raise EmbeddedServiceError(f"Compose {COMPOSE_VERSION} is not cached and `go` is missing")
    with tempfile.TemporaryDirectory(dir=home, prefix="go-") as scratch:
        env = {
            **os.environ,
            "GOMODCACHE": f"{scratch}/mod",
            "GOCACHE": f"{scratch}/build",
            "GOPATH": f"{scratch}/path",
            "GOFLAGS": "-buildvcs=false -modcacherw",  # -modcacherw: the scratch can be removed
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0",
        }
        _log.info("building Compose %s into %s (a few minutes, once)", COMPOSE_VERSION, home)
        # `go install module/cmd@version` refuses Compose (its go.mod has exclude
        # directives), so the module is downloaded and built as the main module.
        downloaded = _go(
            go, ["mod", "download", "-json", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"], env
        )
        source = Path(json.loads(downloaded)["Dir"])
        staging = home / f"{_BINARY}.partial"
        _go(
            go,
            [
                "build",
                "-trimpath",
                "-ldflags",
                f"-s -w -X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}",
                "-o",
                str(staging),
                "./cmd",
            ],
            env,
            cwd=source,
        )
        staging.rename(home / _BINARY)


def _go(go: str, args: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(
            [go, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=_BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EmbeddedServiceError(
            f"go {args[0]} did not finish in {_BUILD_TIMEOUT_S:.0f}s"
        ) from None
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-30:])
        raise EmbeddedServiceError(f"go {args[0]} failed (exit {result.returncode}):\n{tail}")
    return result.stdout
