"""Unit tests for ``base.partners``: the registry from a file (JSON, TOML) and the
``PARTNER_<ID>_*`` environment, and one clear error line per bad entry."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from base.errors import ConfigError
from base.partners import Partner, PartnerRegistry, env_partner_fields, load_partners

WHSEC = "whsec_" + base64.b64encode(b"w" * 32).decode()  # 32 bytes: base64 ends in "="
WHSEC_UNPADDED = WHSEC.rstrip("=")
WHSEC_24 = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks vector's
SECRETS = ("hmac-s3cret-one", "hmac-s3cret-two", "bearer-t0ken", "crm-t0ken", WHSEC)


def _json_file(tmp_path: Path, partners: dict[str, Any]) -> Path:
    path = tmp_path / "partners.json"
    path.write_text(json.dumps({"partners": partners}), encoding="utf-8")
    return path


def _load(
    partners: dict[str, Any] | None = None, env: dict[str, str] | None = None, *, tmp: Path
) -> PartnerRegistry:
    path = None if partners is None else _json_file(tmp, partners)
    return load_partners(path, env_partner_fields(env or {}))


def _partner(registry: PartnerRegistry, partner_id: str) -> Partner:
    partner = registry.get(partner_id)
    assert partner is not None
    return partner


def _problems(
    partners: dict[str, Any] | None = None, env: dict[str, str] | None = None, *, tmp: Path
) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        _load(partners, env, tmp=tmp)
    return str(refused.value).splitlines()


# -- loading -----------------------------------------------------------------------------


def test_json_file_gives_the_partners(tmp_path: Path) -> None:
    registry = _load(
        {
            "acme": {
                "auth": "hmac",
                "secrets": ["hmac-s3cret-one", "hmac-s3cret-two"],
                "mapping": {"email": "contact.email"},
                "delivery": {
                    "url": "http://127.0.0.1:8080/leads",
                    "auth": "bearer",
                    "token": "crm-t0ken",
                    "timeout": "2s",
                    "max_attempts": 3,
                },
            },
            "initech": {"auth": "bearer", "secrets": ["bearer-t0ken"], "enabled": False},
        },
        tmp=tmp_path,
    )

    assert len(registry) == 2
    acme = _partner(registry, "acme")
    assert (acme.auth, acme.secrets, acme.enabled) == (
        "hmac",
        ("hmac-s3cret-one", "hmac-s3cret-two"),
        True,
    )
    assert acme.path_of("email") == "contact.email"
    assert acme.path_of("phone") == "phone"  # unmapped: the same name
    assert acme.delivery.url == "http://127.0.0.1:8080/leads"
    assert (acme.delivery.timeout_s, acme.delivery.max_attempts) == (2.0, 3)
    initech = _partner(registry, "initech")
    assert initech.enabled is False
    assert initech.delivery.enabled is False  # no delivery table: held, no URL needed


def test_toml_file_gives_the_same_partners(tmp_path: Path) -> None:
    path = tmp_path / "partners.toml"
    path.write_text(
        f"""
[partners.hooli]
auth = "standard-webhooks"
secrets = ["{WHSEC}", "{WHSEC_24}"]
mapping = {{ listingId = "property.ref" }}

