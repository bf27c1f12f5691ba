"""``sluice leads send``: post a lead as a partner would, signed with its registry entry.

For trying the partner route by hand (``sluice dev`` prints it for its demo partners):
the partner comes from the same registry the ingress loads (``SLUICE_PARTNERS_FILE`` and
``PARTNER_<ID>_…``), and the request is signed per its inbound mode with its first
secret:

- ``hmac``: ``X-Partner-Signature`` = hex HMAC-SHA256 of the raw body;
- ``bearer``: ``Authorization: Bearer <token>``;
- ``standard-webhooks``: ``webhook-id`` (fresh), ``webhook-timestamp`` (now) and
  ``webhook-signature``, made by the ``standardwebhooks`` library.

The body is the file given (sent byte for byte), or a demo lead with a fresh
``externalLeadId``. Signing is pure (:func:`signed_headers`); only :func:`send_lead`
does IO.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

from standardwebhooks.webhooks import Webhook

from base.partners import Partner
from schemas.leads import lead_id

__all__ = ["LEADS_PATH", "demo_lead", "expected_lead_id", "send_lead", "signed_headers"]

LEADS_PATH = "/v1/webhooks/partner/leads"


def demo_lead(partner_id: str, external_lead_id: str | None = None) -> bytes:
    """A small lead of ``partner_id`` with the canonical fields at their default paths."""
    external = external_lead_id or f"demo-{uuid.uuid4().hex[:12]}"
    body = {
        "partnerId": partner_id,
        "externalLeadId": external,
        "payload": {
            "name": "Ana Demo",
            "email": "ana@example.com",
            "phone": "+15550100",
            "listingId": "lst-42",
            "message": "Is it still available?",
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def signed_headers(partner: Partner, body: bytes, now: dt.datetime) -> dict[str, str]:
    """The request headers of ``body`` from ``partner``, signed with its first secret."""
    secret = partner.secrets[0]
    headers = {"Content-Type": "application/json"}
    if partner.auth == "hmac":
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers["X-Partner-Signature"] = digest
    elif partner.auth == "bearer":
        headers["Authorization"] = f"Bearer {secret}"
    else:
        message_id = f"msg_{uuid.uuid4().hex}"
        headers["webhook-id"] = message_id
        headers["webhook-timestamp"] = str(int(now.timestamp()))
        headers["webhook-signature"] = Webhook(secret).sign(message_id, now, body.decode())
    return headers


def send_lead(url: str, partner: Partner, body: bytes, now: dt.datetime) -> tuple[int, str]:
    """POST ``body`` to ``url`` as ``partner``; the status and response text."""
    request = urllib.request.Request(  # noqa: S310 - a URL the operator gives
        url, data=body, headers=signed_headers(partner, body, now), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def expected_lead_id(body: bytes) -> str | None:
    """The id the ingress will give the lead in ``body``, when it names its ids."""
    try:
        parsed: Any = json.loads(body)
        return lead_id(str(parsed["partnerId"]), str(parsed["externalLeadId"]))
    except (ValueError, KeyError, TypeError):
        return None
