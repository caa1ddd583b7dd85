"""Event contracts: typed records for every Kafka message riskstream reads or writes.

The JSON Schema files in ``riskstream.schemas`` describe the same contracts for producers and
consumers outside Python; ``tests/test_contracts.py`` proves that both accept and reject the same
documents. Decoding runs once per event on the hot path, so it leans on msgspec (one reusable
decoder per type) and only does extra Python work on the failure path.

Error codes (stable: they end up in dead letters and in the ``reason`` metric label):

- ``empty_message``      the value is missing, empty or only whitespace (e.g. a tombstone)
- ``too_large``          the value is over the byte limit (checked before parsing)
- ``not_utf8``           the bytes are not valid UTF-8
- ``too_deep``           objects/arrays nest deeper than the depth limit
- ``not_json``           the text is not valid JSON
- ``non_finite_number``  ``NaN``/``Infinity`` literals, or a number that overflows a double
- ``not_object``         the document is valid JSON but not an object
- ``missing_field``      a required field is absent
- ``null_field``         a field that may not be null is null
- ``wrong_type``         a field has the wrong JSON type
- ``empty_field``        a string that must not be empty is empty (ids, indicator names)
- ``too_long``           a string is over its maximum length
- ``bad_format``         a string does not have its required form (currency code, enum value)
- ``bad_timestamp``      a timestamp is not an RFC 3339 date-time with a zone, or not a real date
- ``out_of_range``       a value is outside its bounds (negative amount, year before 1970,
                         too many indicators, ...); the worker also raises it for an event
                         time more than a day ahead of its clock
- ``inconsistent``       fields contradict each other (market ``high`` below ``low``, ``open`` or
                         ``close`` outside ``[low, high]``)
- ``key_mismatch``       raised by the worker: the Kafka message key is missing or is not the
                         entity id the event carries (per-entity state needs keyed messages)
- ``unknown_model``      raised by the worker: a request names a model it does not serve
- ``missing_feature``    raised by the worker: a request lacks a feature its model's input schema
                         names (riskstream.features.tabular; extra features are ignored)
- ``null_feature``       raised by the worker: a request's feature is null in a column that was
                         never missing in the model's training file
- ``internal_error``     reserved for the worker: the message passed its contract but processing
                         it failed (a bug); never raised by this module
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, TypeVar, get_args

import msgspec

__all__ = [
    "DECODERS",
    "ERROR_CODES",
    "AlertRecord",
    "ContractError",
    "DeadLetterRecord",
    "Label",
    "MarketEvent",
    "Reason",
    "Request",
    "ScoreRecord",
    "Transaction",
    "dead_letter",
    "decode_alert",
    "decode_dead_letter",
    "decode_label",
    "decode_market",
    "decode_request",
    "decode_score",
    "decode_transaction",
    "encode",
    "make_alert_id",
]

ErrorCode = Literal[
    "empty_message",
    "too_large",
    "not_utf8",
    "too_deep",
    "not_json",
    "non_finite_number",
    "not_object",
    "missing_field",
    "null_field",
    "wrong_type",
    "empty_field",
    "too_long",
    "bad_format",
    "bad_timestamp",
    "out_of_range",
    "inconsistent",
    "key_mismatch",
    "unknown_model",
    "missing_feature",
    "null_feature",
    "internal_error",
]
ERROR_CODES: Final[tuple[str, ...]] = get_args(ErrorCode)

# Limits. The schema files carry the same numbers; a test keeps them in step.
MAX_MESSAGE_BYTES: Final = 1_048_576
MAX_DEPTH: Final = 32
MAX_ID_LENGTH: Final = 128
MAX_AMOUNT: Final = 1e9
MAX_PRICE: Final = 1e12
MAX_VOLUME: Final = 1e15
MAX_INDICATORS: Final = 64
MAX_INDICATOR_NAME_LENGTH: Final = 64
MAX_INDICATOR_ABS: Final = 1e15
MAX_SCORE: Final = 1e15  # a count model's expected frequency; probabilities stop at 1
MAX_FEATURES: Final = 1024  # per request (indicator records for tabular models)
MAX_FEATURE_NAME_LENGTH: Final = 128
MAX_FEATURE_TEXT_LENGTH: Final = 256  # a categorical value
MIN_YEAR: Final = 1970
MAX_YEAR: Final = 2100
# Dead letters must themselves fit in a Kafka message (1 MB by default), base64 included.
MAX_DEAD_LETTER_PAYLOAD_BYTES: Final = 512 * 1024

# RFC 3339 date-time with a mandatory zone, years 1970-2100, dates that exist (leap years
# included), at most nanosecond precision. Lower-case "t"/"z" are allowed as RFC 3339 section 5.6
# permits; "+HHMM", a space separator and leap second 60 (msgspec alone accepts the first two)
# are not.
_YEAR = r"(?:19[7-9][0-9]|20[0-9]{2}|2100)"
_LEAP_YEAR = r"(?:19(?:7[26]|8[048]|9[26])|20(?:[02468][048]|[13579][26]))"
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_TIME = (
    r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_DATE_TIME = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29){_TIME}"
TIMESTAMP_PATTERN: Final = f"^{_DATE_TIME}$"
# Records out carry timestamps as this text: the same form with any four-digit year, because an
# in-range event time can fall outside 1970-2100 once converted to UTC (1970-01-01T00:00+14:00).
_ANY_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
_ANY_DATE_TIME = f"(?:[0-9]{{4}}-{_MONTH_DAY}|{_ANY_LEAP_YEAR}-02-29){_TIME}"
RECORD_TIMESTAMP_PATTERN: Final = f"^{_ANY_DATE_TIME}$"
CURRENCY_PATTERN: Final = "^[A-Z]{3}$"

_TIMESTAMP_RE = re.compile(_DATE_TIME).fullmatch
_ANY_YEAR_TIMESTAMP_RE = re.compile(_ANY_DATE_TIME).fullmatch
_CURRENCY_RE = re.compile("[A-Z]{3}").fullmatch


class ContractError(Exception):
    """A message broke its contract: ``code`` is one of ERROR_CODES, ``detail`` one sentence."""

    def __init__(self, code: str, detail: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown contract error code {code!r}; use one of ERROR_CODES")
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


# --- field types ---------------------------------------------------------------------------

EntityId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
Amount = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_AMOUNT)]
Price = Annotated[float, msgspec.Meta(gt=0.0, le=MAX_PRICE)]
Volume = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_VOLUME)]
IndicatorName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_INDICATOR_NAME_LENGTH)]
IndicatorValue = Annotated[float, msgspec.Meta(ge=-MAX_INDICATOR_ABS, le=MAX_INDICATOR_ABS)]
Indicators = Annotated[dict[IndicatorName, IndicatorValue], msgspec.Meta(max_length=MAX_INDICATORS)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
# A probability, except a count model's expected frequency (see ScoreRecord).
Score = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_SCORE)]
FeatureName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_FEATURE_NAME_LENGTH)]
FeatureValue = (
    Annotated[float, msgspec.Meta(ge=-MAX_INDICATOR_ABS, le=MAX_INDICATOR_ABS)]
    | Annotated[str, msgspec.Meta(max_length=MAX_FEATURE_TEXT_LENGTH)]
    | None
)
Features = Annotated[dict[FeatureName, FeatureValue], msgspec.Meta(max_length=MAX_FEATURES)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Encoding = Literal["utf-8", "base64"]
EventType = Literal["transaction", "market", "request"]
# Event types whose score is a probability; a request's model may predict a claim frequency.
PROBABILITY_EVENT_TYPES: Final = ("transaction", "market")


# --- events in ---------------------------------------------------------------------------------


class Transaction(msgspec.Struct, frozen=True, gc=False):
    """A card payment; ``amount`` 0 is valid (card verification)."""

    transaction_id: EntityId
    timestamp: Timestamp
    customer_id: EntityId
    terminal_id: EntityId
    amount: Amount
    currency: str | None = None


class MarketEvent(msgspec.Struct, frozen=True, gc=False):
    """One daily OHLCV bar (timestamp: the bar's date at 21:00:00Z) with optional indicators."""

    instrument: EntityId
    timestamp: Timestamp
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Volume
    indicators: Indicators = {}


class Label(msgspec.Struct, frozen=True, gc=False):
    """Ground truth that arrives late (e.g. a chargeback) for one transaction."""

    transaction_id: EntityId
    timestamp: Timestamp
    transaction_timestamp: Timestamp
    customer_id: EntityId
    terminal_id: EntityId
    fraud: bool


class Request(msgspec.Struct, frozen=True, gc=False):
    """One record of indicators for a tabular model (an application, a policy, a borrower's
    monthly snapshot): ``features`` maps the model's input names to numbers, category texts or
    null. Which names and types the named model needs is its card's input schema; the worker
    checks that (riskstream.features.tabular), this contract only the shape."""

    event_id: EntityId
    timestamp: Timestamp
    entity_id: EntityId
    model: EntityId
    features: Features


# The raw text of the timestamp fields: msgspec's datetime parser is more lenient than RFC 3339
# (space separator, "+HHMM"), so the text is checked too. Decoding these costs ~0.2 µs.
class _OneStamp(msgspec.Struct, gc=False):
    timestamp: str


class _LabelStamps(msgspec.Struct, gc=False):
    timestamp: str
    transaction_timestamp: str


# --- records out -------------------------------------------------------------------------------


def _require_finite(field: str, value: float, low: float | None, high: float | None) -> None:
    """Guards output records: msgspec would silently write NaN as null."""
    if not math.isfinite(value):
        raise ValueError(f"non_finite_number: field '{field}' must be finite, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(
            f"out_of_range: field '{field}' must be within [{low}, {high}], got {value}"
        )


def _timestamp_text(record: msgspec.Struct, field: str) -> None:
    """Records out hold RFC 3339 text; a tz-aware datetime is accepted and written in UTC."""
    value = getattr(record, field)
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(f"bad_timestamp: field '{field}' must carry a time zone")
        text = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        msgspec.structs.force_setattr(record, field, text)
    elif not isinstance(value, str) or _ANY_YEAR_TIMESTAMP_RE(value) is None:
        raise ValueError(
            f"bad_timestamp: field '{field}' must be an RFC 3339 date-time with a zone "
            f"such as 2018-08-08T10:15:03Z, got {_show(value)}"
        )


class ScoreRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One scored event on ``risk.scores``."""

    event_id: EntityId
    event_type: EventType
    entity_id: EntityId
    model: EntityId
    model_version: EntityId
    score: Score  # a probability; for a count model's request, the expected claim frequency
    event_timestamp: str  # RFC 3339 text; the constructor also takes a tz-aware datetime
    scored_at: str

    def __post_init__(self) -> None:
        _require_finite("score", self.score, 0.0, self._score_ceiling())
        _timestamp_text(self, "event_timestamp")
        _timestamp_text(self, "scored_at")

    def _score_ceiling(self) -> float:
        return 1.0 if self.event_type in PROBABILITY_EVENT_TYPES else MAX_SCORE


class Reason(msgspec.Struct, frozen=True):
    """One feature that drove a score: its value and its share of the score."""

    feature: EntityId
    value: float | None  # None: the request left this feature out (null), as the model allows
    contribution: float

    def __post_init__(self) -> None:
        if self.value is not None:
            _require_finite("value", self.value, None, None)
        _require_finite("contribution", self.contribution, None, None)


class AlertRecord(ScoreRecord, frozen=True, kw_only=True):
    """A score at or above its model's threshold, on ``risk.alerts``."""

    alert_id: EntityId
    severity: EntityId
    threshold: Score
    reasons: tuple[Reason, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_finite("threshold", self.threshold, 0.0, self._score_ceiling())


class DeadLetterRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A message that could not be scored, on ``risk.dlq``, with enough to replay or debug it."""

    source_topic: Annotated[str, msgspec.Meta(min_length=1, max_length=249)]
    partition: Count
    offset: Count
    key: str | None
    key_encoding: Encoding | None
    error: ErrorCode
    detail: str
    payload: str
    payload_encoding: Encoding
    payload_size: Count
    payload_truncated: bool
    received_at: str  # RFC 3339 text; the constructor also takes a tz-aware datetime

    def __post_init__(self) -> None:
        _timestamp_text(self, "received_at")


Event = Transaction | MarketEvent | Label | Request
OutRecord = ScoreRecord | AlertRecord | DeadLetterRecord

_ALERT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://riskstream.dev/alerts")
_ENCODER: Final = msgspec.json.Encoder()


def encode(record: OutRecord) -> bytes:
    """JSON bytes of an output record (UTF-8, timestamps RFC 3339)."""
    return _ENCODER.encode(record)


def make_alert_id(model: str, model_version: str, event_id: str) -> str:
    """Deterministic alert id, so a replayed event yields the same alert id (a UUID 5)."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"{model}\x1f{model_version}\x1f{event_id}"))


# --- decoding ----------------------------------------------------------------------------------

_T = TypeVar("_T")

_TX_DECODER: Final = msgspec.json.Decoder(Transaction)
_MARKET_DECODER: Final = msgspec.json.Decoder(MarketEvent)
_LABEL_DECODER: Final = msgspec.json.Decoder(Label)
_REQUEST_DECODER: Final = msgspec.json.Decoder(Request)
_ONE_STAMP_DECODER: Final = msgspec.json.Decoder(_OneStamp)
_LABEL_STAMPS_DECODER: Final = msgspec.json.Decoder(_LabelStamps)
_SCORE_DECODER: Final = msgspec.json.Decoder(ScoreRecord)
_ALERT_DECODER: Final = msgspec.json.Decoder(AlertRecord)
_DEAD_LETTER_DECODER: Final = msgspec.json.Decoder(DeadLetterRecord)
# Only for error details: float_hook keeps overflowing numbers as inf instead of failing.
_ANY_DECODER: Final = msgspec.json.Decoder(float_hook=float)


def decode_transaction(
    raw: bytes | None, *, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_DEPTH
) -> Transaction:
    """Validate and decode a ``transactions`` message; raises ContractError."""
    raw = _precheck(raw, max_bytes, max_depth)
    event = _decode(_TX_DECODER, raw)
    _check_timestamp(raw, "timestamp", _ONE_STAMP_DECODER.decode(raw).timestamp)
    currency = event.currency
    if currency is not None and _CURRENCY_RE(currency) is None:
        raise ContractError(
            "bad_format",
            f"field 'currency' must be a 3-letter upper-case ISO 4217 code, got {_show(currency)}",
        )
    return event


def decode_market(
    raw: bytes | None, *, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_DEPTH
) -> MarketEvent:
    """Validate and decode a ``market.indicators`` message; raises ContractError."""
    raw = _precheck(raw, max_bytes, max_depth)
    event = _decode(_MARKET_DECODER, raw)
    _check_timestamp(raw, "timestamp", _ONE_STAMP_DECODER.decode(raw).timestamp)
    low, high = event.low, event.high
    if high < low:
        raise ContractError(
            "inconsistent", f"field 'high' ({high}) must not be below field 'low' ({low})"
        )
    for name, price in (("open", event.open), ("close", event.close)):
        if not low <= price <= high:
            raise ContractError(
                "inconsistent",
                f"field '{name}' ({price}) must lie within [low, high] = [{low}, {high}]",
            )
    return event


def decode_label(
    raw: bytes | None, *, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_DEPTH
) -> Label:
    """Validate and decode a ``risk.labels`` message; raises ContractError."""
    raw = _precheck(raw, max_bytes, max_depth)
    event = _decode(_LABEL_DECODER, raw)
    stamps = _LABEL_STAMPS_DECODER.decode(raw)
    _check_timestamp(raw, "timestamp", stamps.timestamp)
    _check_timestamp(raw, "transaction_timestamp", stamps.transaction_timestamp)
    return event


def decode_request(
    raw: bytes | None, *, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_DEPTH
) -> Request:
    """Validate and decode a ``risk.requests`` message; raises ContractError. Whether its
    features suit its model is the worker's check (it knows the models)."""
    raw = _precheck(raw, max_bytes, max_depth)
    event = _decode(_REQUEST_DECODER, raw)
    _check_timestamp(raw, "timestamp", _ONE_STAMP_DECODER.decode(raw).timestamp)
    return event


def decode_score(raw: bytes | None, *, max_bytes: int = MAX_MESSAGE_BYTES) -> ScoreRecord:
    """Decode a ``risk.scores`` record (for consumers and tests); raises ContractError."""
    return _decode(_SCORE_DECODER, _precheck(raw, max_bytes, MAX_DEPTH))


def decode_alert(raw: bytes | None, *, max_bytes: int = MAX_MESSAGE_BYTES) -> AlertRecord:
    """Decode a ``risk.alerts`` record (e.g. for ``riskstream alerts``); raises ContractError."""
    return _decode(_ALERT_DECODER, _precheck(raw, max_bytes, MAX_DEPTH))


def decode_dead_letter(
    raw: bytes | None, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> DeadLetterRecord:
    """Decode a ``risk.dlq`` record; raises ContractError."""
    return _decode(_DEAD_LETTER_DECODER, _precheck(raw, max_bytes, MAX_DEPTH))


DECODERS: Final[Mapping[str, Callable[[bytes], Event]]] = MappingProxyType(
    {
        "transaction": decode_transaction,
        "market": decode_market,
        "label": decode_label,
        "request": decode_request,
    }
)


def dead_letter(
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    error: ContractError,
    payload: bytes | None,
    received_at: datetime | float | str,
    *,
    max_payload_bytes: int = MAX_DEAD_LETTER_PAYLOAD_BYTES,
) -> DeadLetterRecord:
    """Build the dead letter for a rejected message.

    Bytes are kept as UTF-8 text when they decode, else base64. Payloads over
    ``max_payload_bytes`` are cut (``payload_truncated``) so the dead letter still fits in a
    Kafka message; ``payload_size`` keeps the original length. ``received_at`` is a tz-aware
    datetime, epoch seconds or RFC 3339 text.
    """
    payload = b"" if payload is None else bytes(payload)
    truncated = len(payload) > max_payload_bytes
    text, payload_encoding = _as_text(payload[:max_payload_bytes], cut=truncated)
    key_text, key_encoding = (None, None) if key is None else _as_text(bytes(key), cut=False)
    if isinstance(received_at, int | float):
        received_at = datetime.fromtimestamp(received_at, UTC)
    return DeadLetterRecord(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key=key_text,
        key_encoding=key_encoding,
        error=error.code,  # type: ignore[arg-type]  # ContractError guarantees a known code
        detail=error.detail,
        payload=text,
        payload_encoding=payload_encoding,
        payload_size=len(payload),
        payload_truncated=truncated,
        received_at=received_at,  # type: ignore[arg-type]  # __post_init__ makes it text
    )


def _as_text(data: bytes, *, cut: bool) -> tuple[str, Encoding]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        # A cut through the middle of a multi-byte character is still text.
        if cut and exc.reason == "unexpected end of data":
            try:
                return data[: exc.start].decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                pass
        return base64.b64encode(data).decode("ascii"), "base64"


# --- checks and error mapping ------------------------------------------------------------------

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_EMPTY_PAIRS = re.compile(rb"\{\}|\[\]")


def _precheck(raw: bytes | None, max_bytes: int, max_depth: int) -> bytes:
    """Transport-level limits, before the parser sees the bytes."""
    if raw is None or len(raw) == 0:
        raise ContractError("empty_message", "message is empty (no value)")
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    if len(raw) > max_bytes:
        raise ContractError(
            "too_large", f"message is {len(raw)} bytes, over the limit of {max_bytes} bytes"
        )
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ContractError(
                "not_utf8", f"message is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
    if raw.count(b"{") + raw.count(b"[") > max_depth and _nests_deeper_than(raw, max_depth):
        raise ContractError(
            "too_deep", f"message nests objects or arrays deeper than {max_depth} levels"
        )
    return raw


def _nests_deeper_than(raw: bytes, limit: int) -> bool:
    """Each pass removes the innermost empty pairs, i.e. one level of nesting."""
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", raw))
    for _ in range(limit):
        reduced = _EMPTY_PAIRS.sub(b"", brackets)
        if not reduced or reduced == brackets:
            return False  # shallow enough, or unbalanced: the parser will say so
        brackets = reduced
    return True


def _decode(decoder: msgspec.json.Decoder[_T], raw: bytes) -> _T:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _from_validation_error(str(exc), raw) from None
    except msgspec.DecodeError as exc:
        raise _from_decode_error(str(exc), raw) from None
    except RecursionError:
        raise ContractError("too_deep", "message nests objects or arrays too deeply") from None
    except UnicodeDecodeError as exc:
        raise ContractError("not_utf8", f"message is not valid UTF-8 ({exc.reason})") from None


def _check_timestamp(raw: bytes, field: str, text: str) -> None:
    if _TIMESTAMP_RE(text) is not None:
        return
    if _ANY_YEAR_TIMESTAMP_RE(text) is not None:  # a real date-time, outside the years
        raise ContractError(
            "out_of_range",
            f"field '{field}' must be between the years {MIN_YEAR} and {MAX_YEAR}, "
            f"got {_show(text)}",
        )
    raise ContractError(
        "bad_timestamp",
        f"field '{field}' must be an RFC 3339 date-time with a zone such as "
        f"2018-08-08T10:15:03Z, got {_show(text)}",
    )


_BYTE_POSITION = re.compile(r"\(byte (\d+)\)")
_NON_FINITE_TOKEN = re.compile(rb"[+-]?(?:nan|inf(?:inity)?)", re.IGNORECASE)


def _from_decode_error(message: str, raw: bytes) -> ContractError:
    if not raw.strip():
        return ContractError("empty_message", "message is empty (only whitespace)")
    position = _BYTE_POSITION.search(message)
    if position is not None:
        at = int(position.group(1))
        # msgspec points at the token, or just past "nan" while it tried to read "null".
        for start in (at - 1, at, at - 4):
            token = _NON_FINITE_TOKEN.match(raw, max(start, 0))
            if token is not None:
                return ContractError(
                    "non_finite_number",
                    f"message contains {token.group().decode()} at byte {token.start()}, "
                    "but JSON numbers must be finite",
                )
    reason = message.removeprefix("JSON is malformed: ").replace("(byte", "(at byte")
    if message == "Input data was truncated":
        reason = "it ends before the document is complete"
    return ContractError("not_json", f"message is not valid JSON: {reason}")


_VALIDATION_MESSAGE = re.compile(
    r"(?P<message>.*?)(?: - at `(?P<path>[^`]*)`(?: in `(?P<parent>[^`]*)`)?)?", re.DOTALL
)
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")
_EXPECTED_GOT = re.compile(r"Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`")
_LENGTH = re.compile(r"Expected `(?P<kind>str|object|array)` of length (?P<op>[<>]=) (?P<n>\d+)")
_BOUND = re.compile(r"Expected `(?:float|int)` (?P<op>[<>]=?) (?P<limit>\S+)")
_OWN_CODE = re.compile(r"(?P<code>[a-z_]+): (?P<detail>.+)", re.DOTALL)

_EXPECTED_NAMES: Final = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "a boolean",
    "null": "null",
    "object": "an object",
    "array": "an array",
    "datetime": "an RFC 3339 date-time string",
}
_GOT_NAMES: Final = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}


def _from_validation_error(message: str, raw: bytes) -> ContractError:
    """Turn msgspec's message (``Expected `float`, got `str` - at `$.amount```) into a code."""
    parts = _VALIDATION_MESSAGE.fullmatch(message)
    assert parts is not None  # the pattern matches any string
    text, path, parent = parts["message"], parts["path"], parts["parent"]
    field = _subject(path, parent, raw)

    if (own := _OWN_CODE.fullmatch(text)) and own["code"] in ERROR_CODES:
        return ContractError(own["code"], own["detail"])
    if missing := _MISSING.fullmatch(text):
        where = "" if path is None else path.removeprefix("$").removeprefix(".")
        name = f"{where}.{missing['field']}" if where else missing["field"]
        return ContractError("missing_field", f"field '{name}' is required but missing")
    if field is None:
        got = _EXPECTED_GOT.fullmatch(text)
        kind = _GOT_NAMES.get(got["got"], got["got"]) if got else "something else"
        return ContractError("not_object", f"message must be a JSON object, got {kind}")
    if expected := _EXPECTED_GOT.fullmatch(text):
        if expected["got"] == "null":
            return ContractError("null_field", f"{field} must not be null")
        want = " or ".join(
            _EXPECTED_NAMES.get(name, name) for name in expected["expected"].split(" | ")
        )
        got = _GOT_NAMES.get(expected["got"], expected["got"])
        return ContractError("wrong_type", f"{field} must be {want}, got {got}")
    if length := _LENGTH.fullmatch(text):
        return _length_error(field, length["kind"], length["op"], int(length["n"]))
    if bound := _BOUND.fullmatch(text):
        value = _value_at(raw, path)
        got = "" if value is _UNKNOWN else f", got {_show(value)}"
        limit = _number_text(float(bound["limit"]))
        return ContractError("out_of_range", f"{field} must be {bound['op']} {limit}{got}")
    if text == "Number out of range":
        return ContractError("non_finite_number", f"{field} is too large to be a finite number")
    if "timezone component" in text:
        return ContractError(
            "bad_timestamp", f"{field} has no time zone; write it like 2018-08-08T10:15:03Z"
        )
    if text.startswith("Invalid RFC3339"):
        value = _value_at(raw, path)
        got = "" if value is _UNKNOWN else f", got {_show(value)}"
        return ContractError(
            "bad_timestamp",
            f"{field} must be a real RFC 3339 date-time with a zone "
            f"such as 2018-08-08T10:15:03Z{got}",
        )
    if text.startswith("Invalid enum value"):
        value = _value_at(raw, path)
        got = "" if value is _UNKNOWN else f": {_show(value)}"
        return ContractError("bad_format", f"{field} has a value that is not allowed{got}")
    return ContractError("wrong_type", f"{field} is invalid: {text}")


def _length_error(field: str, kind: str, op: str, limit: int) -> ContractError:
    if kind == "str" and op == "<=":
        return ContractError("too_long", f"{field} must be at most {limit} characters")
    if kind == "str" and limit == 1:
        return ContractError("empty_field", f"{field} must not be empty")
    if kind == "str":
        return ContractError("bad_format", f"{field} must be at least {limit} characters")
    bound = "at most" if op == "<=" else "at least"
    return ContractError("out_of_range", f"{field} must have {bound} {limit} entries")


_UNKNOWN: Final = object()
_PATH_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _steps(path: str) -> list[str | int | None]:
    """``$.reasons[0].value`` -> ["reasons", 0, "value"]; ``[...]`` (a dict value) -> None."""
    steps: list[str | int | None] = []
    for name, index in _PATH_STEP.findall(path.removeprefix("$")):
        if name:
            steps.append(name)
        else:
            steps.append(None if index == "..." else int(index))
    return steps


def _value_at(raw: bytes, path: str | None) -> Any:
    """The offending JSON value, for the error sentence; only runs on the failure path."""
    if path is None or not path.startswith("$"):
        return _UNKNOWN
    try:
        node: Any = _ANY_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return _UNKNOWN
    for step in _steps(path):
        if step is None:  # msgspec does not name the dict key: take the first bad entry
            entry = _first_bad_entry(node)
            node = _UNKNOWN if entry is None else entry[1]
        elif isinstance(step, int):
            node = node[step] if isinstance(node, list) and step < len(node) else _UNKNOWN
        else:
            node = node.get(step, _UNKNOWN) if isinstance(node, dict) else _UNKNOWN
    return node


def _first_bad_entry(mapping: Any) -> tuple[str, Any] | None:
    """The first indicator that is not a number within bounds (indicators is the only dict)."""
    if not isinstance(mapping, dict):
        return None
    for key, value in mapping.items():
        if type(value) not in (int, float) or not -MAX_INDICATOR_ABS <= value <= MAX_INDICATOR_ABS:
            return str(key), value
    return None


def _subject(path: str | None, parent: str | None, raw: bytes) -> str | None:
    """``field 'amount'`` for msgspec's path ``$.amount``; None means the document itself."""
    if path is None or path == "$":
        return None
    if path == "key":
        return f"a key of {_subject(parent, None, raw)}"
    readable = path.removeprefix("$").removeprefix(".")
    if "[...]" in readable:
        dict_path = path.split("[...]")[0]
        entry = _first_bad_entry(_value_at(raw, dict_path))
        readable = readable.replace("[...]", " value" if entry is None else f".{entry[0]}", 1)
    return f"field '{readable}'"


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def _show(value: Any) -> str:
    """A short repr for error sentences: dead letters must stay small."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
