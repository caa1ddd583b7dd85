"""Bad input on every input topic, interleaved with valid events, through one real worker.

The worker serves fraud and market. Valid transactions, labels and market bars go in with
about a hundred broken messages (a catalogue of 30+ kinds per topic) at seeded positions,
plus the cases the contract accepts on purpose: zero amounts, time zones other than UTC, extra
fields, a redelivered transaction, labels of transactions nobody has seen, a transaction
too late for the windows. Labels (valid and bad) go first, then transactions and bars, and each
customer pays at a terminal of its own: test_reliability_crash explains why. Then:

- every valid event is scored exactly as the offline code scores the valid events alone;
- every bad message is in risk.dlq with its stable code, its source partition and offset and
  its original bytes, and `riskstream_dead_letters_total{topic,reason}` counts the same;
- the worker never restarted.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from stream_support import StreamEnv, WorkerProcess, collect, metric_value
from test_reliability_crash import labels_done, own_terminals, wait_until
from test_reliability_model import logistic_onnx

from riskstream import contracts
from riskstream.demo import BUNDLED_MODELS
from riskstream.features import fraud as fraud_features
from riskstream.features.market import FEATURE_NAMES as MARKET_FEATURES
from riskstream.features.market import compute_market_features
from riskstream.history import MarketHistory, TransactionHistory
from riskstream.pipeline import market_event_id
from riskstream.replay import Outgoing, market_events, timestamp_text, transaction_events
from riskstream.scoring import load_model
from riskstream.simulate import generate_market, generate_transactions

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SEED = 20250107
TOLERANCE = 1e-5
DAY = 86_400.0
TX, LABELS, MARKET = "transactions", "labels", "market"
REQUESTS = "requests"  # tabular models' input: its catalogue runs in tests/test_tabular_stream.py
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # the test producer must be able to send > 1 MB


# --- models: the shipped fraud model, and a market model ---------------------------------------


def write_market_model(models_dir: Path, history: MarketHistory) -> None:
    """The shipped market model when there is one, else a small logistic one with a real card:
    this test is about the pipeline around the model, not about its quality."""
    shipped = BUNDLED_MODELS / "market"
    if shipped.is_dir() and any(shipped.iterdir()):
        shutil.copytree(shipped, models_dir / "market")
        return
    features = compute_market_features(history)
    version = models_dir / "market" / "20250101T000000Z"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(logistic_onnx(len(MARKET_FEATURES)))
    card = {
        "name": "market",
        "version": version.name,
        "created_at": "2025-01-01T00:00:00Z",
        "features": list(MARKET_FEATURES),
        "input_name": "features",
        "output_name": "score",
        "threshold": 0.5,
        "threshold_rule": "fixed for tests",
        "training_window": {"from": "2024-01-01", "to": "2024-06-30"},
        "data_fingerprint": {},
        "metrics": {},
        "library_versions": {},
        "severity_bands": [
            {"severity": "medium", "min_score": 0.5},
            {"severity": "high", "min_score": 0.8},
        ],
        "feature_means": features.mean(axis=0).tolist(),
        "feature_stds": features.std(axis=0).tolist(),
    }
    (version / "card.json").write_text(json.dumps(card))


# --- the bad-input catalogue ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bad:
    role: str  # TX, LABELS or MARKET
    kind: str
    key: bytes | None
    value: bytes | None
    code: str

    @property
    def case(self) -> str:
        return f"{self.role}/{self.kind}"


TEMPLATES: dict[str, dict[str, Any]] = {
    TX: {
        "transaction_id": "bad-tx",
        "timestamp": "2025-01-10T10:00:00Z",
        "customer_id": "C-bad",
        "terminal_id": "T-bad",
        "amount": 10.0,
        "currency": "EUR",
    },
    LABELS: {
        "transaction_id": "bad-label",
        "timestamp": "2025-01-17T10:00:00Z",
        "transaction_timestamp": "2025-01-10T10:00:00Z",
        "customer_id": "C-bad",
        "terminal_id": "T-bad",
        "fraud": True,
    },
    MARKET: {
        "instrument": "SYN",
        "timestamp": "2030-01-02T21:00:00Z",
        "open": 100.0,
        "high": 101.0,
        "low": 99.0,
        "close": 100.5,
        "volume": 1_000_000.0,
        "indicators": {"vix": 15.0},
    },
    REQUESTS: {
        "event_id": "bad-request",
        "timestamp": "2025-01-10T10:00:00Z",
        "entity_id": "B-bad",
        "model": "loans",
        "features": {"income": 2500.0},
    },
}
ID_FIELD = {
    TX: "transaction_id",
    LABELS: "transaction_id",
    MARKET: "instrument",
    REQUESTS: "event_id",
}
KEY_FIELD = {
    TX: "customer_id",
    LABELS: "transaction_id",
    MARKET: "instrument",
    REQUESTS: "entity_id",
}
STRING_FIELD = {
    TX: "customer_id",
    LABELS: "terminal_id",
    MARKET: "instrument",
    REQUESTS: "entity_id",
}
# fraud: a boolean; features: an object (the catalogue's number cases break it all the same)
NUMBER_FIELD = {TX: "amount", LABELS: "fraud", MARKET: "close", REQUESTS: "features"}


def epoch(text: str) -> float:
    """Seconds of an RFC 3339 text (any zone, upper- or lower-case T and Z)."""
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00")).timestamp()


def json_bytes(document: Any) -> bytes:
    return json.dumps(document).encode()


def generic_kinds(role: str) -> Iterator[tuple[str, bytes | None, str, bool]]:
    """(kind, value, expected code, keyed by the entity) for every input topic."""
    base = {**TEMPLATES[role], ID_FIELD[role]: f"bad-{role}"}
    number = NUMBER_FIELD[role]

    def with_(**changes: Any) -> bytes:
        return json_bytes({**base, **changes})

    def without(field: str) -> bytes:
        return json_bytes({k: v for k, v in base.items() if k != field})

    def literal(token: bytes) -> bytes:  # a JSON token json.dumps cannot write
        return with_(**{number: 424242}).replace(b"424242", token)

    yield "truncated json", json_bytes(base)[:-9], "not_json", False
    yield "not json at all", b"<event><amount>10</amount></event>", "not_json", False
    yield (
        "latin-1 bytes",
        with_(**{STRING_FIELD[role]: "caf_"}).replace(b"caf_", b"caf\xe9"),
        "not_utf8",
        False,
    )
    yield "empty message", b"", "empty_message", False
    yield "only whitespace", b" \n\t ", "empty_message", False
    yield "tombstone (no value)", None, "empty_message", False
    yield "json array", json_bytes([base]), "not_object", False
    yield "json string", b'"an event"', "not_object", False
    yield "json number", b"12.5", "not_object", False
    yield "json null", b"null", "not_object", False
    yield "missing timestamp", without("timestamp"), "missing_field", False
    yield f"missing {number}", without(number), "missing_field", False
    yield "null id", with_(**{ID_FIELD[role]: None}), "null_field", False
    yield f"null {number}", with_(**{number: None}), "null_field", False
    yield f"{number} as text", with_(**{number: "12.5"}), "wrong_type", False
    yield "id as number", with_(**{STRING_FIELD[role]: 12345}), "wrong_type", False
    yield "timestamp as number", with_(timestamp=1736503200), "wrong_type", False
    yield "NaN", literal(b"NaN"), "non_finite_number", False
    yield "-Infinity", literal(b"-Infinity"), "non_finite_number", False
    yield "1e999", literal(b"1e999"), "non_finite_number", False
    yield "timestamp without zone", with_(timestamp="2025-01-10T10:00:00"), "bad_timestamp", False
    yield "timestamp unparsable", with_(timestamp="yesterday noon"), "bad_timestamp", False
    yield "timestamp not a date", with_(timestamp="2025-02-30T10:00:00Z"), "bad_timestamp", False
    yield "timestamp with space", with_(timestamp="2025-01-10 10:00:00Z"), "bad_timestamp", False
    yield "far future", with_(timestamp="2999-01-01T00:00:00Z"), "out_of_range", False
    yield "far past", with_(timestamp="1900-01-01T00:00:00Z"), "out_of_range", False
    yield "10k-char string", with_(**{STRING_FIELD[role]: "x" * 10_000}), "too_long", False
    yield "empty id", with_(**{STRING_FIELD[role]: ""}), "empty_field", False
    deep: Any = "bottom"
    for _ in range(100):
        deep = [deep]
    yield "nested 100 deep", with_(extra=deep), "too_deep", False
    yield "1.1 MB message", with_(note="x" * 1_100_000), "too_large", False
    yield "key of another entity", json_bytes(base), "key_mismatch", False
    yield "no key", with_(**{ID_FIELD[role]: f"bad-{role}-no-key"}), "key_mismatch", True


def specific_kinds(role: str) -> Iterator[tuple[str, bytes, str]]:
    base = {**TEMPLATES[role], ID_FIELD[role]: f"bad-{role}"}

    def with_(**changes: Any) -> bytes:
        return json_bytes({**base, **changes})

    if role == TX:
        yield "negative amount", with_(amount=-5.0), "out_of_range"
        yield "absurd amount", with_(amount=1e12), "out_of_range"
        yield "amount true", with_(amount=True), "wrong_type"
        yield "currency not ISO", with_(currency="euro"), "bad_format"
    elif role == LABELS:
        yield "fraud as 1", with_(fraud=1), "wrong_type"
        yield (
            "transaction_timestamp date only",
            with_(transaction_timestamp="2025-01-10"),
            ("bad_timestamp"),
        )
    else:
        yield "high below low", with_(high=98.0), "inconsistent"
        yield "open outside the range", with_(open=120.0), "inconsistent"
        yield "zero price", with_(low=0.0, open=0.0), "out_of_range"
        yield "negative volume", with_(volume=-1.0), "out_of_range"
        yield "indicator as text", with_(indicators={"vix": "high"}), "wrong_type"
        yield "65 indicators", with_(indicators={f"i{n}": 1.0 for n in range(65)}), "out_of_range"
        yield "indicator name 65 chars", with_(indicators={"v" * 65: 1.0}), "too_long"
        yield "indicators null", with_(indicators=None), "null_field"


def catalogue() -> list[Bad]:
    bads = []
    for role in (TX, LABELS, MARKET):
        for kind, value, code, no_key in generic_kinds(role):
            bads.append(
                Bad(role, kind, None if no_key else f"case:{role}/{kind}".encode(), value, code)
            )
        for kind, value, code in specific_kinds(role):
            bads.append(Bad(role, kind, f"case:{role}/{kind}".encode(), value, code))
    return bads


def test_the_catalogue_is_wide_enough() -> None:
    bads = catalogue()
    for role in (TX, LABELS, MARKET):
        assert len({bad.kind for bad in bads if bad.role == role}) >= 25
    assert len({bad.case for bad in bads}) == len(bads)
    # The request codes that need a model's card are in tests/test_tabular_stream.py's catalogue.
    card_codes = {"unknown_model", "missing_feature", "null_feature"}
    assert {bad.code for bad in bads} >= set(contracts.ERROR_CODES) - {
        "internal_error",
        *card_codes,
    }


# --- the run ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Message:
    role: str
    key: bytes | None
    value: bytes | None
    bad: Bad | None = None


@dataclasses.dataclass
class Plan:
    """What goes in, in order, and what the offline code says must come out."""

    history: TransactionHistory
    market: MarketHistory
    messages: list[Message]
    expected_tx: dict[str, float]  # event id -> offline score, each valid transaction
    expected_market: dict[str, float]
    deliveries: Counter[str]  # event id -> score records expected
    duplicated: list[str]
    late: tuple[str, float] = ("", 0.0)
    ghost_labels: int = 0
    labels: int = 0
    variants: dict[str, bytes] = dataclasses.field(default_factory=dict)


def transaction_history() -> TransactionHistory:
    history = own_terminals(
        generate_transactions(n_customers=100, n_terminals=200, days=42, seed=SEED)
    )
    amount = history.amount.copy()
    rng = np.random.default_rng(SEED)
    amount[rng.choice(len(amount), 6, replace=False)] = 0.0  # card verifications: accepted
    return dataclasses.replace(history, amount=amount)


def variant(value: bytes, how: int) -> bytes:
    """The same transaction written differently, as the contract allows."""
    event = json.loads(value)
    moment = datetime.fromtimestamp(epoch(event["timestamp"]), UTC)
    if how == 0:
        event["timestamp"] = moment.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    elif how == 1:
        event["timestamp"] = moment.astimezone(timezone(timedelta(hours=-8))).isoformat()
    elif how == 2:
        event["timestamp"] = event["timestamp"].replace("T", "t").replace("Z", "z")
    elif how == 3:
        event.update(channel="web", device={"os": "android", "fingerprint": [1, 2, 3]}, note=1e3)
    elif how == 4:
        event["currency"] = None
    else:
        event.pop("currency", None)
    return json_bytes(event)


def stream_order(valid: list[Outgoing], market: list[Outgoing]) -> list[Message]:
    """Market bars spread evenly through the card stream (their topic is independent)."""
    roles = {"tx": TX, "label": LABELS, "market": MARKET}
    merged: list[Message] = []
    step = max(1, len(valid) // max(1, len(market)))
    bars = iter(market)
    for i, out in enumerate(valid):
        merged.append(Message(roles[out.topic], out.key, out.value))
        if i % step == 0:
            bar = next(bars, None)
            if bar is not None:
                merged.append(Message(MARKET, bar.key, bar.value))
    merged.extend(Message(MARKET, bar.key, bar.value) for bar in bars)
    return merged


def offline_fraud_scores(history: TransactionHistory, models_dir: Path) -> dict[str, float]:
    model = load_model(models_dir, "fraud")
    scores = model.score(fraud_features.compute_fraud_features(history))
    return {str(tx): float(s) for tx, s in zip(history.transaction_id, scores, strict=True)}


def entity_states(
    prefix: list[Message], customer: str, terminal: str
) -> tuple[fraud_features.CustomerState, fraud_features.TerminalState]:
    """The states the stream holds for one customer and one terminal after `prefix`."""
    customer_state = fraud_features.CustomerState()
    terminal_state = fraud_features.TerminalState()
    for message in prefix:
        if message.role not in (TX, LABELS):
            continue
        event = json.loads(message.value)
        if message.role == LABELS and event["terminal_id"] == terminal:
            fraud_features.terminal_label(
                terminal_state,
                event["transaction_id"],
                epoch(event["transaction_timestamp"]),
                event["fraud"],
            )
        elif message.role == TX:
            when = epoch(event["timestamp"])
            if event["customer_id"] == customer:
                fraud_features.customer_step(
                    customer_state, event["transaction_id"], when, event["amount"]
                )
            if event["terminal_id"] == terminal:
                fraud_features.terminal_step(terminal_state, event["transaction_id"], when)
    return customer_state, terminal_state


def late_transaction(
    prefix: list[Message], customer: str, terminal: str, amount: float, model: Any
) -> tuple[float, float]:
    """(timestamp, score) of a transaction a day older than anything its customer's and its
    terminal's windows still keep: the stream scores it from the state it finds and stores it
    nowhere (the feature module's rule for events beyond the allowed lateness)."""
    customer_state, terminal_state = entity_states(prefix, customer, terminal)
    ts = min(customer_state.horizon, terminal_state.horizon) - DAY
    stored = (len(customer_state), len(terminal_state))
    customer_part = fraud_features.customer_step(customer_state, "late-1", ts, amount)
    terminal_part = fraud_features.terminal_step(terminal_state, "late-1", ts)
    assert (len(customer_state), len(terminal_state)) == stored, "beyond the lateness: not stored"
    vector = fraud_features.fraud_vector(ts, amount, customer_part, terminal_part)
    return ts, float(model.score(np.asarray([vector], dtype=np.float32))[0])


def build_plan(models_dir: Path) -> Plan:
    history = transaction_history()
    market = generate_market(start=date(2024, 1, 2), days=160, seed=SEED, instrument="SYN")
    write_market_model(models_dir, market)
    expected_tx = offline_fraud_scores(history, models_dir)
    market_model = load_model(models_dir, "market")
    market_scores = market_model.score(compute_market_features(market))
    expected_market = {
        market_event_id("SYN", datetime.fromtimestamp(ts, UTC)): float(score)
        for ts, score in zip(market.timestamp, market_scores, strict=True)
    }
    rows = np.arange(len(history))
    valid = list(transaction_events(history, rows, "tx", "label", "fraud", 7.0))
    messages = stream_order(valid, list(market_events(market, np.arange(len(market)), "market")))
    rng = np.random.default_rng(SEED)
    plan = Plan(history, market, messages, expected_tx, expected_market, Counter(), [])
    plan.deliveries.update(list(expected_tx))
    plan.deliveries.update(list(expected_market))
    plan.labels = sum(message.role == LABELS for message in messages)
    rewrite_some(plan, rng)
    add_duplicates(plan, load_model(models_dir, "fraud").threshold)
    add_late_transaction(plan, load_model(models_dir, "fraud"))
    add_ghost_labels(plan)
    for bad in catalogue():  # seeded positions, so every bad message has valid neighbours
        at = int(rng.integers(1, len(plan.messages)))
        plan.messages.insert(at, Message(bad.role, bad.key, bad.value, bad))
    return plan


def tx_positions(plan: Plan) -> dict[str, int]:
    return {
        json.loads(m.value)["transaction_id"]: i
        for i, m in enumerate(plan.messages)
        if m.role == TX and m.bad is None
    }


def rewrite_some(plan: Plan, rng: np.random.Generator) -> None:
    positions = list(tx_positions(plan).values())
    for how, at in enumerate(rng.choice(positions, 6, replace=False)):
        message = plan.messages[at]
        message.value = variant(message.value, how)
        plan.variants[json.loads(message.value)["transaction_id"]] = message.value


def add_duplicates(plan: Plan, threshold: float) -> None:
    """A redelivered transaction (same key, same bytes) 50 events (about 7 hours) later: within
    the allowed lateness, so it must get its first features back."""
    positions = tx_positions(plan)
    ids = list(positions)
    middle = ids[len(ids) // 5 : 4 * len(ids) // 5]
    alerting = [tx for tx in middle if plan.expected_tx[tx] >= threshold]
    quiet = [tx for tx in middle if plan.expected_tx[tx] < threshold]
    assert alerting, "the data must hold an alerting transaction to redeliver"
    for tx in sorted({alerting[0], alerting[-1], quiet[0], quiet[len(quiet) // 2]}):
        original = plan.messages[positions[tx]]
        at = positions[tx] + 50
        plan.messages.insert(at, Message(TX, original.key, original.value))
        positions = tx_positions(plan)
        plan.deliveries[tx] += 1
        plan.duplicated.append(tx)


def add_late_transaction(plan: Plan, model: Any) -> None:
    """Near the end, a transaction older than any window keeps, for a busy customer/terminal."""
    positions = tx_positions(plan)
    at = list(positions.values())[int(len(positions) * 0.97)]
    anchor = json.loads(plan.messages[at].value)
    customer, terminal = anchor["customer_id"], anchor["terminal_id"]
    labels = [m for m in plan.messages if m.role == LABELS]  # the stream applies them first
    before = [m for m in plan.messages[: at + 1] if m.role != LABELS]
    ts, score = late_transaction(labels + before, customer, terminal, 42.0, model)
    event = {
        "transaction_id": "late-1",
        "timestamp": timestamp_text(ts),
        "customer_id": customer,
        "terminal_id": terminal,
        "amount": 42.0,
    }
    plan.messages.insert(at + 1, Message(TX, customer.encode(), json_bytes(event)))
    plan.late = ("late-1", score)
    plan.deliveries["late-1"] = 1


def add_ghost_labels(plan: Plan) -> None:
    """Labels of transactions nobody saw, at a terminal no valid transaction uses: accepted."""
    for n in range(3):
        label = {
            **TEMPLATES[LABELS],
            "transaction_id": f"ghost-{n}",
            "customer_id": "C-ghost",
            "terminal_id": "T-ghost",
        }
        at = (n + 1) * len(plan.messages) // 4
        plan.messages.insert(at, Message(LABELS, f"ghost-{n}".encode(), json_bytes(label)))
    plan.ghost_labels = 3


@dataclasses.dataclass
class Run:
    plan: Plan
    env: StreamEnv
    worker_pid: int
    placed: dict[str, tuple[int, int]]  # bad case -> (partition, offset) the broker gave it
    scores: dict[str, list[bytes]]
    alerts: dict[str, list[bytes]]
    dead_letters: dict[str, list[bytes]]
    metrics: str
    log: str
    alive: bool


def topic_names(env: StreamEnv) -> dict[str, str]:
    topics = env.settings().topics
    return {TX: topics.transactions, LABELS: topics.labels, MARKET: topics.market}


async def send_all(env: StreamEnv, messages: list[Message]) -> dict[str, tuple[int, int]]:
    from aiokafka import AIOKafkaProducer

    names = topic_names(env)
    producer = AIOKafkaProducer(
        **env.settings().kafka.aiokafka_kwargs(),
        linger_ms=5,
        acks="all",
        max_request_size=MAX_REQUEST_BYTES,
    )
    await producer.start()
    placed: dict[str, tuple[int, int]] = {}
    try:
        pending: list[tuple[Message, asyncio.Future[Any]]] = []
        for message in messages:
            sent = await producer.send(names[message.role], message.value, key=message.key)
            pending.append((message, sent))
            if len(pending) >= 2000:
                await record_placement(pending, placed)
                pending = []
        await record_placement(pending, placed)
    finally:
        await producer.stop()
    return placed


async def record_placement(
    pending: list[tuple[Message, asyncio.Future[Any]]], placed: dict[str, tuple[int, int]]
) -> None:
    results = await asyncio.gather(*(sent for _, sent in pending))
    for (message, _), metadata in zip(pending, results, strict=True):
        if message.bad is not None:
            placed[message.bad.case] = (metadata.partition, metadata.offset)


def event_id_of(value: bytes, key: bytes | None) -> str:
    return msgspec.json.decode(value)["event_id"]


def dead_letter_case(value: bytes, key: bytes | None) -> str:
    record = contracts.decode_dead_letter(value)
    if record.key is not None and record.key.startswith("case:"):
        return record.key.removeprefix("case:")
    return f"unkeyed:{record.source_topic}:{record.payload[:200]}"


def wait_for_metrics(worker: WorkerProcess, ready: Callable[[str], bool], timeout: float) -> str:
    """Counters move right after the records are out; wait until they caught up."""
    deadline = time.monotonic() + timeout
    text = worker.metrics()
    while not ready(text) and time.monotonic() < deadline:
        time.sleep(0.5)
        text = worker.metrics()
    return text


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("bad-input")
    models_dir = workdir / "models"
    shutil.copytree(BUNDLED_MODELS / "fraud", models_dir / "fraud")
    plan = build_plan(models_dir)
    env = StreamEnv(kafka_bootstrap, models_dir, workdir, models="fraud,market")
    worker = WorkerProcess(env)
    try:
        worker.start()
        worker.wait_assigned()
        assert worker.process is not None
        pid = worker.process.pid
        labels = [m for m in plan.messages if m.role == LABELS]
        placed = asyncio.run(send_all(env, labels))
        wait_until(lambda: labels_done(worker) >= plan.labels + plan.ghost_labels, 300, worker)
        rest = [m for m in plan.messages if m.role != LABELS]
        placed.update(asyncio.run(send_all(env, rest)))
        settings = env.settings()
        wanted = plan.deliveries
        scores = collect(
            settings,
            settings.topics.scores,
            lambda seen: all(len(seen.get(event, ())) >= n for event, n in wanted.items()),
            600,
            event_id_of,
            worker.assert_running,
        )
        bad_cases = len(catalogue())
        dead_letters = collect(
            settings,
            settings.topics.dlq,
            lambda seen: len(seen) >= bad_cases,
            120,
            dead_letter_case,
            worker.assert_running,
        )
        threshold = load_model(models_dir, "fraud").threshold
        alerting = {tx for tx, score in plan.expected_tx.items() if score >= threshold}
        alerts = collect(
            settings,
            settings.topics.alerts,
            lambda seen: (
                alerting <= set(seen)
                and all(len(seen[tx]) >= 2 for tx in set(plan.duplicated) & alerting)
            ),
            120,
            event_id_of,
            worker.assert_running,
        )
        total_scores = sum(wanted.values())
        metrics = wait_for_metrics(
            worker,
            lambda text: (
                metric_value(text, "riskstream_dead_letters_total") >= bad_cases
                and metric_value(text, "riskstream_events_total", outcome="scored") >= total_scores
            ),
            30,
        )
        alive = worker.process.poll() is None
        return Run(
            plan, env, pid, placed, scores, alerts, dead_letters, metrics, worker.log(), alive
        )
    finally:
        worker.stop()


# --- the valid events ---------------------------------------------------------------------------


def _tx_id(message: Message) -> str | None:
    if message.role != TX or message.bad is not None:
        return None
    return json.loads(message.value)["transaction_id"]


def scores_of(run: Run, event_id: str) -> list[float]:
    return [contracts.decode_score(raw).score for raw in run.scores.get(event_id, [])]


def test_every_valid_transaction_is_scored_as_offline(run: Run) -> None:
    worst, worst_tx, missing = 0.0, "", []
    for tx, expected in run.plan.expected_tx.items():
        got = scores_of(run, tx)
        if not got:
            missing.append(tx)
        for score in got:
            if abs(score - expected) > worst:
                worst, worst_tx = abs(score - expected), tx
    assert not missing, f"{len(missing)} valid transactions never scored, e.g. {missing[:5]}"
    assert worst <= TOLERANCE, (
        f"largest difference to offline: {worst:.3g}, transaction {worst_tx} "
        f"(scores {scores_of(run, worst_tx)}, offline {run.plan.expected_tx[worst_tx]}, "
        f"message {next(m.value for m in run.plan.messages if _tx_id(m) == worst_tx)!r})"
    )


def test_each_event_is_scored_once_and_a_redelivery_once_more(run: Run) -> None:
    counts = {event: len(raws) for event, raws in run.scores.items()}
    assert counts == dict(run.plan.deliveries)


def test_zero_amounts_other_zones_and_extra_fields_are_accepted(run: Run) -> None:
    zero = [str(tx) for tx in run.plan.history.transaction_id[run.plan.history.amount == 0.0]]
    assert len(zero) == 6
    for tx in [*zero, *run.plan.variants]:
        assert scores_of(run, tx), f"{tx} was not scored"
    variant_ids = list(run.plan.variants)
    for tx in variant_ids[:3]:  # other zones: the record carries the same instant in UTC
        record = contracts.decode_score(run.scores[tx][0])
        sent = json.loads(run.plan.variants[tx])["timestamp"]
        assert record.event_timestamp == timestamp_text(epoch(sent))


def test_a_redelivered_transaction_gets_the_same_score_and_alert_id(run: Run) -> None:
    threshold = load_model(run.env.models_dir, "fraud").threshold
    redelivered_alerts = 0
    for tx in run.plan.duplicated:
        first, second = scores_of(run, tx)
        assert first == pytest.approx(second, abs=TOLERANCE)
        if run.plan.expected_tx[tx] >= threshold:
            ids = {contracts.decode_alert(raw).alert_id for raw in run.alerts[tx]}
            assert len(run.alerts[tx]) == 2 and len(ids) == 1
            redelivered_alerts += 1
    assert redelivered_alerts >= 1


def test_alerts_are_the_scores_over_the_threshold(run: Run) -> None:
    model = load_model(run.env.models_dir, "fraud")
    alerting = {tx for tx, score in run.plan.expected_tx.items() if score >= model.threshold}
    alerted = {event for event in run.alerts if not event.startswith("SYN:")}
    assert alerted == alerting
    for tx in alerted:
        for raw in run.alerts[tx]:
            assert contracts.decode_alert(raw).alert_id == contracts.make_alert_id(
                "fraud", model.version, tx
            )


def test_every_market_bar_is_scored_as_offline(run: Run) -> None:
    for event, expected in run.plan.expected_market.items():
        got = scores_of(run, event)
        assert len(got) == 1, event
        assert got[0] == pytest.approx(expected, abs=TOLERANCE), event


def test_a_transaction_beyond_the_lateness_is_scored_but_changes_nothing(run: Run) -> None:
    """Scored from the state at its arrival; the parity of every later transaction above shows
    that it was not added to any window."""
    tx, expected = run.plan.late
    assert scores_of(run, tx) == [pytest.approx(expected, abs=TOLERANCE)]


def test_labels_of_unknown_transactions_are_accepted(run: Run) -> None:
    labels = run.env.settings().topics.labels
    counted = metric_value(run.metrics, "riskstream_events_total", topic=labels, outcome="label")
    assert counted == run.plan.labels + run.plan.ghost_labels


# --- the bad ones -------------------------------------------------------------------------------


def original_payload(record: contracts.DeadLetterRecord) -> bytes:
    if record.payload_encoding == "base64":
        return base64.b64decode(record.payload)
    return record.payload.encode()


def test_every_bad_message_is_a_dead_letter_with_its_code_and_bytes(run: Run) -> None:
    names = topic_names(run.env)
    bads = catalogue()
    assert len(run.dead_letters) == len(bads), sorted(run.dead_letters)[:10]
    for bad in bads:
        found = run.dead_letters.get(bad.case)
        if found is None:  # the unkeyed one is found by its payload
            found = run.dead_letters[f"unkeyed:{names[bad.role]}:{bad.value.decode()[:200]}"]
        assert len(found) == 1, bad.case
        record = contracts.decode_dead_letter(found[0])
        assert (record.error, record.source_topic) == (bad.code, names[bad.role]), bad.case
        assert (record.partition, record.offset) == run.placed[bad.case], bad.case
        assert record.key == (None if bad.key is None else bad.key.decode())
        original = bad.value or b""
        assert record.payload_size == len(original)
        if record.payload_truncated:
            assert len(original) > contracts.MAX_DEAD_LETTER_PAYLOAD_BYTES
            assert original.startswith(original_payload(record))
        else:
            assert original_payload(record) == original, bad.case
        assert 0 < len(record.detail) <= 500, "one short sentence"


def test_dead_letter_metrics_count_each_reason(run: Run) -> None:
    names = topic_names(run.env)
    expected = Counter((names[bad.role], bad.code) for bad in catalogue())
    for (topic, reason), count in expected.items():
        got = metric_value(run.metrics, "riskstream_dead_letters_total", topic=topic, reason=reason)
        assert got == count, (topic, reason)
    assert metric_value(run.metrics, "riskstream_dead_letters_total") == sum(expected.values())
    for role, topic in names.items():
        n = sum(bad.role == role for bad in catalogue())
        assert (
            metric_value(run.metrics, "riskstream_events_total", topic=topic, outcome="dead_letter")
            == n
        )


def test_the_worker_never_restarted(run: Run) -> None:
    assert run.alive
    assert run.log.count("topics ready") == 1
    assert f'-{run.worker_pid}"' in run.metrics.split("riskstream_worker_info{")[1].split("}")[0]
    assert "internal_error" not in run.log and "Traceback" not in run.log
