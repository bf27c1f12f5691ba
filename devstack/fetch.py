"""Fetch what the embedded stack runs into the cache, once, and print where it is.

    python -m devstack.fetch kafka elasticsearch [registry compose] [--cache-dir DIR]

Each fetch is idempotent (a complete cache entry returns at once) and safe to run from
several processes at a time; the Makefile calls it before `make dev` and `make test`.
The default cache is ``$SLUICE_CACHE_DIR`` or ``~/.cache/sluice``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Callable
from pathlib import Path

from devstack.process import EmbeddedServiceError

__all__ = ["FETCHERS", "main"]

# name -> (module, function): imported only when asked for, so fetching the Kafka jars
# never imports the Elasticsearch launcher.
FETCHERS: dict[str, tuple[str, str]] = {
    "kafka": ("devstack.kafka", "ensure_kafka_jars"),
    "elasticsearch": ("devstack.elasticsearch", "ensure_elasticsearch"),
    "registry": ("devstack.registry", "ensure_registry_app"),
    "compose": ("devstack.compose", "ensure_compose"),
}


def _fetcher(name: str) -> Callable[[Path | None], Path]:
    module, function = FETCHERS[name]
    fetch: Callable[[Path | None], Path] = getattr(importlib.import_module(module), function)
    return fetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.fetch", description=__doc__)
    parser.add_argument("names", nargs="+", choices=sorted(FETCHERS), metavar="NAME")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $SLUICE_CACHE_DIR or ~/.cache/sluice"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.names:
        try:
            print(_fetcher(name)(args.cache_dir))
        except EmbeddedServiceError as exc:
            parser.exit(1, f"python -m devstack.fetch {name}: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
