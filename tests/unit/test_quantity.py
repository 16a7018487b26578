from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtfleet.api.quantity import QuantityError, parse_bytes, parse_millicores, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4Gi", Decimal(4 * 2**30)),
        ("1536Mi", Decimal(1536 * 2**20)),
        ("250m", Decimal("0.25")),
        ("2", Decimal(2)),
        ("1e3", Decimal(1000)),
        ("1.5G", Decimal(1_500_000_000)),
        ("0.5Ki", Decimal(512)),
        ("100n", Decimal("1e-7")),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "4GiB", "four", "1.2.3", "--1"])
def test_rejects_garbage(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_rounding_is_up_like_kubernetes() -> None:
    assert parse_millicores("0.0001") == 1
    assert parse_millicores("1500m") == 1500
    assert parse_bytes("1.5") == 2


@given(st.integers(min_value=0, max_value=2**20), st.sampled_from(["Ki", "Mi", "Gi", "Ti"]))
def test_binary_suffixes_are_exact(n: int, suffix: str) -> None:
    power = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40}[suffix]
    assert parse_bytes(f"{n}{suffix}") == n * 2**power
