"""The event contracts: schema files, the msgspec validator, and proof that they agree.

Every sample below goes through both the JSON Schema file (compiled with fastjsonschema, after a
strict JSON parse) and ``riskstream.contracts``; they must accept and reject the same documents.
The few rules JSON Schema cannot express (byte and depth limits, market consistency, repeated
keys) are pinned in their own table so the divergence is deliberate and visible.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import pickle
import re
import timeit
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from importlib.resources import files
from typing import Any

import fastjsonschema
import msgspec
import pytest

from riskstream import contracts
from riskstream.contracts import (
    ERROR_CODES,
    AlertRecord,
    ContractError,
    DeadLetterRecord,
    Label,
    MarketEvent,
    Reason,
    Request,
    ScoreRecord,
    Transaction,
)

SCHEMA_FILES = {
    "transaction": "transaction.json",
    "market": "market_indicator.json",
    "label": "label.json",
    "request": "request.json",
    "score": "score.json",
    "alert": "alert.json",
    "dead_letter": "dead_letter.json",
}
INPUT_KINDS = ("transaction", "market", "label", "request")
STRUCTS: dict[str, type[msgspec.Struct]] = {
    "transaction": Transaction,
    "market": MarketEvent,
    "label": Label,
    "request": Request,
    "score": ScoreRecord,
    "alert": AlertRecord,
    "dead_letter": DeadLetterRecord,
}
OUTPUT_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "score": contracts.decode_score,
    "alert": contracts.decode_alert,
    "dead_letter": contracts.decode_dead_letter,
}
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


@cache
def load_schema(kind: str) -> dict[str, Any]:
    text = files("riskstream.schemas").joinpath(SCHEMA_FILES[kind]).read_text(encoding="utf-8")
    return json.loads(text)


@cache
def schema_validator(kind: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(copy.deepcopy(load_schema(kind)))  # compile rewrites $ref


def strict_json(raw: bytes) -> Any:
    """JSON as RFC 8259/I-JSON mean it: UTF-8, no NaN/Infinity, no BOM, no lone surrogates."""

    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    document = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    _reject_lone_surrogates(document)
    return document


def _reject_lone_surrogates(node: Any) -> None:
    if isinstance(node, str):
        node.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
    elif isinstance(node, list):
        for item in node:
            _reject_lone_surrogates(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            _reject_lone_surrogates(key)
            _reject_lone_surrogates(value)


def schema_accepts(kind: str, raw: bytes) -> bool:
    try:
        document = strict_json(raw)
    except (ValueError, RecursionError):
        return False
    try:
        schema_validator(kind)(document)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def validator_result(kind: str, raw: bytes, **limits: int) -> str | None:
    """None when the event decodes, else the contract error code."""
    try:
        contracts.DECODERS[kind](raw, **limits)  # type: ignore[call-arg]
    except ContractError as error:
        return error.code
    return None


# --- samples -----------------------------------------------------------------------------------

BASE: dict[str, dict[str, Any]] = {
    "transaction": {
        "transaction_id": "tx-1",
        "timestamp": "2018-08-08T10:15:03Z",
        "customer_id": "c-1",
        "terminal_id": "t-1",
        "amount": 12.5,
        "currency": "EUR",
    },
    "market": {
        "instrument": "GSPC",
        "timestamp": "2018-08-08T21:00:00Z",
        "open": 2856.79,
        "high": 2863.43,
        "low": 2855.92,
        "close": 2857.7,
        "volume": 2869290000,
        "indicators": {"vix": 10.85},
    },
    "label": {
        "transaction_id": "tx-1",
        "timestamp": "2018-08-15T10:15:03Z",
        "transaction_timestamp": "2018-08-08T10:15:03Z",
        "customer_id": "c-1",
        "terminal_id": "t-1",
        "fraud": True,
    },
    "request": {
        "event_id": "app-1",
        "timestamp": "2024-05-01T09:00:00Z",
        "entity_id": "b-1",
        "model": "credit",
        "features": {"age": 45, "MonthlyIncome": None, "region": "R82"},
    },
}
REQUIRED = {
    kind: [field.encode_name for field in msgspec.structs.fields(STRUCTS[kind]) if field.required]
    for kind in INPUT_KINDS
}
MISSING = object()


def event(kind: str, **changes: Any) -> bytes:
    """The base event with fields replaced (MISSING removes one), as JSON bytes."""
    document = dict(BASE[kind])
    for name, value in changes.items():
        if value is MISSING:
            document.pop(name, None)
        else:
            document[name] = value
    return json.dumps(document, allow_nan=True, ensure_ascii=False).encode()


def raw_event(kind: str, field: str, literal: str) -> bytes:
    """The base event with one field's value written as a raw JSON token."""
    document = json.loads(event(kind))
    document[field] = "@@"
    return json.dumps(document).replace('"@@"', literal).encode()


def nested(depth: int) -> Any:
    node: Any = 1
    for level in range(depth - 1):  # the event object itself is level 1
        node = [node] if level % 2 else {"n": node}
    return node


TS = "2018-08-08T10:15:03Z"

