"""Amounts in minor units, shown to people: ``format_minor(2500, "usd") == "25.00 USD"``.

Sluice carries every amount as a whole number of the currency's minor units (cents,
paise, yen) with an ISO 4217 code. To show one, the number of decimals (the ISO 4217
"minor unit") must come from the currency: 2500 USD is 25.00, 2500 JPY is 2,500, 2500
KWD is 2.500. The text is ``<amount> <CODE>``, digits grouped by commas: the same in
every locale and never ambiguous (``$`` alone is a dozen currencies). Pure.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

__all__ = ["check_currency", "currency_exponent", "format_minor"]

_CODE: Final = re.compile(r"[A-Za-z]{3}")

# ISO 4217 currencies whose minor unit is not 1/100; every other code has two decimals
# (also codes this table does not know: a new currency is far likelier to have two).
_EXPONENTS: Final[dict[str, int]] = {
    **dict.fromkeys(
        (
            "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF",
            "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}  # fmt: skip


def check_currency(currency: object) -> str:
    """The ISO 4217 code in upper case (``"usd"`` → ``"USD"``).

    :raises ValueError: not a string of three ASCII letters.
    """
    if not isinstance(currency, str) or not _CODE.fullmatch(currency):
        raise ValueError("a currency must be a three-letter ISO 4217 code such as usd")
    return currency.upper()


def currency_exponent(currency: str) -> int:
    """How many decimals the currency's minor unit has (2 unless ISO 4217 says else)."""
    return _EXPONENTS.get(check_currency(currency), 2)


def format_minor(amount_minor: object, currency: object) -> str:
    """``2500, "usd"`` → ``"25.00 USD"``; ``2500, "jpy"`` → ``"2,500 JPY"``;
    ``-150, "kwd"`` → ``"-0.150 KWD"``.

    :raises ValueError: the amount is not an ``int`` (floats and booleans neither: an
        amount in minor units is whole), or the currency is not a three-letter code.
    """
    if type(amount_minor) is not int:
        raise ValueError(f"an amount in minor units must be an integer, got {amount_minor!r}")
    code = check_currency(currency)
    exponent = _EXPONENTS.get(code, 2)
    major = Decimal(amount_minor).scaleb(-exponent)
    return f"{major:,.{exponent}f} {code}"
