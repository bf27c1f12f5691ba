"""The Postgres projection connector (DESIGN §6), split by job.

- ``client.py``: :class:`PostgresProjection`, the pool and its narrow typed methods;
- ``guards.py``: the billing and webhook upserts' SQL, status guards generated from
  ``schemas/statuses.py``;
- ``statements.py``: the orders upsert and the reads' SELECTs;
- ``params.py``: typed upserts (``schemas/upserts.py``) as SQL parameters, per batch;
- ``rows.py``: the rows read back;
- ``errors.py``: driver errors as ``TransientError``/``PermanentError``.

The projection *rules* (which event writes which upsert, which status) are not here:
``streams.domain.projection`` plans them.
"""

from connectors.postgres.client import PROJECTION_TABLES, PostgresProjection, ProjectionTable
from connectors.postgres.errors import translate_error
from connectors.postgres.rows import (
    CheckoutSession,
    Invoice,
    OrderRow,
    Payment,
    Refund,
    Subscription,
    WebhookEvent,
)

__all__ = [
    "PROJECTION_TABLES",
    "CheckoutSession",
    "Invoice",
    "OrderRow",
    "Payment",
    "PostgresProjection",
    "ProjectionTable",
    "Refund",
    "Subscription",
    "WebhookEvent",
    "translate_error",
]