# (kind, raw, expected code, a fragment the detail must contain)
INVALID: list[tuple[str, bytes, str, str]] = [
    ("transaction", b"", "empty_message", "empty"),
    ("market", b" \n\t ", "empty_message", "empty"),
    (
        "transaction",
        event("transaction", customer_id="c-@@").replace(b"@@", b"\xff"),
        "not_utf8",
        "UTF-8",
    ),
    (
        "transaction",
        event("transaction", customer_id="x").replace(b'"x"', b'"\xed\xa0\x80"'),
        "not_utf8",
        "UTF-8",
    ),
    ("label", b"\xc3(", "not_utf8", "byte 0"),
    ("transaction", b"{", "not_json", "JSON"),
    ("transaction", event("transaction")[:-1] + b",}", "not_json", "trailing comma"),
    ("transaction", event("transaction") + b" {}", "not_json", "trailing"),
    ("transaction", b"\xef\xbb\xbf" + event("transaction"), "not_json", "byte 0"),
    ("transaction", raw_event("transaction", "customer_id", '"\\ud800"'), "not_json", "JSON"),
    ("market", b"GSPC,2018-08-08,1,2,3,4,5", "not_json", "JSON"),
    ("transaction", raw_event("transaction", "amount", "NaN"), "non_finite_number", "NaN"),
    ("transaction", raw_event("transaction", "amount", "Infinity"), "non_finite_number", "Inf"),
    ("transaction", raw_event("transaction", "amount", "-Infinity"), "non_finite_number", "-Inf"),
    ("transaction", raw_event("transaction", "note", "NaN"), "non_finite_number", "NaN"),
    ("transaction", raw_event("transaction", "amount", "1e400"), "non_finite_number", "'amount'"),
    (
        "transaction",
        raw_event("transaction", "amount", "1" + "0" * 400),
        "non_finite_number",
        "'amount'",
    ),
    (
        "market",
        raw_event("market", "indicators", '{"vix": 1e999}'),
        "non_finite_number",
        "'indicators.vix'",
    ),
    ("market", raw_event("market", "close", "-1e309"), "non_finite_number", "'close'"),
    ("transaction", b"[]", "not_object", "array"),
    ("transaction", b'"tx"', "not_object", "string"),
    ("market", b"42", "not_object", "integer"),
    ("label", b"null", "not_object", "null"),
    ("label", b"true", "not_object", "boolean"),
    ("market", event("market", indicators=None), "null_field", "'indicators'"),
    ("transaction", event("transaction", amount="12.5"), "wrong_type", "'amount' must be a number"),
    ("transaction", event("transaction", amount=True), "wrong_type", "got boolean"),
    ("transaction", event("transaction", amount=[1]), "wrong_type", "got array"),
    ("transaction", event("transaction", timestamp=1533723303), "wrong_type", "'timestamp'"),
    ("transaction", event("transaction", transaction_id=123), "wrong_type", "'transaction_id'"),
    ("transaction", event("transaction", currency=978), "wrong_type", "'currency'"),
    ("label", event("label", fraud=1), "wrong_type", "'fraud' must be a boolean"),
    ("label", event("label", fraud="true"), "wrong_type", "'fraud'"),
    ("market", event("market", indicators=[1, 2]), "wrong_type", "'indicators'"),
    (
        "market",
        event("market", indicators={"rate": 1, "vix": "13"}),
        "wrong_type",
        "'indicators.vix'",
    ),
    ("market", event("market", indicators={"vix": None}), "null_field", "'indicators.vix'"),
    ("market", event("market", volume=False), "wrong_type", "'volume'"),
    ("transaction", event("transaction", transaction_id=""), "empty_field", "'transaction_id'"),
    ("label", event("label", terminal_id=""), "empty_field", "'terminal_id'"),
    ("market", event("market", indicators={"": 1.0}), "empty_field", "key of field 'indicators'"),
    ("transaction", event("transaction", customer_id="c" * 129), "too_long", "'customer_id'"),
    ("transaction", event("transaction", terminal_id="😀" * 129), "too_long", "128"),
    ("market", event("market", instrument="I" * 129), "too_long", "'instrument'"),
    ("market", event("market", indicators={"v" * 65: 1.0}), "too_long", "key of field"),
    ("transaction", event("transaction", currency="eur"), "bad_format", "'currency'"),
    ("transaction", event("transaction", currency="EURO"), "bad_format", "'currency'"),
    ("transaction", event("transaction", currency="E1R"), "bad_format", "'currency'"),
    ("transaction", event("transaction", currency=""), "bad_format", "'currency'"),
    ("transaction", event("transaction", currency="EUR\n"), "bad_format", "'currency'"),
    ("transaction", event("transaction", currency="ÉUR"), "bad_format", "'currency'"),
    ("transaction", event("transaction", amount=-0.01), "out_of_range", "'amount' must be >= 0"),
    ("transaction", event("transaction", amount=1_000_000_000.01), "out_of_range", "'amount'"),
    ("transaction", event("transaction", amount=1e10), "out_of_range", "'amount'"),
    ("market", event("market", open=0), "out_of_range", "'open' must be > 0"),
    ("market", event("market", low=-0.0), "out_of_range", "'low'"),
    ("market", event("market", high=1e13), "out_of_range", "'high'"),
    ("market", event("market", volume=-1), "out_of_range", "'volume'"),
    ("market", event("market", volume=1e16), "out_of_range", "'volume'"),
    (
        "market",
        event("market", indicators={f"i{n}": n for n in range(65)}),
        "out_of_range",
        "at most 64 entries",
    ),
    ("market", event("market", indicators={"vix": -1e16}), "out_of_range", "'indicators.vix'"),
    (
        "transaction",
        event("transaction", timestamp="1969-12-31T23:59:59Z"),
        "out_of_range",
        "between the years 1970 and 2100",
    ),
    (
        "transaction",
        event("transaction", timestamp="2101-01-01T00:00:00Z"),
        "out_of_range",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="0001-01-01T00:00:00Z"),
        "out_of_range",
        "'timestamp'",
    ),
    (
        "label",
        event("label", transaction_timestamp="1900-01-01T00:00:00+01:00"),
        "out_of_range",
        "'transaction_timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="2018-08-08 10:15:03Z"),
        "bad_timestamp",
        "RFC 3339",
    ),
    (
        "transaction",
        event("transaction", timestamp="2018-08-08T10:15:03"),
        "bad_timestamp",
        "no time zone",
    ),
    (
        "transaction",
        event("transaction", timestamp="2018-08-08T10:15:03+0100"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="2018-08-08T10:15:03+01"),
        "bad_timestamp",
        "'timestamp'",
    ),
    ("transaction", event("transaction", timestamp="2018-08-08"), "bad_timestamp", "'timestamp'"),
    ("transaction", event("transaction", timestamp="yesterday"), "bad_timestamp", "'timestamp'"),
    ("transaction", event("transaction", timestamp=""), "bad_timestamp", "'timestamp'"),
    (
        "transaction",
        event("transaction", timestamp="2018-08-08T10:15:60Z"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="2018-08-08T24:00:00Z"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="2018-13-08T10:15:03Z"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="2018-08-08T10:15:03+24:00"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="2018-08-08T10:15:03.1234567891Z"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="2018-08-08T10:15:03.Z"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp=" 2018-08-08T10:15:03Z"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="2018-08-08T10:15:03Z\n"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="٢٠١٨-08-08T10:15:03Z"),
        "bad_timestamp",
        "'timestamp'",
    ),
    ("label", event("label", timestamp="2018-08-15T10:15:03 Z"), "bad_timestamp", "'timestamp'"),
    ("market", event("market", timestamp="2018-08-08T21:00Z"), "bad_timestamp", "'timestamp'"),
    (
        "transaction",
        event("transaction", timestamp="2021-02-29T00:00:00Z"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "transaction",
        event("transaction", timestamp="2100-02-29T00:00:00Z"),
        "bad_timestamp",
        "'timestamp'",
    ),
    (
        "label",
        event("label", transaction_timestamp="2018-04-31T10:00:00Z"),
        "bad_timestamp",
        "'transaction_timestamp'",
    ),
    ("market", event("market", timestamp="2018-09-00T21:00:00Z"), "bad_timestamp", "'timestamp'"),
    ("request", event("request", features=[1, 2]), "wrong_type", "'features' must be an object"),
    ("request", event("request", features={"age": True}), "wrong_type", "'features.age'"),
    ("request", event("request", features={"age": [45]}), "wrong_type", "'features.age'"),
    ("request", event("request", features={"age": {"v": 1}}), "wrong_type", "'features.age'"),
    ("request", event("request", features={"": 1}), "empty_field", "key of field 'features'"),
    ("request", event("request", features={"f" * 129: 1}), "too_long", "key of field"),
    ("request", event("request", features={"region": "r" * 257}), "too_long", "'features.region'"),
    ("request", event("request", features={"age": 1e16}), "out_of_range", "'features.age'"),
    (
        "request",
        event("request", features={f"f{n}": n for n in range(contracts.MAX_FEATURES + 1)}),
        "out_of_range",
        "at most 1024 entries",
    ),
    ("request", raw_event("request", "features", '{"age": NaN}'), "non_finite_number", "NaN"),
    ("request", event("request", model=""), "empty_field", "'model'"),
    ("request", event("request", timestamp="2024-05-01"), "bad_timestamp", "'timestamp'"),
]
INVALID += [
    (kind, event(kind, **{name: MISSING}), "missing_field", f"'{name}'")
    for kind in INPUT_KINDS
    for name in REQUIRED[kind]
]
INVALID += [
    (kind, event(kind, **{name: None}), "null_field", f"'{name}'")
    for kind in INPUT_KINDS
    for name in REQUIRED[kind]
]

