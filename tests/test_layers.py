"""The package layering, read from the source with ``ast`` (no module is imported).

    base  <-  schemas  <-  connectors  <-  streams / ingress  <-  sluice
                                           devstack (dev stack: sluice dev, tests, bench)

Each package may import the ones to its left. ``streams`` and ``ingress`` are two
processes and import nothing of each other; ``streams/domain`` is pure (no driver, web
or Kafka library); only ``sluice/dev.py`` among the production modules starts the
embedded dev stack. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = frozenset(
    {"base", "schemas", "connectors", "streams", "ingress", "sluice", "devstack", "bench", "tests"}
)
PRODUCTION = ("base", "schemas", "connectors", "streams", "ingress", "sluice")

# package -> the project packages it may import (itself always allowed)
ALLOWED: dict[str, frozenset[str]] = {
    "base": frozenset(),
    "schemas": frozenset({"base"}),
    "connectors": frozenset({"base", "schemas"}),
    "streams": frozenset({"base", "schemas", "connectors"}),
    "ingress": frozenset({"base", "schemas", "connectors"}),
    "sluice": frozenset({"base", "schemas", "connectors", "streams", "ingress", "devstack"}),
    "devstack": frozenset({"base"}),
}
# `sluice dev` and its notification outlets (split out of sluice/dev.py).
DEVSTACK_IMPORTERS = frozenset({"sluice/dev.py", "sluice/dev_notify.py"})
DOMAIN_FORBIDDEN = frozenset(
    {
        "faust",
        "mode",
        "aiohttp",
        "aiokafka",
        "confluent_kafka",
        "psycopg",
        "psycopg_pool",
        "elasticsearch",
        "redis",
        "connectors",
    }
)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every absolute module name ``path`` imports, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside its own package
                continue
            assert node.module is not None
            yield node.lineno, node.module


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_the_layers_see_every_production_module() -> None:
    # A guard on the guard: a renamed package would otherwise pass by checking nothing.
    for package in (*PRODUCTION, "devstack"):
        assert _modules(package), package
    assert any(path.parent.name == "domain" for path in _modules("streams"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package: str) -> None:
    allowed = ALLOWED[package] | {package}
    wrong = [
        f"{_where(path, line)} imports {name}"
        for path in _modules(package)
        for line, name in _imports(path)
        if name.split(".")[0] in PROJECT and name.split(".")[0] not in allowed
    ]
    assert wrong == []


def test_only_sluice_dev_imports_the_dev_stack() -> None:
    wrong = [
        f"{_where(path, line)} imports {name}"
        for package in PRODUCTION
        for path in _modules(package)
        for line, name in _imports(path)
        if name.split(".")[0] == "devstack"
        and path.relative_to(ROOT).as_posix() not in DEVSTACK_IMPORTERS
    ]
    assert wrong == []


def test_the_domain_is_pure() -> None:
    wrong = [
        f"{_where(path, line)} imports {name}"
        for path in sorted((ROOT / "streams" / "domain").rglob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] in DOMAIN_FORBIDDEN
    ]
    assert wrong == []


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from streams.domain import status\nimport psycopg.sql\n")
    assert sorted(_imports(module)) == [(2, "streams.domain"), (3, "psycopg.sql")]
