"""Settings are validated at start-up; a missing secret stops the process with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from base.errors import ConfigError
from base.settings import INGRESS_REQUIRED, Settings, load_settings, parse_duration

COMPLETE = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "STRIPE_WEBHOOK_SECRET": "whsec_a, whsec_b",
    "RAZORPAY_WEBHOOK_SECRET": "rzp",
}


def test_comma_separated_secrets_allow_rotation() -> None:
    settings = load_settings(COMPLETE, require=INGRESS_REQUIRED)
    assert settings.stripe_webhook_secrets == ("whsec_a", "whsec_b")


@pytest.mark.parametrize("name", sorted(INGRESS_REQUIRED))
def test_missing_required_setting_names_it(name: str) -> None:
    env = {k: v for k, v in COMPLETE.items() if k != name}
    with pytest.raises(ConfigError, match=f"missing required setting {name}$"):
        load_settings(env, require=INGRESS_REQUIRED)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGRESS_PUBLIC_PORT", "eighty"),
        ("INGRESS_INTERNAL_PORT", "70000"),
        ("SLUICE_MAX_BODY_BYTES", "-1"),
        ("SLUICE_STANDBY_REPLICAS", "-1"),
        ("SLUICE_STANDBY_REPLICAS", "one"),
        ("SLUICE_BROKER_SESSION_TIMEOUT", "soon"),
        # A heartbeat must come more often than the session times out.
        ("SLUICE_BROKER_HEARTBEAT_INTERVAL", "6s"),
        ("SLUICE_BROKER_HEARTBEAT_INTERVAL", "0"),
        # faust refuses a session timeout above the request timeout; say so at start-up.
        ("SLUICE_BROKER_SESSION_TIMEOUT", "91s"),
        ("SLUICE_HEADER_TIMEOUT", "0"),
        ("SLUICE_BODY_TIMEOUT", "later"),
        ("SLUICE_MAX_CONNECTIONS", "0"),
        ("SLUICE_MAX_CONNECTIONS", "many"),
    ],
)
def test_malformed_setting_names_it(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({**COMPLETE, name: value})


def test_ingress_connection_limits_have_defaults_and_read_durations() -> None:
    defaults = load_settings({})
    assert (defaults.header_timeout_s, defaults.body_timeout_s) == (10.0, 30.0)
    assert defaults.max_connections == 1000
    settings = load_settings(
        {
            "SLUICE_HEADER_TIMEOUT": "500ms",
            "SLUICE_BODY_TIMEOUT": "1m",
            "SLUICE_MAX_CONNECTIONS": "64",
        }
    )
    assert (settings.header_timeout_s, settings.body_timeout_s) == (0.5, 60.0)
    assert settings.max_connections == 64


def test_scale_out_defaults_move_a_dead_workers_partitions_within_seconds() -> None:
    settings = load_settings({})
    assert settings.standby_replicas == 0
    assert (settings.broker_session_timeout_s, settings.broker_heartbeat_interval_s) == (6.0, 1.0)
    assert settings.broker_request_timeout_s == 90.0


def test_scale_out_settings_are_read_from_the_environment() -> None:
    settings = load_settings(
        {
            "SLUICE_STANDBY_REPLICAS": "1",
            "SLUICE_BROKER_SESSION_TIMEOUT": "2m",
            "SLUICE_BROKER_HEARTBEAT_INTERVAL": "500ms",
            "SLUICE_BROKER_REQUEST_TIMEOUT": "3m",
        }
    )
    assert settings.standby_replicas == 1
    assert settings.broker_session_timeout_s == 120.0
    assert settings.broker_heartbeat_interval_s == 0.5
    assert settings.broker_request_timeout_s == 180.0


def test_worker_app_gets_the_scale_out_settings(tmp_path: Path) -> None:
    from streams.app import create_worker

    env = {
        "SLUICE_STANDBY_REPLICAS": "2",
        "SLUICE_BROKER_SESSION_TIMEOUT": "8s",
        "SLUICE_BROKER_HEARTBEAT_INTERVAL": "2s",
        "SLUICE_STATE_DIR": str(tmp_path),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "DATABASE_URL": "postgresql://127.0.0.1:1/none",
    }
    conf = create_worker(load_settings(env)).topology.app.conf
    assert conf.table_standby_replicas == 2
    assert (conf.broker_session_timeout, conf.broker_heartbeat_interval) == (8.0, 2.0)
    assert conf.broker_request_timeout == 90.0


def test_partner_settings_are_grouped_by_partner() -> None:
    settings = load_settings({"PARTNER_ACME_SECRET": "s", "PARTNER_ACME_DELIVERY_URL": "http://x"})
    assert settings.partners == {"acme": {"secret": "s", "delivery_url": "http://x"}}


def test_redacted_settings_hide_secrets() -> None:
    shown = load_settings(COMPLETE).redacted()
    assert "whsec_a" not in str(shown)
    assert shown["stripe_webhook_secrets"] == "***"


def test_sluice_ingress_without_a_secret_stops_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_SECRET", "_TOKEN"))}
    env |= {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "RAZORPAY_WEBHOOK_SECRET": "x"}
    result = subprocess.run(
        [sys.executable, "-m", "sluice", "ingress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sluice: missing required setting STRIPE_WEBHOOK_SECRET"
    ]


def test_exactly_once_is_refused_with_the_reason() -> None:
    # faust-streaming 0.15's transactions lose records that cross topic groups
    # (docs/decisions.md, Scale-out): refusing is safer than offering it.
    with pytest.raises(ConfigError, match="exactly_once is refused"):
        load_settings({"SLUICE_PROCESSING_GUARANTEE": "exactly_once"})


def test_consumer_fetch_wait_is_a_duration() -> None:
    assert load_settings({}).consumer_fetch_wait_s == 0.05
    assert load_settings({"SLUICE_CONSUMER_FETCH_WAIT": "10ms"}).consumer_fetch_wait_s == 0.01


def test_every_bad_variable_gets_its_own_line() -> None:
    env = {"INGRESS_PUBLIC_PORT": "eighty", "SLUICE_DEDUPE_WINDOW": "a month"}
    with pytest.raises(ConfigError) as raised:
        load_settings(env, require={"DATABASE_URL"})
    lines = str(raised.value).splitlines()
    assert lines[0] == "missing required setting DATABASE_URL"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "malformed setting INGRESS_PUBLIC_PORT",
        "malformed setting SLUICE_DEDUPE_WINDOW",
    ]


def test_a_malformed_secret_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"SLUICE_REPLICATION_FACTOR": "0", "STRIPE_WEBHOOK_SECRET": "whsec_a"})
    assert "whsec_a" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("30d", 2592000.0),
        (" 1.5 ", 1.5),
        ("10MS", 0.01),
        (".5s", 0.5),
    ],
)
def test_one_duration_parser_reads_every_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5s", "5x", "inf", "nan", "1e3", "5 minutes", "s"])
def test_duration_parser_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_every_duration_setting_takes_units() -> None:
    settings = load_settings(
        {
            "SLUICE_ORPHAN_HOLD": "2h",
            "SLUICE_REPLY_TIMEOUT": "1500ms",
            "SLUICE_DEDUPE_WINDOW": "7d",
            "SLUICE_PUBLISH_TIMEOUT_S": "2",
        }
    )
    assert (settings.orphan_hold_s, settings.reply_timeout_s) == (7200.0, 1.5)
    assert (settings.dedupe_window_s, settings.publish_timeout_s) == (7 * 86400.0, 2.0)


def test_constructing_settings_never_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_APP_ID", "from-environment")
    assert Settings().app_id == "sluice"
    assert load_settings().app_id == "from-environment"


def test_worker_names_come_from_settings_not_the_environment(tmp_path: Path) -> None:
    from streams.app import create_worker

    env = {
        "SLUICE_APP_ID": "settings-app",
        "SLUICE_SEARCH_INDEX_PREFIX": "t1-",
        "SLUICE_STATE_DIR": str(tmp_path),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "DATABASE_URL": "postgresql://127.0.0.1:1/none",
    }
    ctx = create_worker(load_settings(env))
    assert ctx.topology.app.conf.id == "settings-app"
    assert ctx.search_index_prefix == "t1-"


def test_every_setting_is_documented_in_design_section_7() -> None:
    # Adding a setting is one line of Settings and one row of docs/design.md §7's table.
    design = (Path(__file__).parent.parent / "docs" / "design.md").read_text()
    section = design.split("## 7.", 1)[1].split("\n## 8.", 1)[0]
    for name, field in Settings.model_fields.items():
        if field.alias is None:
            continue  # partners: PARTNER_<ID>_* variables, documented as a pattern
        assert f"`{field.alias}`" in section, name
