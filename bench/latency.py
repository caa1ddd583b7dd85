"""Event-to-score latency at a fixed offered rate, well below the worker's saturation.

One worker joins first (on a fresh input topic); then this process produces the same
synthetic transactions at the given rate, in 5 ms ticks, and reads the scores as they come.
Two clocks, both ending at the score:
  - arrival: from the moment this process handed the event to its producer (`send`, which
    stamps the Kafka message timestamp) to the score record's arrival in this process's
    consumer (fetch wait 5 ms): what a downstream consumer sees, producer linger included;
  - stamped: from the event's Kafka timestamp to the score record's Kafka timestamp, which the
    worker's producer stamps when it sends the score (both in milliseconds): the worker's part,
    without the score's own way to a consumer.
The first second of every rate is warm-up and left out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from common import PARTITIONS, BenchTopics, WorkerProcess, short_id
from dataset import Dataset

from riskstream.config import KafkaSettings
from riskstream.fetch_wait import AdaptiveFetchWait
from riskstream.kafka import ensure_topics

TICK_SECONDS = 0.005
WARM_UP_SECONDS = 1.0
DRAIN_TIMEOUT_SECONDS = 60.0
READER_WAIT_MS = 5  # the scores reader's fetch wait (adaptive, see _measure)


class _Score(msgspec.Struct):
    event_id: str


_decode_score = msgspec.json.Decoder(_Score).decode


@dataclasses.dataclass(frozen=True)
class LatencyResult:
    rate: float  # offered, events per second
    achieved_rate: float  # what the producer actually managed
    events: int  # measured (after warm-up)
    missing: int  # sent but never scored within the drain timeout
    arrival_ms: tuple[float, float, float]  # p50, p99, max
    stamped_ms: tuple[float, float, float]


def _quantiles(values: np.ndarray) -> tuple[float, float, float]:
    if not len(values):
        return (float("nan"),) * 3
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99), float(values.max())


@dataclasses.dataclass(frozen=True)
class _Outgoing:
    topic: str
    key: bytes
    value: bytes
    key_id: str  # the transaction id, which the score record carries as event_id


@dataclasses.dataclass
class _Run:
    sent_at: dict[str, float] = dataclasses.field(default_factory=dict)
    sent_ms: dict[str, int] = dataclasses.field(default_factory=dict)
    arrived_at: dict[str, float] = dataclasses.field(default_factory=dict)
    scored_ms: dict[str, int] = dataclasses.field(default_factory=dict)


async def _consume_scores(consumer: AIOKafkaConsumer, run: _Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=50)
        now = time.time()
        for messages in batches.values():
            for message in messages:
                event_id = _decode_score(message.value).event_id
                # Only this run's events: the scores of earlier events (a backlog's tail, the
                # end of the last batch that seek_to_end lands in on the embedded broker) must
                # not count towards "every event scored", or the wait ends with some missing.
                if event_id in run.sent_at and event_id not in run.arrived_at:
                    run.arrived_at[event_id] = now
                    run.scored_ms[event_id] = message.timestamp


async def _produce_at_rate(
    producer: AIOKafkaProducer, outgoing: list[_Outgoing], rate: float, run: _Run
) -> float:
    """Sends in ticks: each tick sends what the rate says is due, stamped with its send time."""
    started = time.time()
    sent = 0
    deliveries = []
    while sent < len(outgoing):
        due = min(len(outgoing), int((time.time() - started) * rate) + 1)
        while sent < due:
            message = outgoing[sent]
            event_id = message.key_id
            now = time.time()
            stamp = int(now * 1000)
            run.sent_at[event_id], run.sent_ms[event_id] = now, stamp
            deliveries.append(
                await producer.send(
                    message.topic, message.value, key=message.key, timestamp_ms=stamp
                )
            )
            sent += 1
        await asyncio.sleep(TICK_SECONDS)
    elapsed = time.time() - started
    await asyncio.gather(*deliveries)
    return sent / elapsed


def _outgoing(dataset: Dataset, topic: str, first: int, count: int) -> list[_Outgoing]:
    decode = msgspec.json.Decoder(dict).decode
    chosen = dataset.outgoing(topic, f"{topic}-labels")[first : first + count]
    return [_Outgoing(o.topic, o.key, o.value, decode(o.value)["transaction_id"]) for o in chosen]


async def _measure(
    bootstrap: str, topics: BenchTopics, batches: list[tuple[float, list[_Outgoing]]]
) -> list[tuple[float, float, _Run]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        fetch_max_wait_ms=READER_WAIT_MS,
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await consumer.start()
    # The embedded broker gives up looking for a fetch's records once the fetch's wait has
    # passed, so a fixed short wait can starve on a long scores topic: the reader adapts its
    # wait as the worker does (riskstream.fetch_wait).
    AdaptiveFetchWait(READER_WAIT_MS).install(consumer)
    await producer.start()
    partitions = [TopicPartition(topics.scores, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    runs = []
    try:
        for rate, outgoing in batches:
            run = _Run()
            stop = asyncio.Event()
            reader = asyncio.create_task(_consume_scores(consumer, run, stop))
            achieved = await _produce_at_rate(producer, outgoing, rate, run)
            deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
            while len(run.arrived_at) < len(outgoing) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            await reader
            runs.append((rate, achieved, run))
            await asyncio.sleep(1.0)
    finally:
        await producer.stop()
        await consumer.stop()
    return runs


def _result(rate: float, achieved: float, run: _Run) -> LatencyResult:
    first = min(run.sent_at.values())
    measured = [e for e, at in run.sent_at.items() if at - first >= WARM_UP_SECONDS]
    scored = [e for e in measured if e in run.arrived_at]
    arrival = np.array([(run.arrived_at[e] - run.sent_at[e]) * 1000.0 for e in scored])
    stamped = np.array([float(run.scored_ms[e] - run.sent_ms[e]) for e in scored])
    return LatencyResult(
        rate=rate,
        achieved_rate=achieved,
        events=len(scored),
        missing=len(measured) - len(scored),
        arrival_ms=_quantiles(arrival),
        stamped_ms=_quantiles(stamped),
    )


def run_latency(
    *,
    bootstrap: str,
    dataset: Dataset,
    rates: list[float],
    seconds: float,
    workdir: Path,
) -> list[LatencyResult]:
    """One worker, assigned before the first event is sent; one measurement per rate."""
    topic = f"bench-latency-{short_id()}"
    asyncio.run(ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), {topic: PARTITIONS}))
    batches = []
    first = 0
    for rate in rates:
        count = min(int(rate * seconds), dataset.events - first)
        if count < rate * (WARM_UP_SECONDS + 1):
            raise ValueError(f"the dataset has too few events left for {rate:.0f} events/s")
        batches.append((rate, _outgoing(dataset, topic, first, count)))
        first += count
    topics = BenchTopics(bootstrap, topic, f"{topic}-labels")
    worker = WorkerProcess(topics, workdir, "latency").start()
    try:
        _wait_ready(worker)
        runs = asyncio.run(_measure(bootstrap, topics, batches))
    finally:
        worker.stop()
    return [_result(rate, achieved, run) for rate, achieved, run in runs]


def _wait_ready(worker: WorkerProcess, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.check_running()
        health = worker.health() or {}
        if health.get("assigned_partitions", 0) > 0 and not health.get("rebalancing", True):
            time.sleep(1.0)  # let the first fetches settle before the clock starts
            return
        time.sleep(0.2)
    raise RuntimeError(f"the latency worker got no partitions in {timeout:.0f} s")
