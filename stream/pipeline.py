"""Per-event work of the stream, free of Faust so it can be tested and reasoned about alone.

Fraud scoring needs state keyed two ways: by customer, and by terminal.

    transactions (key customer) -stage 1-> score (customer state here, terminal state from the
         |                                        terminal replica, riskstream.terminal_replica)
         +-forward-> <app>-fraud-by-terminal (key terminal) -every worker-> terminal replica
    risk.labels  (key tx id)    -forward-/

Stage 1 updates the customer's state, computes the customer-side features and forwards the
transaction to the history topic; every worker reads that topic into its replica of all
terminals, and stage 1 completes the vector from it once the watermarks say the terminal side
is complete (riskstream.watermarks). Market events need one state (per instrument) and go
straight to scoring; tabular requests need none.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime

import msgspec

from riskstream import contracts
from riskstream.contracts import ContractError
from riskstream.features import fraud as fraud_features
from riskstream.features import market as market_features
from riskstream.features.tabular import TabularInputError, TabularSchema

StateTable = MutableMapping[bytes, bytes]


class ForwardedTransaction(msgspec.Struct, tag="tx", array_like=True, frozen=True):
    """A validated transaction, customer features attached, as the history topic carries it."""

    transaction_id: str
    timestamp: float
    event_timestamp: str
    customer_id: str
    terminal_id: str
    amount: float
    customer_features: tuple[float, ...]
    source_timestamp_ms: int
    too_late: bool = False  # beyond the customer's allowed lateness: store it nowhere


class ForwardedLabel(msgspec.Struct, tag="label", array_like=True, frozen=True):
    """A validated fraud label, as the history topic carries it."""

    transaction_id: str
    transaction_timestamp: float
    terminal_id: str
    fraud: bool
    label_timestamp: float = float("nan")


class ForwardedWatermark(msgspec.Struct, tag="wm", array_like=True, frozen=True):
    """Stage 1 has forwarded everything from one source partition up to `time` (transaction
    time; +inf: caught up). See riskstream.watermarks."""

    topic: str
    partition: int
    time: float
    reader: str = ""  # which worker process reported (riskstream.terminal_replica)
    sequence: int = 0  # the reader's count of its reports of this partition


Forwarded = ForwardedTransaction | ForwardedLabel | ForwardedWatermark
_forward_encoder = msgspec.msgpack.Encoder()
_forward_decoder = msgspec.msgpack.Decoder(Forwarded)


def encode_forwarded(message: Forwarded) -> bytes:
    return _forward_encoder.encode(message)


def decode_forwarded(raw: bytes) -> Forwarded:
    return _forward_decoder.decode(raw)


@dataclasses.dataclass(frozen=True, slots=True)
class PendingScore:
    """One event ready to be scored: what the micro-batcher needs to build its records."""

    model: str
    event_id: str
    event_type: str
    entity_id: str
    event_timestamp: str
    vector: list[float]
    source_timestamp_ms: int


def rfc3339(moment: datetime) -> str:
    """The canonical text form of an event time in records out (UTC, `Z`, microseconds if any)."""
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def _check_key(key: bytes | None, expected: str, field: str) -> None:
    """Per-entity state is only right when producers key messages by the entity id."""
    if key is None:
        raise ContractError(
            "key_mismatch", f"the message has no key: it must be the event's {field}"
        )
    if key != expected.encode():
        shown = key[:64].decode("utf-8", "replace")
        raise ContractError(
            "key_mismatch",
            f"the message key {shown!r} does not match the event's {field} {expected!r}",
        )


MAX_CLOCK_SKEW_SECONDS = 86_400.0
"""How far ahead of the worker's clock an event time may be. Further ahead is not a clock skew
but a wrong timestamp, and such an event would hold back every transaction behind it (scoring
waits until every source passes an event's time, see riskstream.watermarks)."""


def _check_not_future(moment: datetime, field: str, now: float | None) -> float:
    seconds = moment.timestamp()
    limit = (time.time() if now is None else now) + MAX_CLOCK_SKEW_SECONDS
    if seconds > limit:
        raise ContractError(
            "out_of_range",
            f"field '{field}' ({rfc3339(moment)}) is more than a day ahead of the worker's "
            "clock: fix the producer's timestamps (or the worker host's clock)",
        )
    return seconds


def _load(table: StateTable, key: bytes, state_type: Callable[[], object]) -> object:
    stored = table.get(key)
    return state_type.from_bytes(stored) if stored is not None else state_type()  # type: ignore[attr-defined]


def ingest_transaction(
    raw: bytes | None,
    key: bytes | None,
    timestamp_ms: int,
    customers: StateTable,
    now: float | None = None,
) -> ForwardedTransaction:
    """Stage 1: validate, update the customer's state, compute the customer-side features."""
    tx = contracts.decode_transaction(raw)
    _check_key(key, tx.customer_id, "customer_id")
    ts = _check_not_future(tx.timestamp, "timestamp", now)
    customer_key = tx.customer_id.encode()
    state = _load(customers, customer_key, fraud_features.CustomerState)
    too_late = fraud_features.customer_is_too_late(state, ts)  # type: ignore[arg-type]
    customer_part = fraud_features.customer_step(state, tx.transaction_id, ts, tx.amount)
    customers[customer_key] = state.to_bytes()  # type: ignore[attr-defined]
    return ForwardedTransaction(
        transaction_id=tx.transaction_id,
        timestamp=ts,
        event_timestamp=rfc3339(tx.timestamp),
        customer_id=tx.customer_id,
        terminal_id=tx.terminal_id,
        amount=tx.amount,
        customer_features=tuple(customer_part),
        source_timestamp_ms=timestamp_ms,
        too_late=too_late,
    )


def ingest_label(raw: bytes | None, key: bytes | None, now: float | None = None) -> ForwardedLabel:
    """Validate a fraud label; it is keyed by transaction id and re-keyed by terminal."""
    label = contracts.decode_label(raw)
    _check_key(key, label.transaction_id, "transaction_id")
    return ForwardedLabel(
        transaction_id=label.transaction_id,
        transaction_timestamp=_check_not_future(
            label.transaction_timestamp, "transaction_timestamp", now
        ),
        terminal_id=label.terminal_id,
        fraud=label.fraud,
        label_timestamp=_check_not_future(label.timestamp, "timestamp", now),
    )


def transaction_score(
    message: ForwardedTransaction, terminal: fraud_features.TerminalState | None
) -> PendingScore:
    """The full vector of a transaction whose terminal state is read, not written: the terminal
    replica stores every transaction itself (riskstream.terminal_replica)."""
    terminal_part = fraud_features.terminal_features_at(terminal, message.timestamp)
    vector = fraud_features.fraud_vector(
        message.timestamp, message.amount, message.customer_features, terminal_part
    )
    return PendingScore(
        model="fraud",
        event_id=message.transaction_id,
        event_type="transaction",
        entity_id=message.customer_id,
        event_timestamp=message.event_timestamp,
        vector=list(vector),
        source_timestamp_ms=message.source_timestamp_ms,
    )


def market_event_id(instrument: str, moment: datetime) -> str:
    """Market bars have no id of their own: instrument and trading day identify one."""
    return f"{instrument}:{moment.astimezone(UTC).date().isoformat()}"


def market_stage(
    raw: bytes | None, key: bytes | None, timestamp_ms: int, instruments: StateTable
) -> PendingScore:
    """Validate a market bar, update the instrument's state and return its feature vector."""
    bar = contracts.decode_market(raw)
    _check_key(key, bar.instrument, "instrument")
    instrument_key = bar.instrument.encode()
    state = _load(instruments, instrument_key, market_features.InstrumentState)
    vix = bar.indicators.get("vix") if bar.indicators else None
    vector = market_features.market_step(
        state,
        bar.timestamp.timestamp(),
        bar.open,
        bar.high,
        bar.low,
        bar.close,
        bar.volume,
        vix,
    )
    instruments[instrument_key] = state.to_bytes()  # type: ignore[attr-defined]
    return PendingScore(
        model="market",
        event_id=market_event_id(bar.instrument, bar.timestamp),
        event_type="market",
        entity_id=bar.instrument,
        event_timestamp=rfc3339(bar.timestamp),
        vector=list(vector),
        source_timestamp_ms=timestamp_ms,
    )


# The codes a tabular model's input schema raises that a request can cause (the contract already
# rules out a features value that is not an object); anything else is a bug, not bad input.
_REQUEST_ERROR_CODES = frozenset(
    {"missing_feature", "null_feature", "wrong_type", "non_finite_number"}
)


def request_stage(
    raw: bytes | None, timestamp_ms: int, schemas: Mapping[str, TabularSchema]
) -> PendingScore:
    """Validate a request against its contract and its model's input schema; return the row.

    Stateless: a tabular model scores one record of indicators, so the Kafka key (the entity id
    by convention) only spreads requests over partitions and is not checked.
    """
    request = contracts.decode_request(raw)
    schema = schemas.get(request.model)
    if schema is None:
        served = ", ".join(sorted(schemas)) or "none"
        raise ContractError(
            "unknown_model",
            f"no tabular model named {request.model!r} is served here (served: {served})",
        )
    try:
        row = schema.encode_record(request.features)
    except TabularInputError as error:
        if error.code not in _REQUEST_ERROR_CODES:
            raise
        raise ContractError(error.code, f"model {request.model!r}: {error.detail}") from None
    return PendingScore(
        model=request.model,
        event_id=request.event_id,
        event_type="request",
        entity_id=request.entity_id,
        event_timestamp=rfc3339(request.timestamp),
        vector=row.tolist(),
        source_timestamp_ms=timestamp_ms,
    )
