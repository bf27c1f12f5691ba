"""The embedded Elasticsearch: fetching the distribution, and the node itself.

Uses the session node from ``tests/fixtures/services.py``; the test that kills it brings
it back before it ends, because later tests share it. The fetch tests never download:
the distribution is in the cache once the session node runs (``make jars`` or the
fixture put it there).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack import (
    ELASTICSEARCH_SERVICE,
    ELASTICSEARCH_VERSION,
    ElasticsearchServer,
    ensure_elasticsearch,
)
from devstack.elasticsearch import SYSTEM_USER

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def _request(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def _fetch_cli(*args: str, path: str) -> subprocess.CompletedProcess[str]:
    """``python -m devstack.fetch elasticsearch`` with only ``path`` as ``PATH``."""
    return subprocess.run(
        [sys.executable, "-m", "devstack.fetch", "elasticsearch", *args],
        cwd=ROOT,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_fetch_is_idempotent_when_present(elasticsearch_server: ElasticsearchServer) -> None:
    home = ensure_elasticsearch()
    assert home.name == f"elasticsearch-{ELASTICSEARCH_VERSION}"
    marker = home / ".complete"
    before = marker.stat().st_mtime_ns
    # No mvn on PATH: the command can only succeed by finding the cache complete.
    result = _fetch_cli(path=str(ROOT / "no-such-dir"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(home)
    assert ensure_elasticsearch() == home
    assert marker.stat().st_mtime_ns == before


def test_fetch_without_maven_fails_and_leaves_nothing_half_done(tmp_path: Path) -> None:
    result = _fetch_cli("--cache-dir", str(tmp_path), path=str(tmp_path / "nothing"))
    assert result.returncode != 0
    assert "`mvn` is not installed" in result.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_node_answers_health_on_its_url(elasticsearch_server: ElasticsearchServer) -> None:
    url = elasticsearch_server.url
    assert url == f"http://127.0.0.1:{elasticsearch_server.port}"
    assert elasticsearch_server.endpoint == url
    health = _request("GET", f"{url}/_cluster/health?wait_for_status=yellow&timeout=5s")
    assert health["status"] in ("yellow", "green")
    assert (health["cluster_name"], health["number_of_nodes"]) == ("sluice", 1)
    nodes = _request("GET", f"{url}/_nodes/_local/jvm,settings")["nodes"]
    (node,) = nodes.values()
    assert node["version"] == ELASTICSEARCH_VERSION
    assert node["jvm"]["mem"]["heap_max_in_bytes"] == 512 * 1024 * 1024
    assert node["settings"]["discovery"]["type"] == "single-node"


def test_the_node_never_runs_as_root(elasticsearch_server: ElasticsearchServer) -> None:
    pid = elasticsearch_server.pid
    assert pid is not None
    uid = int(Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()[0])
    if os.geteuid() == 0:
        assert uid == pwd.getpwnam(SYSTEM_USER).pw_uid
    else:
        assert uid == os.geteuid()


def test_the_node_keeps_its_data_and_port_across_kill(
    elasticsearch_server: ElasticsearchServer,
) -> None:
    url = elasticsearch_server.url
    index = f"embedded-{uuid.uuid4().hex[:8]}"
    _request("PUT", f"{url}/{index}/_doc/1?refresh=true", {"kept": True})
    try:
        began = time.monotonic()
        elasticsearch_server.kill()
        assert not elasticsearch_server.is_running()
        assert time.monotonic() - began < 15
        elasticsearch_server.start()  # same port: the killed node let go of it
        assert elasticsearch_server.url == url
    finally:
        elasticsearch_server.start()  # a no-op unless a step above failed half-way
    assert _request("GET", f"{url}/{index}/_doc/1")["_source"] == {"kept": True}
    _request("DELETE", f"{url}/{index}")


def test_a_bad_heap_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="heap"):
        ElasticsearchServer(tmp_path, heap="half")


def test_the_stack_spec_builds_a_node_on_the_preferred_port(tmp_path: Path) -> None:
    assert (ELASTICSEARCH_SERVICE.env_var, ELASTICSEARCH_SERVICE.preferred_port) == (
        "ELASTICSEARCH_URL",
        9200,
    )
    service = ELASTICSEARCH_SERVICE.build(tmp_path, 0)
    assert isinstance(service, ElasticsearchServer)
    assert not service.is_running()
