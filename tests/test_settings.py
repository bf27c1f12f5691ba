"""Settings are validated at start-up; a missing secret stops the process with one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sluice.errors import ConfigError
from sluice.settings import INGRESS_REQUIRED, load_settings

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
    ],
)
def test_malformed_setting_names_it(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({**COMPLETE, name: value})


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
