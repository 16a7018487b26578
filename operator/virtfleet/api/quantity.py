"""Kubernetes resource quantities as exact numbers (the API models refuse what does not parse)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|([a-zA-Z]*))$")


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def parse_quantity(text: str) -> Decimal:
    """The exact value of a quantity: "1536Mi" -> 1610612736, "250m" -> 0.25, "1e3" -> 1000."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity")
    number, exponent, suffix = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation as error:  # pragma: no cover - the regex admits only decimals
        raise QuantityError(f"{text!r} is not a Kubernetes quantity") from error
    if suffix and suffix not in _SUFFIXES:
        raise QuantityError(f"{text!r} has an unknown suffix {suffix!r}")
    try:
        if exponent:
            return value * (Decimal(10) ** int(exponent[1:]))
        return value * _SUFFIXES[suffix or ""]
    except ArithmeticError as error:  # decimal.Overflow and friends: far outside any real quantity
        raise QuantityError(f"{text!r} is out of range") from error


def parse_bytes(text: str) -> int:
    """A memory or storage quantity in whole bytes (rounded up, as Kubernetes does)."""
    value = parse_quantity(text)
    whole = int(value.to_integral_value(rounding="ROUND_CEILING"))
    return whole


def parse_millicores(text: str) -> int:
    """A CPU quantity in millicores (rounded up, as Kubernetes does)."""
    return int((parse_quantity(text) * 1000).to_integral_value(rounding="ROUND_CEILING"))