VALID: list[tuple[str, bytes]] = [
    ("transaction", event("transaction", amount=0)),
    ("transaction", event("transaction", amount=0.0)),
    ("transaction", event("transaction", amount=-0.0)),
    ("transaction", event("transaction", amount=1_000_000_000)),
    ("transaction", event("transaction", amount=1e9)),
    ("transaction", event("transaction", amount=5e-324)),
    ("transaction", raw_event("transaction", "amount", "1e-400")),
    ("transaction", event("transaction", currency=None)),
    ("transaction", event("transaction", currency=MISSING)),
    ("transaction", event("transaction", transaction_id="t" * 128)),
    ("transaction", event("transaction", customer_id="😀" * 128)),
    ("transaction", event("transaction", customer_id=" ")),
    ("transaction", event("transaction", terminal_id="términal\u0000\t")),
    ("transaction", event("transaction", timestamp="1970-01-01T00:00:00Z")),
    ("transaction", event("transaction", timestamp="1970-01-01T00:00:00+14:00")),
    ("transaction", event("transaction", timestamp="2100-12-31T23:59:59.999999999Z")),
    ("transaction", event("transaction", timestamp="2018-08-08t10:15:03z")),
    ("transaction", event("transaction", timestamp="2018-08-08T10:15:03.5+23:59")),
    ("transaction", event("transaction", timestamp="2018-08-08T10:15:03-00:00")),
    ("transaction", event("transaction", timestamp="2020-02-29T12:00:00.123456789-05:30")),
    ("transaction", event("transaction", timestamp="2000-02-29T00:00:00Z")),
    ("label", event("label", transaction_timestamp="1972-02-29T23:59:59+01:00")),
    ("market", event("market", timestamp="2018-04-30T21:00:00Z")),
    ("transaction", raw_event("transaction", "timestamp", '"2018-08-08\\u005410:15:03Z"')),
    ("transaction", event("transaction", channel="web", extra={"a": [1, {"b": None}]})),
    ("transaction", event("transaction", note=nested(contracts.MAX_DEPTH))),
    ("transaction", event("transaction", note="NaN Infinity {[[[[")),
    ("transaction", raw_event("transaction", "note", "1e400")),
    ("transaction", b'{"amount": 99, ' + event("transaction")[1:]),
    ("transaction", b"\n\t " + event("transaction") + b" \r\n"),
    ("transaction", json.dumps(BASE["transaction"], indent=4).encode()),
    ("market", event("market", indicators=MISSING)),
    ("market", event("market", indicators={})),
    ("market", event("market", open=1.5, high=1.5, low=1.5, close=1.5, volume=0)),
    ("market", event("market", open=1e-9, high=1e12, low=1e-9, close=1e12)),
    ("market", event("market", volume=1e15)),
    ("market", event("market", indicators={f"i{n}": n for n in range(64)})),
    ("market", event("market", indicators={"v" * 64: -1e15, "w": 1e15, "z": 0})),
    ("market", event("market", indicators={"vix": 13}, source={"feed": "replay"})),
    ("label", event("label", fraud=False)),
    ("label", event("label", timestamp="2018-08-08T10:15:03Z")),
    ("label", event("label", chargeback_reason="10.4")),
    ("request", event("request", features={})),
    ("request", event("request", features={"age": -1e15, "x": 1e15, "y": "", "z": None})),
    ("request", event("request", features={"r": "r" * 256, "f" * 128: 0})),
    ("request", event("request", features={f"f{n}": n for n in range(contracts.MAX_FEATURES)})),
    ("request", event("request", channel="web")),
]

