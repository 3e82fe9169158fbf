"""Properties that must hold for any input (hypothesis)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_service.domain.model import ChargeType, ImagePricing, LaunchPricing, OsKind
from billing_service.domain.price_book import load_price_book
from chassis import pagination
from chassis.convert import decimal_of, money
from chassis.errors import InvalidArgument

BOOK = load_price_book()
nano_amounts = st.decimals(min_value=Decimal("-1e12"), max_value=Decimal("1e12"), places=9, allow_nan=False,
                           allow_infinity=False)


@given(nano_amounts)
def test_money_round_trips_exactly(amount: Decimal) -> None:
    assert decimal_of(money("USD", amount)) == amount


# Keys are what the services put in tokens: no control characters (decode_page_token refuses those).
@given(st.text(st.characters(exclude_categories=["Cc"]), max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_page_tokens_round_trip_and_refuse_other_filters(key: str, filters: str, other: str) -> None:
    made_for = pagination.fingerprint(filters)
    token = pagination.encode_page_token(key, made_for)
    assert pagination.decode_page_token(token, made_for) == key
    if other != filters:  # a token made for other filters is refused
        with pytest.raises(InvalidArgument) as refused:
            pagination.decode_page_token(token, pagination.fingerprint(other))
        assert refused.value.reason == "INVALID_PAGE_TOKEN"


@given(st.text(max_size=200))
def test_any_page_token_is_either_valid_or_invalid_argument(token: str) -> None:
    try:
        pagination.decode_page_token(token, pagination.fingerprint("f"))
    except InvalidArgument as refused:
        if refused.reason != "INVALID_PAGE_TOKEN":
            raise AssertionError(f"refused as {refused.reason}, not INVALID_PAGE_TOKEN") from refused


@given(
    region=st.sampled_from(sorted(BOOK.instance_prices)),
    count=st.integers(1, 100),
    charge=st.sampled_from(list(ChargeType)),
    period=st.sampled_from([1, 2, 6, 12, 24, 36, 48, 60]),
    os_kind=st.sampled_from(list(OsKind)),
    product=st.sampled_from(["", *BOOK.marketplace_products]),
    data=st.data(),
)
def test_a_quote_total_is_the_exact_sum_of_its_lines(region: str, count: int, charge: ChargeType, period: int,
                                                     os_kind: OsKind, product: str, data: st.DataObject) -> None:
    instance_type = data.draw(st.sampled_from(sorted(BOOK.instance_prices[region])))
    launch = LaunchPricing(region, instance_type, count, charge, period if charge is ChargeType.PREPAID else 0,
                           ImagePricing("img-00000000", os_kind, product))
    quote = BOOK.quote(launch)
    assert quote.total == sum(line.unit_price * line.quantity for line in quote.lines)
    assert all(line.quantity == launch.quantity() for line in quote.lines)
    assert decimal_of(money(quote.currency, quote.total)) == quote.total
