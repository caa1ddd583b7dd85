"""The stream's per-event work, without Kafka: same features as offline, bad input rejected,
outputs acknowledged before inputs."""

from __future__ import annotations

import asyncio
from datetime import date

import msgspec
import numpy as np
import pytest

from riskstream import contracts, pipeline
from riskstream.batch_hook import ack_when_delivered
from riskstream.batching import BatchScorer
from riskstream.features import fraud, market
from riskstream.replay import market_events, transaction_events
from riskstream.simulate import generate_market, generate_transactions
from riskstream.terminal_replica import TerminalReplica


@pytest.fixture(scope="module")
def history():
    return generate_transactions(
        n_customers=150, n_terminals=300, start=date(2025, 1, 1), days=80, seed=3
    )


def _replica() -> TerminalReplica:
    """A terminal replica with no source to wait for: what it read is all there is."""
    return TerminalReplica(1, [])


def _stream_vectors(history, partitions: int) -> dict[str, list[float]]:
    """Drive stage 1 and the terminal replica as the worker does, customer partitions as
    separate tables, in the order `riskstream replay` publishes (labels interleaved by event
    time)."""
    customers = [dict() for _ in range(partitions)]
    replica = _replica()
    vectors: dict[str, list[float]] = {}
    events = transaction_events(
        history, np.arange(len(history)), "transactions", "risk.labels", "fraud", 7.0
    )
    for outgoing in events:
        part = hash(outgoing.key) % partitions
        if outgoing.topic == "transactions":
            forwarded = pipeline.ingest_transaction(
                outgoing.value, outgoing.key, 0, customers[part]
            )
        else:
            forwarded = pipeline.ingest_label(outgoing.value, outgoing.key)
        replica.apply(0, pipeline.encode_forwarded(forwarded))
        if isinstance(forwarded, pipeline.ForwardedTransaction):
            vectors[forwarded.transaction_id] = replica.score(forwarded).vector
    return vectors


@pytest.mark.parametrize("partitions", [1, 4])
def test_stream_path_reproduces_offline_features(history, partitions: int) -> None:
    offline = fraud.compute_fraud_features(history)
    streamed = _stream_vectors(history, partitions)
    assert len(streamed) == len(history)
    ids = [str(i) for i in history.transaction_id]
    online = np.asarray([streamed[i] for i in ids], dtype=np.float32)
    assert history.fraud is not None and history.fraud.sum() > 20
    assert np.array_equal(online, offline)


def test_market_stage_reproduces_offline_features() -> None:
    bars = generate_market(date(2015, 1, 5), 300, seed=2)
    offline = market.compute_market_features(bars)
    table: dict[bytes, bytes] = {}
    online = [
        pipeline.market_stage(out.value, out.key, 0, table).vector
        for out in market_events(bars, np.arange(len(bars)), "market.indicators")
    ]
    assert np.array_equal(np.asarray(online, dtype=np.float32), offline)


def _tx(**fields) -> bytes:
    event = {
        "transaction_id": "t1",
        "timestamp": "2025-01-01T10:00:00Z",
        "customer_id": "c1",
        "terminal_id": "k1",
        "amount": 12.5,
    }
    return msgspec.json.encode({**event, **fields})


@pytest.mark.parametrize(("key", "detail"), [(None, "no key"), (b"c2", "does not match")])
def test_a_transaction_keyed_by_another_customer_is_rejected(key, detail) -> None:
    with pytest.raises(contracts.ContractError, match=detail) as caught:
        pipeline.ingest_transaction(_tx(), key, 0, {})
    assert caught.value.code == "key_mismatch"


def test_a_redelivered_transaction_gets_its_first_features_again() -> None:
    customers: dict[bytes, bytes] = {}
    first = pipeline.ingest_transaction(_tx(), b"c1", 0, customers)
    pipeline.ingest_transaction(_tx(transaction_id="t2", amount=99.0), b"c1", 0, customers)
    again = pipeline.ingest_transaction(_tx(), b"c1", 0, customers)
    assert again.customer_features == first.customer_features