# Rules JSON Schema cannot express: the schema accepts these, the validator does not.
VALIDATOR_ONLY: list[tuple[str, bytes, dict[str, int], str, str]] = [
    ("market", event("market", high=2855.0, low=2856.0), {}, "inconsistent", "'high'"),
    ("market", event("market", open=2900.0), {}, "inconsistent", "'open'"),
    ("market", event("market", close=2800.0), {}, "inconsistent", "'close'"),
    # Every occurrence of a repeated key is validated; JSON parsers keep only the last one.
    ("transaction", b'{"amount": "x", ' + event("transaction")[1:], {}, "wrong_type", "'amount'"),
    (
        "transaction",
        event("transaction", note=nested(contracts.MAX_DEPTH + 1)),
        {},
        "too_deep",
        "deeper than 32",
    ),
    ("label", event("label", note=nested(5)), {"max_depth": 4}, "too_deep", "deeper than 4"),
    (
        "transaction",
        event("transaction", note="x" * 200),
        {"max_bytes": 200},
        "too_large",
        "limit of 200 bytes",
    ),
    ("market", event("market", note="x" * contracts.MAX_MESSAGE_BYTES), {}, "too_large", "bytes"),
]


def _sample_id(sample: tuple[Any, ...]) -> str:
    return f"{sample[0]}-{sample[2]}"


@pytest.mark.parametrize("sample", INVALID, ids=_sample_id)
def test_invalid_samples_are_rejected_by_schema_and_validator(
    sample: tuple[str, bytes, str, str],
) -> None:
    kind, raw, code, fragment = sample
    with pytest.raises(ContractError) as caught:
        contracts.DECODERS[kind](raw)
    assert caught.value.code == code, caught.value.detail
    assert fragment in caught.value.detail
    assert not schema_accepts(kind, raw), "the schema file accepts what the validator rejects"


@pytest.mark.parametrize("sample", VALID, ids=lambda sample: sample[0])
def test_valid_edge_samples_are_accepted_by_schema_and_validator(
    sample: tuple[str, bytes],
) -> None:
    kind, raw = sample
    decoded = contracts.DECODERS[kind](raw)
    assert isinstance(decoded, STRUCTS[kind])
    assert schema_accepts(kind, raw), "the schema file rejects what the validator accepts"


@pytest.mark.parametrize("sample", VALIDATOR_ONLY, ids=_sample_id)
def test_rules_beyond_json_schema_are_enforced_by_the_validator(
    sample: tuple[str, bytes, dict[str, int], str, str],
) -> None:
    kind, raw, limits, code, fragment = sample
    with pytest.raises(ContractError) as caught:
        contracts.DECODERS[kind](raw, **limits)  # type: ignore[call-arg]
    assert (caught.value.code, fragment in caught.value.detail) == (code, True)
    assert schema_accepts(kind, raw), "expected a rule JSON Schema cannot express"


def test_every_error_code_is_produced_by_a_tested_input() -> None:
    produced = {sample[2] for sample in INVALID} | {sample[3] for sample in VALIDATOR_ONLY}
    # the worker's: tests/test_pipeline.py produces key_mismatch, tests/test_tabular_stream.py
    # the request codes that need a model's card
    worker = {"internal_error", "key_mismatch", "unknown_model", "missing_feature", "null_feature"}
    assert produced | worker == set(ERROR_CODES)


def test_error_codes_are_unique_and_match_the_dead_letter_schema() -> None:
    assert len(set(ERROR_CODES)) == len(ERROR_CODES)
    assert load_schema("dead_letter")["properties"]["error"]["enum"] == list(ERROR_CODES)