[partners.hooli.delivery]
url = "http://127.0.0.1:9000/crm"
auth = "standard-webhooks"
secret = "{WHSEC}"
""",
        encoding="utf-8",
    )

    hooli = _partner(load_partners(path, {}), "hooli")

    assert hooli.auth == "standard-webhooks"
    assert hooli.secrets == (WHSEC, WHSEC_24)
    assert hooli.path_of("listingId") == "property.ref"
    assert (hooli.delivery.auth, hooli.delivery.secret) == ("standard-webhooks", WHSEC)


def test_environment_adds_partners_to_the_file(tmp_path: Path) -> None:
    registry = _load(
        {"acme": {"auth": "hmac", "secrets": ["hmac-s3cret-one"]}},
        {"PARTNER_GLOBEX_TOKEN": "bearer-t0ken"},
        tmp=tmp_path,
    )
    assert sorted(p.id for p in registry) == ["acme", "globex"]


def test_environment_overrides_the_file_field_by_field(tmp_path: Path) -> None:
    registry = _load(
        {
            "acme": {
                "auth": "hmac",
                "secrets": ["hmac-s3cret-one"],
                "mapping": {"email": "contact.email"},
                "delivery": {"url": "http://127.0.0.1:1/old", "max_attempts": 3},
            }
        },
        {
            "PARTNER_ACME_SECRET": "hmac-s3cret-two, hmac-s3cret-one",
            "PARTNER_ACME_ENABLED": "false",
            "PARTNER_ACME_DELIVERY_URL": "http://127.0.0.1:2/new",
        },
        tmp=tmp_path,
    )

    acme = _partner(registry, "acme")
    assert acme.secrets == ("hmac-s3cret-two", "hmac-s3cret-one")  # comma-separated list
    assert acme.enabled is False
    assert acme.path_of("email") == "contact.email"  # untouched fields stay
    assert acme.delivery.url == "http://127.0.0.1:2/new"
    assert acme.delivery.max_attempts == 3


@pytest.mark.parametrize(
    ("variables", "auth"),
    [
        ({"PARTNER_ACME_TOKEN": "bearer-t0ken"}, "bearer"),
        ({"PARTNER_ACME_SECRET": WHSEC}, "standard-webhooks"),
        ({"PARTNER_ACME_SECRET": f"{WHSEC_UNPADDED},{WHSEC_24}"}, "standard-webhooks"),
        ({"PARTNER_ACME_SECRET": "hmac-s3cret-one"}, "hmac"),
        ({"PARTNER_ACME_SECRET": WHSEC, "PARTNER_ACME_AUTH": "hmac"}, "hmac"),  # said wins
    ],
)
def test_auth_is_inferred_from_the_environment(
    tmp_path: Path, variables: dict[str, str], auth: str
) -> None:
    assert _partner(_load(env=variables, tmp=tmp_path), "acme").auth == auth


def test_environment_ids_are_lower_cased_and_keep_underscores() -> None:
    assert env_partner_fields(
        {"PARTNER_ACME_CO_DELIVERY_TOKEN": "t", "PARTNER_ACME_CO_TOKEN": "u", "PARTNER_X_": "v"}
    ) == {"acme_co": {"delivery_token": "t", "token": "u"}}


def test_no_file_and_no_variables_is_an_empty_registry() -> None:
    assert len(load_partners(None, {})) == 0


# -- one error line per bad entry ---------------------------------------------------------

BAD_ENTRIES: dict[str, tuple[dict[str, Any], str]] = {
    # partner id: (entry, what its one line must say after "partner <id>: ")
    "Bad Id!": ({"auth": "hmac", "secrets": ["hmac-s3cret-one"]}, "id: must be lower-case"),
    "unknown-auth": ({"auth": "carrier-pigeon", "secrets": ["hmac-s3cret-one"]}, "auth:"),
    "no-secrets": ({"auth": "hmac", "secrets": []}, "needs at least one of its secrets"),
    "no-tokens": ({"auth": "bearer", "secrets": ""}, "needs at least one of its tokens"),
    "not-whsec": ({"auth": "standard-webhooks", "secrets": ["hmac-s3cret-one"]}, "whsec_"),
    "short-whsec": ({"auth": "standard-webhooks", "secrets": ["whsec_c2hvcnQ="]}, "24 bytes"),
    "not-base64": ({"auth": "standard-webhooks", "secrets": ["whsec_!!!!"]}, "base64"),
    "bearer-crm": (
        {
            "auth": "hmac",
            "secrets": ["hmac-s3cret-one"],
            "delivery": {"url": "http://127.0.0.1:1/x", "auth": "bearer"},
        },
        "delivery.auth bearer needs delivery.token",
    ),
    "bad-url": (
        {"auth": "hmac", "secrets": ["hmac-s3cret-one"], "delivery": {"url": "ftp://x/y"}},
        "delivery.url: must be an http:// or https:// URL",
    ),
    "no-url": (
        {"auth": "hmac", "secrets": ["hmac-s3cret-one"], "delivery": {"enabled": True}},
        "delivery.url is required while delivery is enabled",
    ),
    "bad-mapping": (
        {"auth": "hmac", "secrets": ["hmac-s3cret-one"], "mapping": {"fax": "a.b"}},
        "'fax' is not one of",
    ),
    "typo": ({"auth": "hmac", "secrets": ["hmac-s3cret-one"], "secert": "x"}, "secert:"),
}


def test_every_bad_entry_is_one_clear_line(tmp_path: Path) -> None:
    good = {"good": {"auth": "hmac", "secrets": ["hmac-s3cret-one"]}}
    entries = {name: entry for name, (entry, _) in BAD_ENTRIES.items()}

    problems = _problems({**good, **entries}, tmp=tmp_path)

    assert len(problems) == len(BAD_ENTRIES)  # one each, the good one silent
    for name, (_, says) in BAD_ENTRIES.items():
        [line] = [p for p in problems if p.startswith(f"partner {name}: ")]
        assert says in line, line


@pytest.mark.parametrize("name", list(BAD_ENTRIES))
def test_each_bad_entry_alone_is_named(tmp_path: Path, name: str) -> None:
    entry, says = BAD_ENTRIES[name]
    [line] = _problems({name: entry}, tmp=tmp_path)
    assert line.startswith(f"partner {name}: ")
    assert says in line


def test_bad_environment_entries_are_named_too(tmp_path: Path) -> None:
    problems = _problems(
        env={
            "PARTNER_ACME_AUTH": "carrier-pigeon",
            "PARTNER_ACME_SECRET": "hmac-s3cret-one",
            "PARTNER_GLOBEX_TOKEN": "bearer-t0ken",
            "PARTNER_GLOBEX_DELIVERY_URL": "not a url",
            "PARTNER_HOOLI_SECRET": "hmac-s3cret-two",
            "PARTNER_HOOLI_DELIVERY_AUTH": "bearer",
        },
        tmp=tmp_path,
    )
    assert [p.split(":")[0] for p in problems] == [
        "partner acme",
        "partner globex",
        "partner hooli",
    ]


@pytest.mark.parametrize(
    "content", ["{not json", '{"partners": []}', "[1]", '{"partners": {"a": 1}}']
)
def test_unusable_file_is_one_line_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "partners.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_partners(path, {})
    [line] = str(refused.value).splitlines()
    assert line.startswith(("SLUICE_PARTNERS_FILE", "partner a: "))


def test_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SLUICE_PARTNERS_FILE"):
        load_partners(tmp_path / "absent.toml", {})


# -- no secret anywhere ------------------------------------------------------------------


def test_no_secret_in_any_error_text(tmp_path: Path) -> None:
    entries = {
        "bad-auth": {"auth": "nope", "secrets": ["hmac-s3cret-one"]},
        "bad-whsec": {"auth": "standard-webhooks", "secrets": ["hmac-s3cret-two"]},
        "bad-crm": {
            "auth": "bearer",
            "secrets": ["bearer-t0ken"],
            "delivery": {"url": "nope", "auth": "standard-webhooks", "secret": "crm-t0ken"},
        },
        "short": {"auth": "standard-webhooks", "secrets": [WHSEC, "whsec_c2hvcnQ="]},
    }
    text = "\n".join(_problems(entries, tmp=tmp_path))
    for secret in (*SECRETS, "c2hvcnQ"):
        assert secret not in text


def test_no_secret_in_any_repr(tmp_path: Path) -> None:
    registry = _load(
        {
            "acme": {
                "auth": "hmac",
                "secrets": ["hmac-s3cret-one", "hmac-s3cret-two"],
                "delivery": {"url": "http://127.0.0.1:1/x", "auth": "bearer", "token": "crm-t0ken"},
            },
            "initech": {"auth": "bearer", "secrets": ["bearer-t0ken"]},
            "hooli": {
                "auth": "standard-webhooks",
                "secrets": [WHSEC],
                "delivery": {
                    "url": "http://127.0.0.1:1/y",
                    "auth": "standard-webhooks",
                    "secret": WHSEC,
                },
            },
        },
        tmp=tmp_path,
    )
    shown = [repr(registry), *(repr(p) for p in registry), *(repr(p.delivery) for p in registry)]
    shown += [str(p) for p in registry]
    for text in shown:
        for secret in SECRETS:
            assert secret not in text, text
