"""Driver errors of the Postgres connectors as Sluice errors.

:func:`translate_error` is the one place that decides what a psycopg or pool error
means: the projection writer and the ingress's payment-status reader both use it.
"""

from __future__ import annotations

from typing import Final

import psycopg
from psycopg_pool import PoolTimeout, TooManyRequests

from base.errors import PermanentError, SluiceError, TransientError

__all__ = ["translate_error"]

_TRANSIENT_SQLSTATE_CLASSES: Final = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback: serialization_failure, deadlock_detected
        "53",  # insufficient resources: too many connections, disk full
        "57",  # operator intervention: admin/crash shutdown, cannot connect now, query canceled
        "58",  # system error (I/O)
    }
)
_TRANSIENT_SQLSTATES: Final = frozenset({"55P03"})  # lock_not_available (lock_timeout)


def translate_error(exc: BaseException) -> SluiceError | None:
    """The Sluice error a psycopg / pool error stands for, or ``None`` to let it crash.

    Transient: connection failures and any ``OperationalError``, SQLSTATE classes 08,
    40 (serialization failure, deadlock), 53, 57 (admin shutdown, statement timeout),
    58 and ``lock_not_available``, pool timeouts. Permanent: classes 22 (data) and 23
    (constraints) — the input was bad. Everything else (undefined table, syntax errors:
    a deployment or code bug) is ``None``. Messages carry the class, SQLSTATE and
    primary message only, never row values.
    """
    if isinstance(exc, PoolTimeout | TooManyRequests):
        return TransientError(f"postgres: no connection available: {exc}")
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError) or state[:2] in {"22", "23"}:
        return PermanentError(f"postgres rejected the data: {_describe(exc)}")
    if (
        isinstance(exc, psycopg.OperationalError)
        or state[:2] in _TRANSIENT_SQLSTATE_CLASSES
        or state in _TRANSIENT_SQLSTATES
    ):
        return TransientError(f"postgres unavailable: {_describe(exc)}")
    return None


def _describe(exc: psycopg.Error) -> str:
    sqlstate = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    lines = str(exc).strip().splitlines()
    message = exc.diag.message_primary or (lines[0] if lines else "")
    return f"{type(exc).__name__}{sqlstate}: {message}"