def test_unknown_extra_fields_are_accepted_and_ignored() -> None:
    for kind in INPUT_KINDS:
        plain = contracts.DECODERS[kind](event(kind))
        with_extras = contracts.DECODERS[kind](
            event(kind, zz_extra={"deep": [1, 2, {"x": None}]}, yy="text", xx=1e300)
        )
        assert with_extras == plain
        assert schema_accepts(kind, event(kind, zz_extra=[1], yy=None))


def test_decoded_values_are_typed_and_timezone_aware() -> None:
    tx = contracts.decode_transaction(event("transaction", timestamp="2018-08-08T12:15:03+02:00"))
    assert tx.timestamp == datetime(2018, 8, 8, 10, 15, 3, tzinfo=UTC)
    assert tx.timestamp.utcoffset() == timedelta(hours=2)
    assert (tx.amount, tx.currency) == (12.5, "EUR")
    market = contracts.decode_market(event("market"))
    assert market.indicators == {"vix": 10.85}
    assert isinstance(market.volume, float)
    assert contracts.decode_market(event("market", indicators=MISSING)).indicators == {}
    label = contracts.decode_label(event("label"))
    assert label.fraud is True
    assert label.transaction_timestamp.tzinfo is not None


def test_decoders_accept_other_byte_buffers_and_tombstones() -> None:
    raw = event("transaction")
    expected = contracts.decode_transaction(raw)
    assert contracts.decode_transaction(bytearray(raw)) == expected
    assert contracts.decode_transaction(memoryview(raw)) == expected
    with pytest.raises(ContractError, match="empty_message"):
        contracts.decode_transaction(None)


def test_size_limit_is_checked_before_parsing() -> None:
    garbage = b"\xff" * (contracts.MAX_MESSAGE_BYTES + 1)  # not even UTF-8
    with pytest.raises(ContractError) as caught:
        contracts.decode_label(garbage)
    assert caught.value.code == "too_large"
    assert validator_result("label", event("label"), max_bytes=len(event("label"))) is None


def test_deep_nesting_well_past_the_parser_stack_is_a_contract_error() -> None:
    raw = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert validator_result("transaction", raw) == "too_deep"
    # even when the limit is raised beyond what the parser's recursion can take
    assert validator_result("transaction", raw, max_depth=200_000) == "too_deep"


# --- schema files ------------------------------------------------------------------------------

_SCHEMA = {"$ref": "#/$defs/schema"}
_SCHEMA_ARRAY = {"type": "array", "minItems": 1, "items": _SCHEMA}
_SCHEMA_MAP = {"type": "object", "additionalProperties": _SCHEMA}
_COUNT = {"type": "integer", "minimum": 0}
_TYPE_NAME = {"enum": ["array", "boolean", "integer", "null", "number", "object", "string"]}
# The draft 2020-12 vocabularies (core, applicator, unevaluated, validation, meta-data, format,
# content) as one closed dialect: a misspelt or misplaced keyword fails instead of being ignored.
DIALECT_METASCHEMA: dict[str, Any] = {
    "$ref": "#/$defs/schema",
    "$defs": {
        "schema": {
            "type": ["object", "boolean"],
            "additionalProperties": False,
            "properties": {
                "$schema": {"type": "string", "format": "uri"},
                "$id": {"type": "string", "format": "uri-reference"},
                "$ref": {"type": "string", "format": "uri-reference"},
                "$anchor": {"type": "string", "pattern": "^[A-Za-z_][-A-Za-z0-9._]*$"},
                "$dynamicRef": {"type": "string", "format": "uri-reference"},
                "$dynamicAnchor": {"type": "string", "pattern": "^[A-Za-z_][-A-Za-z0-9._]*$"},
                "$vocabulary": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "$comment": {"type": "string"},
                "$defs": _SCHEMA_MAP,
                "prefixItems": _SCHEMA_ARRAY,
                "items": _SCHEMA,
                "contains": _SCHEMA,
                "additionalProperties": _SCHEMA,
                "properties": _SCHEMA_MAP,
                "patternProperties": _SCHEMA_MAP,
                "dependentSchemas": _SCHEMA_MAP,
                "propertyNames": _SCHEMA,
                "if": _SCHEMA,
                "then": _SCHEMA,
                "else": _SCHEMA,
                "allOf": _SCHEMA_ARRAY,
                "anyOf": _SCHEMA_ARRAY,
                "oneOf": _SCHEMA_ARRAY,
                "not": _SCHEMA,
                "unevaluatedItems": _SCHEMA,
                "unevaluatedProperties": _SCHEMA,
                "type": {
                    "anyOf": [
                        _TYPE_NAME,
                        {"type": "array", "items": _TYPE_NAME, "minItems": 1, "uniqueItems": True},
                    ]
                },
                "const": True,
                "enum": {"type": "array", "items": True},
                "multipleOf": {"type": "number", "exclusiveMinimum": 0},
                "maximum": {"type": "number"},
                "exclusiveMaximum": {"type": "number"},
                "minimum": {"type": "number"},
                "exclusiveMinimum": {"type": "number"},
                "maxLength": _COUNT,
                "minLength": _COUNT,
                "pattern": {"type": "string", "format": "regex"},
                "maxItems": _COUNT,
                "minItems": _COUNT,
                "uniqueItems": {"type": "boolean"},
                "maxContains": _COUNT,
                "minContains": _COUNT,
                "maxProperties": _COUNT,
                "minProperties": _COUNT,
                "required": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                "dependentRequired": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
                "title": {"type": "string"},
                "description": {"type": "string"},
                "default": True,
                "deprecated": {"type": "boolean"},
                "readOnly": {"type": "boolean"},
                "writeOnly": {"type": "boolean"},
                "examples": {"type": "array", "items": True},
                "format": {"type": "string"},
                "contentEncoding": {"type": "string"},
                "contentMediaType": {"type": "string"},
                "contentSchema": _SCHEMA,
            },
        }
    },
}


