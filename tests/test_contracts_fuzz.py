"""Property tests for the event contracts.

Whatever arrives on a topic, decoding yields an event or a ContractError, never another
exception (the worker dead-letters ContractErrors and would crash on anything else); and on
generated near-valid events the validator and the JSON Schema files agree.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from importlib.resources import files
from typing import Any

import fastjsonschema
import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from riskstream import contracts
from riskstream.contracts import ContractError, Label, MarketEvent, Request, Transaction

SCHEMA_FILES = {"transaction": "transaction.json", "market": "market_indicator.json",
                "label": "label.json", "request": "request.json"}  # fmt: skip
STRUCTS = {"transaction": Transaction, "market": MarketEvent, "label": Label, "request": Request}
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@cache
def schema_validator(kind: str) -> Callable[[Any], Any]:
    text = files("riskstream.schemas").joinpath(SCHEMA_FILES[kind]).read_text(encoding="utf-8")
    return fastjsonschema.compile(copy.deepcopy(json.loads(text)))


def schema_accepts(kind: str, raw: bytes) -> bool:
    """Strict JSON (UTF-8, no NaN/Infinity, no lone surrogates), then the schema file."""

    def reject_constant(name: str) -> None:
        raise ValueError(name)

    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
        json.dumps(document, ensure_ascii=False).encode("utf-8")  # lone surrogates fail here
        schema_validator(kind)(document)
    except (ValueError, RecursionError, fastjsonschema.JsonSchemaValueException):
        return False
    return True


def decode_or_error(kind: str, raw: bytes) -> Any:
    """The decoded event or the ContractError; any other exception fails the test."""
    try:
        decoded = contracts.DECODERS[kind](raw)
    except ContractError as error:
        assert error.code in contracts.ERROR_CODES
        assert error.detail and len(error.detail) < 400
        return error
    assert isinstance(decoded, STRUCTS[kind])
    return decoded


# --- any bytes ---------------------------------------------------------------------------------

JSON_FRAGMENTS = [b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"\\", b"\\u", b"d800",
                  b"NaN", b"-Infinity", b"1e400", b"-0", b"0.5", b"null", b"true", b"\xff",
                  b"\xed\xa0\x80", b"\xc3\xa9", b'"timestamp"', b'"amount"', b'"indicators"',
                  b'"2018-08-08T10:15:03Z"', b'"fraud"', b'"transaction_id"', b'"x"']  # fmt: skip
json_like_bytes = st.lists(st.sampled_from(JSON_FRAGMENTS), max_size=40).map(b"".join)


@FUZZ
@given(raw=st.binary(max_size=400) | json_like_bytes, kind=st.sampled_from(list(STRUCTS)))
def test_any_bytes_give_an_event_or_a_contract_error(raw: bytes, kind: str) -> None:
    decode_or_error(kind, raw)


# --- any JSON document -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # NaN and infinities become NaN/Infinity tokens
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=15,
)


@FUZZ
@given(document=json_values, kind=st.sampled_from(list(STRUCTS)), ascii_only=st.booleans())
def test_any_json_document_gives_an_event_or_a_contract_error(
    document: Any, kind: str, ascii_only: bool
) -> None:
    text = json.dumps(document, ensure_ascii=ascii_only)
    raw = text.encode("utf-8", errors="surrogatepass")  # lone surrogates become invalid UTF-8
    result = decode_or_error(kind, raw)
    assert isinstance(result, ContractError) == (not schema_accepts(kind, raw))


# --- near-valid events: the validator and the schema files agree -------------------------------

offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
moments = st.datetimes(
    min_value=datetime(1960, 1, 1),
    max_value=datetime(2110, 12, 31),
    timezones=st.just(UTC) | offsets,
)


@st.composite
def timestamp_texts(draw: st.DrawFn) -> str:
    """RFC 3339 timestamps and the ways producers get them slightly wrong."""
    moment = draw(moments)
    text = moment.isoformat()
    style = draw(st.sampled_from(["iso", "Z", "space", "lower", "no-colon", "naive", "nanos",
                                  "too-precise", "mutated", "date-only"]))  # fmt: skip
    if style == "Z":
        text = moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"
    elif style == "space":
        text = text.replace("T", " ")
    elif style == "lower":
        text = moment.astimezone(UTC).replace(tzinfo=None).isoformat().lower() + "z"
    elif style == "no-colon":
        text = text[:-3] + text[-2:]
    elif style == "naive":
        text = moment.replace(tzinfo=None).isoformat()
    elif style in ("nanos", "too-precise"):
        digits = 9 if style == "nanos" else 10
        fraction = str(draw(st.integers(min_value=0, max_value=10**digits - 1))).zfill(digits)
        text = moment.replace(tzinfo=None, microsecond=0).isoformat() + f".{fraction}Z"
    elif style == "mutated":
        position = draw(st.integers(min_value=0, max_value=len(text) - 1))
        text = text[:position] + draw(st.sampled_from("0123456789:-+TZ. x")) + text[position + 1 :]
    elif style == "date-only":
        text = moment.date().isoformat()
    return text


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-10.0, max_value=1e4),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([0, -0.0, 1e-300, 5e-324, 1e9, 1e9 + 1, 1e12, 1e12 * 1.0000001, 1e15, 1e16]),
)
ids = st.text(min_size=0, max_size=3) | st.text(min_size=126, max_size=130)
odd_values = st.none() | st.booleans() | st.lists(st.integers(), max_size=2) | st.just({})


def field_values(kind: str, name: str) -> st.SearchStrategy[Any]:
    """Plausible values for one field: right type, edge values, near misses."""
    if "timestamp" in name:
        plausible: st.SearchStrategy[Any] = timestamp_texts()
    elif name in ("amount", "open", "high", "low", "close", "volume"):
        plausible = numbers
    elif name == "currency":
        plausible = st.sampled_from(["EUR", "USD", "eur", "EURO", "", "E1R", None]) | st.text(
            max_size=4
        )
    elif name == "fraud":
        plausible = st.booleans() | st.sampled_from([0, 1, "true"])
    elif name == "indicators":
        plausible = st.dictionaries(
            st.text(max_size=3) | st.text(min_size=63, max_size=66),
            numbers | odd_values,
            max_size=3,
        ) | st.dictionaries(st.text(min_size=1, max_size=4), st.just(1.0), min_size=62, max_size=66)
    elif name == "features":
        plausible = st.dictionaries(
            st.text(max_size=3) | st.text(min_size=127, max_size=130),
            numbers | odd_values | st.text(max_size=3) | st.text(min_size=255, max_size=258),
            max_size=3,
        )
    else:
        plausible = ids
    return plausible


@st.composite
def near_valid_events(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "transaction": {"transaction_id": "tx-1", "timestamp": "2018-08-08T10:15:03Z",
                        "customer_id": "c-1", "terminal_id": "t-1", "amount": 12.5},
        "market": {"instrument": "GSPC", "timestamp": "2018-08-08T21:00:00Z", "open": 2.0,
                   "high": 3.0, "low": 1.0, "close": 2.5, "volume": 100.0},
        "label": {"transaction_id": "tx-1", "timestamp": "2018-08-15T10:15:03Z",
                  "transaction_timestamp": "2018-08-08T10:15:03Z", "customer_id": "c-1",
                  "terminal_id": "t-1", "fraud": True},
        "request": {"event_id": "app-1", "timestamp": "2024-05-01T09:00:00Z",
                    "entity_id": "b-1", "model": "credit", "features": {"age": 45}},
    }[kind]  # fmt: skip
    if kind == "market" and draw(st.booleans()):
        low, first, second, high = sorted(
            draw(st.lists(st.floats(min_value=1e-6, max_value=1e6), min_size=4, max_size=4))
        )
        document |= {"low": low, "open": first, "close": second, "high": high}
    names = [field.encode_name for field in msgspec.structs.fields(STRUCTS[kind])]
    chosen = draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
    if draw(st.booleans()):  # timestamps have the richest rules: vary one in half the cases
        chosen.append(draw(st.sampled_from([name for name in names if "timestamp" in name])))
    for name in chosen:
        if draw(st.integers(min_value=0, max_value=9)) == 0:
            document.pop(name, None)
        elif draw(st.sampled_from(range(8))) == 7:
            document[name] = draw(odd_values)
        else:
            document[name] = draw(field_values(kind, name))
    if draw(st.booleans()):
        document[draw(st.text(max_size=8))] = draw(json_values)  # unknown extra field
    return document


@pytest.mark.parametrize("kind", list(STRUCTS))
@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_validator_and_schema_agree_on_near_valid_events(kind: str, data: st.DataObject) -> None:
    document = data.draw(near_valid_events(kind))
    raw = json.dumps(document).encode()
    result = decode_or_error(kind, raw)
    accepted_by_schema = schema_accepts(kind, raw)
    event(result.code if isinstance(result, ContractError) else "accepted")
    if isinstance(result, ContractError) and result.code == "inconsistent":
        # the one rule JSON Schema cannot express: everything else must be valid
        assert accepted_by_schema
        assert not document["low"] <= document["open"] <= document["high"] or not (
            document["low"] <= document["close"] <= document["high"]
        )
        return
    assert accepted_by_schema == (not isinstance(result, ContractError)), result
    if not isinstance(result, ContractError):
        for field in msgspec.structs.fields(STRUCTS[kind]):
            value = getattr(result, field.name)
            if field.encode_name in document and not isinstance(value, datetime):
                assert value == document[field.encode_name]
