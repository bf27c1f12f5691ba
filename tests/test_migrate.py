"""Migrations against the real PostgreSQL: in order, once, atomically, concurrently.

Every test gets virgin databases from ``postgres_database_factory`` (isolation by name
on the session server).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from base.errors import SluiceError, TransientError
from connectors.migrate import (
    Migration,
    MigrationError,
    applied_versions,
    apply_migrations,
    load_migrations,
    main_migrate,
)
from devstack.ports import LOOPBACK, free_port

pytestmark = pytest.mark.integration

MakeDb = Callable[[str], str]

PROJECTION_TABLES = {
    "webhook_events",
    "payments",
    "refunds",
    "invoices",
    "subscriptions",
    "checkout_sessions",
    "processed_events",
}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {str(row[0]) for row in rows}


def test_shipped_migrations_are_numbered_from_0001_without_gaps() -> None:
    migrations = load_migrations()
    assert migrations, "no migration files shipped"
    assert [m.version for m in migrations] == [f"{n:04d}" for n in range(1, len(migrations) + 1)]
    assert migrations[0].name == "0001_webhooks_and_billing"
    for migration in migrations:
        assert not re.search(r"\b(BEGIN|COMMIT|CONCURRENTLY)\b", migration.sql, re.IGNORECASE)


def test_apply_creates_the_tables_once_and_is_idempotent(postgres_database_factory: MakeDb) -> None:
    url = postgres_database_factory("migrate_once")
    names = [m.name for m in load_migrations()]

    assert apply_migrations(url) == names
    assert PROJECTION_TABLES | {"schema_migrations"} <= _tables(url)
    assert applied_versions(url) == [m.version for m in load_migrations()]

    assert apply_migrations(url) == []
    assert apply_migrations(url) == []
    with psycopg.connect(url) as conn:
        count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert count == (len(names),)


def test_applied_versions_of_a_virgin_database_is_empty(postgres_database_factory: MakeDb) -> None:
    assert applied_versions(postgres_database_factory("migrate_virgin")) == []


def test_concurrent_appliers_apply_each_migration_exactly_once(
    postgres_database_factory: MakeDb,
) -> None:
    url = postgres_database_factory("migrate_race")
    # A slow extra step widens the window in which the appliers overlap.
    slow = Migration(
        "9000",
        "9000_slow_test_step",
        "SELECT pg_sleep(0.3); CREATE TABLE race_marker (id int PRIMARY KEY);"
        "INSERT INTO race_marker VALUES (1);",
    )
    migrations = [*load_migrations(), slow]
    appliers = 4
    start = threading.Barrier(appliers)

    def run() -> list[str]:
        start.wait(timeout=30)
        return apply_migrations(url, migrations)

    with ThreadPoolExecutor(appliers) as pool:
        results = [f.result(timeout=120) for f in [pool.submit(run) for _ in range(appliers)]]

    applied = sorted(name for result in results for name in result)
    assert applied == sorted(m.name for m in migrations)  # each once, none lost
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM race_marker").fetchone() == (1,)
        ledger = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [row[0] for row in ledger] == [m.version for m in migrations]


def test_a_failing_migration_rolls_back_whole_and_is_not_recorded(
    postgres_database_factory: MakeDb,
) -> None:
    url = postgres_database_factory("migrate_fail")
    good = Migration("0001", "0001_good", "CREATE TABLE good (id int);")
    bad = Migration(
        "0002",
        "0002_bad",
        "CREATE TABLE half_done (id int); SELECT * FROM no_such_table;",
    )
    with pytest.raises(MigrationError, match="0002_bad") as caught:
        apply_migrations(url, [good, bad])
    assert isinstance(caught.value, SluiceError)

    assert applied_versions(url) == ["0001"]
    assert "good" in _tables(url)
    assert "half_done" not in _tables(url)  # the failed file left nothing behind

    fixed = Migration("0002", "0002_bad", "CREATE TABLE half_done (id int);")
    assert apply_migrations(url, [good, fixed]) == ["0002_bad"]
    assert applied_versions(url) == ["0001", "0002"]


def test_versions_unknown_to_the_code_are_left_alone(postgres_database_factory: MakeDb) -> None:
    url = postgres_database_factory("migrate_newer")
    first = Migration("0001", "0001_a", "CREATE TABLE a (id int);")
    second = Migration("0002", "0002_b", "CREATE TABLE b (id int);")
    apply_migrations(url, [first, second])
    assert apply_migrations(url, [first]) == []  # an older release starting up
    assert applied_versions(url) == ["0001", "0002"]


def test_load_migrations_orders_by_version_and_ignores_other_files(tmp_path: Path) -> None:
    (tmp_path / "0002_second.sql").write_text("SELECT 2;")
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    (tmp_path / "__init__.py").write_text("")
    loaded = load_migrations(tmp_path)
    assert [(m.version, m.name, m.sql) for m in loaded] == [
        ("0001", "0001_first", "SELECT 1;"),
        ("0002", "0002_second", "SELECT 2;"),
    ]


@pytest.mark.parametrize("bad_name", ["1_short.sql", "0003-dashes.sql", "0003_Upper.sql"])
def test_load_migrations_rejects_badly_named_files(tmp_path: Path, bad_name: str) -> None:
    (tmp_path / bad_name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_description"):
        load_migrations(tmp_path)


def test_load_migrations_rejects_two_files_with_one_number(tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("SELECT 1;")
    (tmp_path / "0001_other.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="share version 0001"):
        load_migrations(tmp_path)


def test_main_migrate_reports_what_it_applied(
    postgres_database_factory: MakeDb, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_database_factory("migrate_main")
    assert main_migrate(url) == 0
    assert capsys.readouterr().out.splitlines() == [f"applied {m.name}" for m in load_migrations()]
    assert main_migrate(url) == 0
    assert capsys.readouterr().out.strip() == "database schema is up to date"


def test_an_unreachable_database_is_a_transient_error() -> None:
    url = f"postgresql://postgres@{LOOPBACK}:{free_port(None)}/nowhere"
    with pytest.raises(TransientError, match="database unavailable") as caught:
        apply_migrations(url)
    assert url not in str(caught.value)
