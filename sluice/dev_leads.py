"""``sluice dev``'s demo partners, and the commands it prints to send them a lead.

Three partners, one per inbound mode, each delivering to the local CRM
(``devstack/crm.py``) with a different outbound auth:

| partner | inbound | delivery |
|---|---|---|
| ``demo-hmac`` | ``X-Partner-Signature`` (hex HMAC-SHA256) | plain |
| ``demo-bearer`` | ``Authorization: Bearer`` | bearer token |
| ``demo-sw`` | Standard Webhooks (``whsec_``) | signed with Standard Webhooks |

They are written as the partners file ``DIR/partners.json`` (``SLUICE_PARTNERS_FILE``),
unless the developer set a partners file of their own. Secrets and tokens are generated
once and kept across runs (read back from the file), like the secrets in ``dev.env``, so
a printed command keeps working; the CRM's URL is written afresh every run.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from sluice.lead_send import LEADS_PATH

__all__ = [
    "DEMO_BEARER",
    "DEMO_HMAC",
    "DEMO_SW",
    "demo_partners",
    "lead_commands",
    "read_partners_file",
    "write_partners_file",
]

DEMO_HMAC: Final = "demo-hmac"
DEMO_BEARER: Final = "demo-bearer"
DEMO_SW: Final = "demo-sw"


def _whsec() -> str:
    # 24 bytes, the length of the Standard Webhooks examples: unpadded base64.
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def demo_partners(crm_url_for: Callable[[str], str], earlier: Mapping[str, Any]) -> dict[str, Any]:
    """The partners file's content; secrets from ``earlier`` (an earlier run's file)
    are kept, missing ones generated."""

    def kept(partner_id: str, *path: str) -> str | None:
        value: Any = earlier.get(partner_id)
        for name in path:
            value = value.get(name) if isinstance(value, Mapping) else None
        if isinstance(value, list):
            value = value[0] if value else None
        return value if isinstance(value, str) and value else None

    def inbound(partner_id: str, make: Callable[[], str]) -> list[str]:
        return [kept(partner_id, "secrets") or make()]

    partners = {
        DEMO_HMAC: {
            "auth": "hmac",
            "secrets": inbound(DEMO_HMAC, lambda: "hmac_dev_" + secrets.token_hex(16)),
            "delivery": {"url": crm_url_for(DEMO_HMAC), "auth": "none"},
        },
        DEMO_BEARER: {
            "auth": "bearer",
            "secrets": inbound(DEMO_BEARER, lambda: "tok_dev_" + secrets.token_hex(16)),
            "delivery": {
                "url": crm_url_for(DEMO_BEARER),
                "auth": "bearer",
                "token": kept(DEMO_BEARER, "delivery", "token")
                or "crm_dev_" + secrets.token_hex(16),
            },
        },
        DEMO_SW: {
            "auth": "standard-webhooks",
            "secrets": inbound(DEMO_SW, _whsec),
            "delivery": {
                "url": crm_url_for(DEMO_SW),
                "auth": "standard-webhooks",
                "secret": kept(DEMO_SW, "delivery", "secret") or _whsec(),
            },
        },
    }
    return {"partners": partners}


def read_partners_file(path: Path) -> dict[str, Any]:
    """The ``partners`` table of an earlier run's file; ``{}`` if missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    partners = data.get("partners") if isinstance(data, dict) else None
    return partners if isinstance(partners, dict) else {}


def write_partners_file(path: Path, content: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)  # it holds secrets


def lead_commands(public_url: str, env_file: Path, partners: Mapping[str, Any]) -> list[str]:
    """One copy-pasteable command per demo partner (bash, from the repository root)."""
    url = f"{public_url}{LEADS_PATH}"

    def body(partner_id: str, prefix: str) -> str:
        # A fresh externalLeadId per run of the command: a new lead each time.
        return (
            f'\'{{"partnerId":"{partner_id}","externalLeadId":"{prefix}-\'$(date +%s)$RANDOM\'",'
            '"payload":{"name":"Ana Demo","email":"ana@example.com","listingId":"lst-42"}}\''
        )

    hmac_secret = partners[DEMO_HMAC]["secrets"][0]
    token = partners[DEMO_BEARER]["secrets"][0]
    return [
        f"body={body(DEMO_HMAC, 'hmac')}; curl -sS -X POST {url}"
        " -H 'Content-Type: application/json'"
        f' -H "X-Partner-Signature: $(printf \'%s\' "$body" | openssl dgst -sha256'
        f" -hmac '{hmac_secret}' -hex | sed 's/^.* //')\" --data-binary \"$body\"",
        f"curl -sS -X POST {url} -H 'Authorization: Bearer {token}'"
        f" -H 'Content-Type: application/json' -d {body(DEMO_BEARER, 'bearer')}",
        f"(set -a; . {env_file}; set +a; .venv/bin/sluice leads send --partner {DEMO_SW})",
    ]
