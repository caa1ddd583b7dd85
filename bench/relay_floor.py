"""The broker's own latency floor: a relay that does no work, measured like the worker.

The latency targets are met or missed against a broker, and the embedded one (Tansu) spends
milliseconds per hop on its own (a producer linger, then a fetch it looks at again only after
half its remaining wait). This relay consumes the input topic and produces every record
unchanged to an output topic, with the worker's client settings (fetch wait
`RISKSTREAM_FETCH_MAX_WAIT_MS` adapted as the worker adapts it, producer linger
`RISKSTREAM_LINGER_MS`, acks=all); the bench sends at the same rates and reads the output as
`bench/latency.py` reads scores. Its p99 is what no worker on this broker can beat with one hop
between an event and its score.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from common import PARTITIONS, short_id

from riskstream.config import KafkaSettings, WorkerSettings
from riskstream.fetch_wait import AdaptiveFetchWait
from riskstream.kafka import ensure_topics

TICK_SECONDS = 0.005
WARM_UP_SECONDS = 1.0
READER_WAIT_MS = 5  # as bench/latency.py's scores reader


@dataclasses.dataclass(frozen=True)
class RelayResult:
    rate: float
    events: int
    missing: int
    arrival_ms: tuple[float, float, float]  # p50, p99, max: send -> arrival at the reader


async def _consumer(bootstrap: str, topic: str, wait_ms: int) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=wait_ms,
    )
    await consumer.start()
    AdaptiveFetchWait(wait_ms).install(consumer)
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    return consumer


async def _relay(bootstrap: str, source: str, target: str, stop: asyncio.Event) -> None:
    worker = WorkerSettings()
    consumer = await _consumer(bootstrap, source, worker.fetch_max_wait_ms)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=worker.linger_ms, acks="all")
    await producer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=50)
            for records in batches.values():
                for record in records:
                    await producer.send(target, record.value, key=record.key)
    finally:
        await producer.stop()
        await consumer.stop()


async def _read(
    consumer: AIOKafkaConsumer, arrived: dict[bytes, float], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=50)
        now = time.time()
        for records in batches.values():
            for record in records:
                arrived.setdefault(record.value, now)


async def _measure(bootstrap: str, rate: float, seconds: float) -> RelayResult:
    source, target = f"relay-in-{short_id()}", f"relay-out-{short_id()}"
    await ensure_topics(
        KafkaSettings(bootstrap_servers=bootstrap), {source: PARTITIONS, target: PARTITIONS}
    )
    stop = asyncio.Event()
    relay = asyncio.create_task(_relay(bootstrap, source, target, stop))
    reader = await _consumer(bootstrap, target, READER_WAIT_MS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    await asyncio.sleep(1.0)  # the relay is assigned and fetching
    sent: dict[bytes, float] = {}
    arrived: dict[bytes, float] = {}
    reading = asyncio.create_task(_read(reader, arrived, stop))
    count, started, done = int(rate * seconds), time.time(), 0
    while done < count:
        due = min(count, int((time.time() - started) * rate) + 1)
        while done < due:
            value = b"event-%d" % done
            sent[value] = time.time()
            await producer.send(source, value, key=b"%d" % done)
            done += 1
        await asyncio.sleep(TICK_SECONDS)
    deadline = time.monotonic() + 10.0
    while len(arrived) < len(sent) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(reading, relay)
    await producer.stop()
    await reader.stop()
    measured = [v for v, at in sent.items() if at - started >= WARM_UP_SECONDS]
    latency = np.array([(arrived[v] - sent[v]) * 1000.0 for v in measured if v in arrived])
    p50, p99 = np.percentile(latency, [50, 99]) if len(latency) else (float("nan"),) * 2
    return RelayResult(
        rate=rate,
        events=len(latency),
        missing=len(measured) - len(latency),
        arrival_ms=(float(p50), float(p99), float(latency.max()) if len(latency) else float("nan")),
    )


def run_relay_floor(bootstrap: str, rates: list[float], seconds: float) -> list[RelayResult]:
    """One relay per rate, on topics of its own."""
    return [asyncio.run(_measure(bootstrap, rate, seconds)) for rate in rates]