class _Scorer:
    name, version, threshold = "fraud", "20250101T000000Z", 0.5

    def score(self, matrix: np.ndarray) -> np.ndarray:
        return matrix[:, 0].astype(np.float32)

    def explain(self, matrix: np.ndarray) -> list[list]:
        return [[fraud_reason(row)] for row in matrix]

    def severity(self, score: float) -> str:
        return "high"


def fraud_reason(row: np.ndarray) -> contracts.Reason:
    return contracts.Reason(feature="tx_amount", value=float(row[0]), contribution=0.1)


class _Observer:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def observe_batch(self, model, size, inference_seconds, scores, latencies) -> None:
        self.batches.append(size)

    def alert(self, model, severity) -> None: ...

    def count_events(self, topic, outcome, n=1) -> None: ...


class _Outbox:
    """The outbox as the scorer uses it: records queued per topic, one delivery future."""

    def __init__(self, delivery: asyncio.Future) -> None:
        self.records: dict[str, list[bytes]] = {"risk.scores": [], "risk.alerts": []}
        self.delivery = delivery

    def add(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.records[topic].append(value)

    async def send(self) -> list[asyncio.Future]:
        return [self.delivery]


class _Consumer:
    def __init__(self, order: list[str]) -> None:
        self.order = order

    def ack_offsets(self, tp, offsets) -> int:
        self.order.append(f"ack {list(offsets)}")
        return len(offsets)


def test_inputs_are_acknowledged_only_after_their_outputs_are_delivered() -> None:
    async def scenario() -> tuple[list[str], _Outbox, _Observer]:
        order: list[str] = []
        outbox = _Outbox(asyncio.get_running_loop().create_future())
        observer = _Observer()
        scorer = BatchScorer(
            _Scorer(), observer, "transactions", "risk.scores", "risk.alerts", max_rows=2
        )

        def item(event_id: str, value: float) -> pipeline.PendingScore:
            return pipeline.PendingScore(
                "fraud", event_id, "transaction", "c", "2025-01-01T00:00:00Z", [value], 0
            )

        observe = scorer.score_into([item("a", 0.2), item("b", 0.9), item("c", 0.1)], outbox)
        deliveries = await outbox.send()
        ack_when_delivered(_Consumer(order), "tp", [7, 8, 9], deliveries, observe)
        await asyncio.sleep(0.05)
        order.append("delivered")
        outbox.delivery.set_result(None)
        await asyncio.sleep(0)
        return order, outbox, observer

    order, outbox, observer = asyncio.run(scenario())
    assert order == ["delivered", "ack [7, 8, 9]"]
    assert observer.batches == [2, 1]  # split at max_rows, observed once delivered
    scores = [contracts.decode_score(s).event_id for s in outbox.records["risk.scores"]]
    assert scores == ["a", "b", "c"]
    (alert,) = [contracts.decode_alert(a) for a in outbox.records["risk.alerts"]]
    assert alert.event_id == "b" and alert.severity == "high" and alert.reasons


def test_a_failed_delivery_acknowledges_nothing() -> None:
    async def scenario() -> list[str]:
        order: list[str] = []
        loop = asyncio.get_running_loop()
        delivered, failed = loop.create_future(), loop.create_future()
        ack_when_delivered(_Consumer(order), "tp", [1], [delivered, failed])
        delivered.set_result(None)
        failed.set_exception(RuntimeError("broker said no"))
        await asyncio.sleep(0)
        failed.exception()  # retrieved: the worker's own check exits on it
        return order

    assert asyncio.run(scenario()) == []


@pytest.mark.parametrize("labels_first", [False, True])
def test_terminal_features_survive_stage_one_partitions_drifting_apart(
    history, labels_first: bool
) -> None:
    """While a worker catches up, stage-1 partitions reach the terminal replica days apart in
    event time, and the few labels race weeks ahead of the many transactions (a backlog of
    labels is read in seconds); neither may change any feature."""
    partitions, drift = 4, 1.5 * 86_400.0
    customers = [dict() for _ in range(partitions)]
    replica = _replica()
    held: list[list[pipeline.ForwardedTransaction]] = [[] for _ in range(partitions)]
    vectors: dict[str, list[float]] = {}

    def to_replica(message: pipeline.Forwarded) -> None:
        replica.apply(0, pipeline.encode_forwarded(message))
        if isinstance(message, pipeline.ForwardedTransaction):
            vectors[message.transaction_id] = replica.score(message).vector

    def release(clock: float) -> None:
        for part, queue in enumerate(held):
            while queue and queue[0].timestamp + part * drift <= clock:
                to_replica(queue.pop(0))

    events = transaction_events(
        history, np.arange(len(history)), "transactions", "risk.labels", "fraud", 7.0
    )
    events = list(events)
    if labels_first:
        for outgoing in events:
            if outgoing.topic == "risk.labels":
                to_replica(pipeline.ingest_label(outgoing.value, outgoing.key))
    for outgoing in events:
        release(outgoing.event_time)
        if outgoing.topic == "risk.labels":
            if not labels_first:
                to_replica(pipeline.ingest_label(outgoing.value, outgoing.key))
            continue
        part = hash(outgoing.key) % partitions
        held[part].append(
            pipeline.ingest_transaction(outgoing.value, outgoing.key, 0, customers[part])
        )
    release(float("inf"))
    offline = fraud.compute_fraud_features(history)
    online = np.asarray([vectors[str(i)] for i in history.transaction_id], dtype=np.float32)
    assert np.array_equal(online, offline)


def test_an_event_more_than_a_day_ahead_of_the_clock_is_rejected_not_held() -> None:
    """A wrong far-future time would hold every transaction behind it (watermarks)."""
    now = 1_735_725_600.0  # 2025-01-01T10:00:00Z, the time of _tx()
    pipeline.ingest_transaction(_tx(), b"c1", 0, {}, now=now - 86_000)  # within a day: skew
    with pytest.raises(contracts.ContractError, match="ahead of the worker's clock") as caught:
        pipeline.ingest_transaction(_tx(), b"c1", 0, {}, now=now - 86_401)
    assert caught.value.code == "out_of_range"
    label = msgspec.json.encode(
        {
            "transaction_id": "t1",
            "timestamp": "2025-01-08T10:00:00Z",
            "transaction_timestamp": "2025-01-01T10:00:00Z",
            "customer_id": "c1",
            "terminal_id": "k1",
            "fraud": True,
        }
    )
    assert pipeline.ingest_label(label, b"t1", now=now + 7 * 86_400).label_timestamp > now
    with pytest.raises(contracts.ContractError, match="'timestamp'"):
        pipeline.ingest_label(label, b"t1", now=now)


def test_a_transaction_too_late_for_its_customer_is_stored_nowhere() -> None:
    """Stage 1 decides lateness in arrival order and the terminal replica obeys: it reads a
    terminal's transactions out of order, so its own horizon cannot tell what arrived late."""
    customers: dict[bytes, bytes] = {}
    replica = _replica()
    now = pipeline.ingest_transaction(_tx(timestamp="2025-03-01T10:00:00Z"), b"c1", 0, customers)
    late = pipeline.ingest_transaction(
        _tx(transaction_id="old", timestamp="2025-01-01T10:00:00Z"), b"c1", 0, customers
    )
    assert not now.too_late and late.too_late
    wire = pipeline.decode_forwarded(pipeline.encode_forwarded(late))
    assert wire.too_late, "the flag crosses the internal topic"
    replica.apply(0, pipeline.encode_forwarded(wire))
    assert replica.score(wire).event_id == "old", "it is still scored"
    assert replica.terminals == {}, "and not stored at its terminal"
    replica.apply(0, pipeline.encode_forwarded(now))
    assert len(replica.terminals["k1"]) == 1