@cache
def dialect_check() -> Callable[[Any], Any]:
    return fastjsonschema.compile(DIALECT_METASCHEMA)


def _subschemas(node: Any) -> list[dict[str, Any]]:
    """Every schema object in a schema document (keyword values that hold schemas)."""
    found: list[dict[str, Any]] = []
    if not isinstance(node, dict):
        return found
    found.append(node)
    for keyword in ("items", "additionalProperties", "propertyNames", "not", "contains"):
        found += _subschemas(node.get(keyword))
    for keyword in ("properties", "$defs", "patternProperties"):
        for child in node.get(keyword, {}).values():
            found += _subschemas(child)
    for keyword in ("allOf", "anyOf", "oneOf", "prefixItems"):
        for child in node.get(keyword, []):
            found += _subschemas(child)
    return found


@pytest.mark.parametrize("kind", list(SCHEMA_FILES))
def test_schema_file_is_a_well_formed_draft_2020_12_schema(kind: str) -> None:
    schema = load_schema(kind)
    dialect_check()(schema)
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"] == f"https://riskstream.dev/schemas/{SCHEMA_FILES[kind]}"
    assert schema["title"] and schema["description"]
    assert schema["type"] == "object" and schema["additionalProperties"] is True
    assert len(schema["examples"]) >= 2
    for node in _subschemas(schema):
        assert set(node.get("required", [])) <= set(node.get("properties", {}))
        if "$ref" in node:
            target = node["$ref"].removeprefix("#/$defs/")
            assert target in schema["$defs"], node["$ref"]
            assert set(node) <= {"$ref", "description"}, "draft-07 tools ignore $ref siblings"
        if "pattern" in node:
            # Patterns must mean the same in ECMA-262 and Python: ASCII classes, no lookbehind.
            assert not re.search(r"\\[dDwWsSbB]|\(\?<|\(\?P", node["pattern"]), node["pattern"]
            re.compile(node["pattern"])


def test_dialect_check_rejects_malformed_schemas() -> None:
    broken = [
        {"type": "object", "properties": {"a": {"type": "string", "maxLenght": 3}}},
        {"type": "strng"},
        {"minimum": "0"},
        {"required": "a"},
        {"pattern": "(unclosed"},
        {"properties": {"a": {"items": {"minItems": -1}}}},
    ]
    for schema in broken:
        with pytest.raises(fastjsonschema.JsonSchemaValueException):
            dialect_check()(schema)


