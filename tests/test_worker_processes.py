"""`sluice worker --processes N` against the real broker: N children in one consumer group,
each with its own state directory; SIGTERM stops them all; a child that dies stops the rest
and the supervisor exits non-zero (the process manager restarts the unit)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.kafka_admin import list_topics
from connectors.migrate import apply_migrations
from devstack import PostgresServer
from schemas.catalog import JOIN_PARTITIONS, WEBHOOK_PARTITIONS
from tests.fixtures.kafka import group_members
from tests.fixtures.worker import start_group_at_end, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Supervisor:
    process: subprocess.Popen[bytes]
    log_path: Path
    state_dir: Path
    group: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        pids = []
        for line in self.log().splitlines():
            if line.startswith("{") and '"worker process started"' in line:
                pids.append(int(json.loads(line)["pid"]))
        return pids

    def exit_code(self, timeout_s: float = 90.0) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor did not exit\n{self.log()[-4000:]}") from None


@pytest.fixture(scope="module")
def worker_env(
    catalog_topics: str, postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    database_url = postgres_server.create_database(f"sluice_processes_{uuid.uuid4().hex[:6]}")
    apply_migrations(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PARTNER_"))}
    return env | {"KAFKA_BOOTSTRAP_SERVERS": catalog_topics, "DATABASE_URL": database_url}


@pytest.fixture
def supervisor(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Supervisor]:
    group = f"sluice-processes-{uuid.uuid4().hex[:6]}"
    env = worker_env | {"SLUICE_APP_ID": group, "SLUICE_STATE_DIR": str(tmp_path / "state")}
    start_group_at_end(env)
    log_path = tmp_path / "supervisor.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sluice", "worker", "--processes", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = Supervisor(process, log_path, tmp_path / "state", group)
    try:
        yield started
    finally:
        # Whatever the test did, leave no worker behind (children share its session).
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for pid in started.child_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _until_both_in_the_group(supervisor: Supervisor, bootstrap: str) -> None:
    def both_in() -> bool:
        assert supervisor.process.poll() is None, f"supervisor exited\n{supervisor.log()[-4000:]}"
        return group_members(bootstrap, supervisor.group) == 2

    await wait_until(
        "both worker processes in one stable consumer group",
        both_in,
        timeout_s=120,
        on_timeout=lambda: supervisor.log()[-4000:],
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_two_processes_share_one_group_and_stop_together_on_sigterm(
    supervisor: Supervisor, catalog_topics: str
) -> None:
    await _until_both_in_the_group(supervisor, catalog_topics)
    assert len(supervisor.child_pids()) == 2
    assert sorted(p.name for p in supervisor.state_dir.iterdir()) == ["w0", "w1"]
    # Created before faust started, so the two children did not race to declare them.
    topics = {t.name: t.partitions for t in list_topics(catalog_topics)}
    assert topics[f"{supervisor.group}-dedupe_seen-changelog"] == WEBHOOK_PARTITIONS
    assert topics[f"{supervisor.group}-orders_state-changelog"] == JOIN_PARTITIONS

    supervisor.process.send_signal(signal.SIGTERM)

    assert supervisor.exit_code() == 0
    assert all(_gone(pid) for pid in supervisor.child_pids())


async def test_a_child_killed_stops_the_other_and_the_supervisor_exits_1(
    supervisor: Supervisor, catalog_topics: str
) -> None:
    await _until_both_in_the_group(supervisor, catalog_topics)
    victim, other = supervisor.child_pids()

    os.kill(victim, signal.SIGKILL)

    assert supervisor.exit_code() == 1
    assert _gone(other)
    assert "worker process exited unexpectedly" in supervisor.log()


def test_fewer_than_one_process_stops_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sluice", "worker", "--processes", "0"],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "DATABASE_URL": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["sluice: worker --processes must be at least 1"]