@pytest.mark.parametrize("kind", list(SCHEMA_FILES))
def test_schema_file_passes_the_official_metaschema_when_jsonschema_is_installed(
    kind: str,
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(load_schema(kind))


@pytest.mark.parametrize("kind", list(SCHEMA_FILES))
def test_schema_properties_match_the_struct_fields(kind: str) -> None:
    schema = load_schema(kind)
    fields = msgspec.structs.fields(STRUCTS[kind])
    assert list(schema["properties"]) == [field.encode_name for field in fields]
    required = {field.encode_name for field in fields if field.required}
    if kind in OUTPUT_DECODERS:  # outputs always carry every field, defaults included
        required = {field.encode_name for field in fields}
    assert set(schema["required"]) == required


def test_schema_limits_match_the_validator_constants() -> None:
    tx, market = load_schema("transaction"), load_schema("market")
    for kind in SCHEMA_FILES:
        expected = contracts.TIMESTAMP_PATTERN
        if kind in OUTPUT_DECODERS:
            expected = contracts.RECORD_TIMESTAMP_PATTERN
        assert load_schema(kind)["$defs"]["timestamp"]["pattern"] == expected
    assert tx["$defs"]["id"]["maxLength"] == contracts.MAX_ID_LENGTH
    assert tx["properties"]["amount"]["maximum"] == contracts.MAX_AMOUNT
    assert tx["properties"]["currency"]["pattern"] == contracts.CURRENCY_PATTERN
    indicators = market["properties"]["indicators"]
    assert indicators["maxProperties"] == contracts.MAX_INDICATORS
    assert indicators["propertyNames"]["maxLength"] == contracts.MAX_INDICATOR_NAME_LENGTH
    assert indicators["additionalProperties"]["maximum"] == contracts.MAX_INDICATOR_ABS
    assert market["properties"]["high"]["maximum"] == contracts.MAX_PRICE
    assert market["properties"]["volume"]["maximum"] == contracts.MAX_VOLUME
    assert "0" in tx["description"] and "verification" in tx["description"]


# --- examples ----------------------------------------------------------------------------------


def _examples(kinds: tuple[str, ...]) -> list[tuple[str, Any]]:
    return [(kind, example) for kind in kinds for example in load_schema(kind)["examples"]]


@pytest.mark.parametrize(("kind", "example"), _examples(INPUT_KINDS))
def test_input_examples_validate_and_decode(kind: str, example: dict[str, Any]) -> None:
    raw = json.dumps(example).encode()
    assert schema_accepts(kind, raw)
    decoded = contracts.DECODERS[kind](raw)
    for name in msgspec.structs.fields(STRUCTS[kind]):
        if name.encode_name in example and name.encode_name != "timestamp":
            value = getattr(decoded, name.name)
            if not isinstance(value, datetime):
                assert value == example[name.encode_name]


@pytest.mark.parametrize(("kind", "example"), _examples(tuple(OUTPUT_DECODERS)))
def test_output_examples_validate_and_round_trip(kind: str, example: dict[str, Any]) -> None:
    raw = json.dumps(example).encode()
    assert schema_accepts(kind, raw)
    record = OUTPUT_DECODERS[kind](raw)
    encoded = contracts.encode(record)
    assert schema_accepts(kind, encoded)
    assert OUTPUT_DECODERS[kind](encoded) == record


# --- records out -------------------------------------------------------------------------------

NOW = datetime(2024, 5, 1, 9, 0, 0, 123456, tzinfo=UTC)
EVENT_TIME = datetime(2018, 8, 8, 12, 15, 3, tzinfo=timezone(timedelta(hours=2)))


def score_record(**changes: Any) -> ScoreRecord:
    fields: dict[str, Any] = {
        "event_id": "tx-1",
        "event_type": "transaction",
        "entity_id": "c-1",
        "model": "fraud",
        "model_version": "20240101T120000Z",
        "score": 0.25,
        "event_timestamp": EVENT_TIME,
        "scored_at": NOW,
    }
    return ScoreRecord(**(fields | changes))


def alert_record(**changes: Any) -> AlertRecord:
    base = msgspec.structs.asdict(score_record(score=0.93))
    fields = base | {
        "alert_id": contracts.make_alert_id("fraud", "20240101T120000Z", "tx-1"),
        "severity": "high",
        "threshold": 0.5,
        "reasons": (Reason("customer_amount_ratio_1d", 7.5, 2.31), Reason("hour", 3.0, -0.2)),
    }
    return AlertRecord(**(fields | changes))


def test_score_and_alert_records_encode_to_schema_valid_json() -> None:
    for kind, record in (
        ("score", score_record()),
        ("score", score_record(score=1.0, event_type="market", event_timestamp=NOW)),
        ("alert", alert_record()),
        ("alert", alert_record(reasons=())),
        # a count model's request: an expected claim frequency may pass 1, a reason may be null
        ("score", score_record(score=1.7, event_type="request", model="claims")),
        (
            "alert",
            alert_record(
                score=2.5,
                threshold=1.2,
                event_type="request",
                reasons=(Reason("MonthlyIncome", None, 0.4),),
            ),
        ),
    ):
        raw = contracts.encode(record)
        assert schema_accepts(kind, raw), raw
        assert OUTPUT_DECODERS[kind](raw) == record
    document = json.loads(contracts.encode(alert_record()))
    assert document["event_timestamp"] == "2018-08-08T10:15:03Z"
    assert document["scored_at"] == "2024-05-01T09:00:00.123456Z"
    assert document["reasons"][0] == {
        "feature": "customer_amount_ratio_1d",
        "value": 7.5,
        "contribution": 2.31,
    }


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: score_record(score=math.nan), "non_finite_number"),
        (lambda: score_record(score=1.5), "out_of_range"),
        (lambda: score_record(score=1.5, event_type="market"), "out_of_range"),
        (lambda: score_record(score=-0.1, event_type="request"), "out_of_range"),
        (lambda: alert_record(threshold=1.2), "out_of_range"),
        (lambda: score_record(scored_at=datetime(2024, 5, 1)), "bad_timestamp"),
        (lambda: score_record(scored_at="2024-05-01 09:00:00Z"), "bad_timestamp"),
        (lambda: score_record(event_timestamp="2021-02-29T00:00:00Z"), "bad_timestamp"),
        (lambda: score_record(event_timestamp=1533723303.0), "bad_timestamp"),
        (lambda: alert_record(threshold=math.inf), "non_finite_number"),
        (lambda: Reason("hour", math.nan, 0.0), "non_finite_number"),
    ],
)
def test_output_records_refuse_values_json_cannot_carry(
    build: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_the_score_schema_keeps_probabilities_within_one_but_not_frequencies() -> None:
    document = json.loads(contracts.encode(score_record()))
    assert not schema_accepts("score", json.dumps(document | {"score": 1.5}).encode())
    request = document | {"score": 1.5, "event_type": "request"}
    assert schema_accepts("score", json.dumps(request).encode())
    alert = json.loads(contracts.encode(alert_record()))
    assert not schema_accepts("alert", json.dumps(alert | {"threshold": 1.2}).encode())


def test_output_timestamps_are_rfc_3339_text() -> None:
    record = score_record(event_timestamp="2018-08-08T12:15:03.5+02:00")
    assert record.event_timestamp == "2018-08-08T12:15:03.5+02:00"  # text is kept as written
    early = contracts.decode_transaction(
        event("transaction", timestamp="1970-01-01T00:00:00+14:00")
    )
    record = score_record(event_timestamp=early.timestamp)
    assert record.event_timestamp == "1969-12-31T10:00:00Z"
    assert schema_accepts("score", contracts.encode(record))


def test_output_decoders_report_contract_errors() -> None:
    document = json.loads(contracts.encode(score_record()))
    with pytest.raises(ContractError) as caught:
        contracts.decode_score(json.dumps(document | {"score": 2}).encode())
    assert (caught.value.code, "'score'" in caught.value.detail) == ("out_of_range", True)
    with pytest.raises(ContractError) as caught:
        contracts.decode_score(json.dumps(document | {"event_type": "label"}).encode())
    assert (caught.value.code, "'event_type'" in caught.value.detail) == ("bad_format", True)
    alert = json.loads(contracts.encode(alert_record()))
    alert["reasons"][1].pop("value")
    with pytest.raises(ContractError) as caught:
        contracts.decode_alert(json.dumps(alert).encode())
    assert caught.value.detail == "field 'reasons[1].value' is required but missing"


def test_alert_ids_are_deterministic_and_distinct() -> None:
    first = contracts.make_alert_id("fraud", "20240101T120000Z", "tx-1")
    assert first == contracts.make_alert_id("fraud", "20240101T120000Z", "tx-1")
    others = {
        contracts.make_alert_id("fraud", "20240101T120001Z", "tx-1"),
        contracts.make_alert_id("market", "20240101T120000Z", "tx-1"),
        contracts.make_alert_id("fraud", "20240101T120000Z", "tx-2"),
        contracts.make_alert_id("fraud", "20240101T120000Ztx", "-1"),
    }
    assert first not in others and len(others) == 4


# --- dead letters ------------------------------------------------------------------------------


def _rejection(raw: bytes, kind: str = "transaction") -> ContractError:
    with pytest.raises(ContractError) as caught:
        contracts.DECODERS[kind](raw)
    return caught.value


def test_dead_letter_keeps_text_payloads_as_text() -> None:
    raw = event("transaction", amount="12", customer_id="müller")
    error = _rejection(raw)
    record = contracts.dead_letter("transactions", 3, 1842, "müller".encode(), error, raw, NOW)
    assert (record.payload, record.payload_encoding) == (raw.decode(), "utf-8")
    assert (record.key, record.key_encoding) == ("müller", "utf-8")
    assert (record.error, record.detail) == ("wrong_type", error.detail)
    assert (record.payload_size, record.payload_truncated) == (len(raw), False)
    encoded = contracts.encode(record)
    assert schema_accepts("dead_letter", encoded)
    assert contracts.decode_dead_letter(encoded) == record


def test_dead_letter_base64_encodes_binary_payloads_and_keys() -> None:
    raw = b"\xff\xfe{binary"
    record = contracts.dead_letter(
        "market.indicators", 0, 7, b"\x00\xff", _rejection(raw), raw, 0.0
    )
    assert record.payload_encoding == "base64" and record.key_encoding == "base64"
    assert base64.b64decode(record.payload) == raw
    assert record.received_at == "1970-01-01T00:00:00Z"
    assert schema_accepts("dead_letter", contracts.encode(record))


def test_dead_letter_for_a_worker_failure() -> None:
    error = ContractError("internal_error", "ValueError: feature state is corrupt")
    raw = event("transaction")
    record = contracts.dead_letter("transactions", 2, 9, b"c-1", error, raw, "2024-05-01T09:00:00Z")
    assert (record.error, record.received_at) == ("internal_error", "2024-05-01T09:00:00Z")
    assert schema_accepts("dead_letter", contracts.encode(record))


def test_dead_letter_without_key_or_value() -> None:
    error = _rejection(b"", "label")
    record = contracts.dead_letter("risk.labels", 1, 0, None, error, None, NOW)
    assert (record.key, record.key_encoding, record.payload, record.error) == (
        None,
        None,
        "",
        "empty_message",
    )
    assert schema_accepts("dead_letter", contracts.encode(record))


def test_dead_letter_truncates_large_payloads_on_a_character_boundary() -> None:
    raw = ("é" * 40).encode()  # 80 bytes of two-byte characters
    error = ContractError("too_large", "message is 80 bytes, over the limit of 10 bytes")
    record = contracts.dead_letter(
        "transactions", 0, 5, None, error, raw, NOW, max_payload_bytes=11
    )
    assert (record.payload, record.payload_encoding) == ("é" * 5, "utf-8")
    assert (record.payload_size, record.payload_truncated) == (80, True)
    assert schema_accepts("dead_letter", contracts.encode(record))


def test_dead_letter_of_the_largest_message_fits_in_a_default_kafka_message() -> None:
    raw = b"\xff" * (contracts.MAX_MESSAGE_BYTES + 1)
    error = _rejection(raw)
    record = contracts.dead_letter("transactions", 0, 1, b"k", error, raw, NOW)
    assert record.payload_truncated and record.payload_encoding == "base64"
    assert len(contracts.encode(record)) < 1_000_000


def test_contract_error_codes_are_checked_and_errors_pickle() -> None:
    with pytest.raises(ValueError, match="unknown contract error code"):
        ContractError("bogus", "nope")
    error = ContractError("wrong_type", "field 'amount' must be a number, got string")
    assert str(error) == "wrong_type: field 'amount' must be a number, got string"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.detail) == (error.code, error.detail)


def test_decoders_mapping_covers_every_input_kind() -> None:
    assert set(contracts.DECODERS) == set(INPUT_KINDS)
    with pytest.raises(TypeError):
        contracts.DECODERS["transaction"] = contracts.decode_label  # type: ignore[index]


def test_decoding_a_valid_transaction_costs_microseconds() -> None:
    raw = event("transaction")
    calls = 2000
    seconds = min(timeit.repeat(lambda: contracts.decode_transaction(raw), number=calls, repeat=3))
    # measured about 1.5 µs here; the bound only catches an accidental slow path
    assert seconds / calls < 25e-6
