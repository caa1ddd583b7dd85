"""Every record one input batch produces, sent as one Kafka batch per partition.

aiokafka's `send()` costs about 16 µs of client CPU per record (a future, a lookup of the
partition's open batch, a wake-up of the sender); `create_batch()` + `send_batch()` cost about
2 µs per record. A partition with only a few records in an outbox still goes through `send()`
(see SMALL), so that live traffic shares Kafka batches across fetches. A batch handler
(riskstream.batch_hook) collects its forwards, scores, alerts, dead letters and changelog
records here and sends them together; `send()` returns the delivery futures, and the handler
acknowledges its input offsets only once all of them are done.

Order: records of one partition leave in the order they were added, behind whatever the same
producer queued for that partition before (aiokafka keeps one ordered queue of batches per
partition and one request in flight per broker), so a watermark report sent after a batch of
forwards still follows them (riskstream.watermarks).

Keyed records without an explicit partition go where the producer's partitioner puts them
(murmur2 of the key, as Kafka's Java client and Faust do), so producers in any language agree.
Tested by tests/test_outbox.py against the embedded broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

PARTITION_CACHE_LIMIT = 100_000  # keys whose partition is remembered, per topic
# Fewer records than this for one partition go through `send()`: they join the producer's open
# batch for the partition (linger), so live traffic (a few records per fetch) does not become
# one Kafka batch per record; the embedded broker reads every batch of a partition on each
# fetch, and a fetch's cost grew with the batch count (p99 at 500 events/s 81 → 208 ms).
SMALL = 16

Record = tuple[bytes | None, bytes | None]


DeliveryCheck = Callable[[str, "asyncio.Future[Any]"], None]


class Publisher:
    """What outboxes share for the worker's life: the producer, its partitioner per topic (see
    _KeyPartitions) and the check every delivery gets (the worker exits on a failed one)."""

    def __init__(self, producer: Any, check_delivery: DeliveryCheck | None = None) -> None:
        self.producer = producer  # an aiokafka.AIOKafkaProducer, started
        self.check_delivery = check_delivery
        self._by_topic: dict[str, _KeyPartitions] = {}

    def ready(self, topic: str) -> _KeyPartitions | None:
        """The topic's partitioner, or None while the producer has no metadata for it."""
        choose = self._by_topic.get(topic)
        if choose is None and self.producer._metadata.partitions_for_topic(topic):
            choose = self._by_topic[topic] = _KeyPartitions(self.producer, topic)
        return choose

    async def wait(self, topic: str) -> _KeyPartitions:
        await self.producer.client._wait_on_metadata(topic)
        choose = self.ready(topic)
        assert choose is not None, f"no partitions known for {topic}"
        return choose


class Outbox:
    """Records collected per (topic, partition) for one input batch, sent by `send()`."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._records: dict[tuple[str, int], list[Record]] = {}
        self._unplaced: dict[str, list[Record]] = {}  # topics without metadata yet
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        """Queue a record; `partition` None: the partitioner chooses from the key."""
        self.count += 1
        if partition is None:
            choose = self._publisher.ready(topic)
            if choose is None:
                self._unplaced.setdefault(topic, []).append((key, value))
                return
            partition = choose(key)
        records = self._records.get((topic, partition))
        if records is None:
            records = self._records[(topic, partition)] = []
        records.append((key, value))

    async def send(self) -> list[asyncio.Future[Any]]:
        """Hand every queued record to the producer; one delivery future per Kafka batch."""
        await self._place_unplaced()
        pending, self._records, self.count = self._records, {}, 0
        deliveries: list[asyncio.Future[Any]] = []
        for (topic, partition), records in pending.items():
            deliveries.extend(await self._send_partition(topic, partition, records))
        return deliveries

    async def _place_unplaced(self) -> None:
        unplaced, self._unplaced = self._unplaced, {}
        for topic, records in unplaced.items():
            choose = await self._publisher.wait(topic)
            for key, value in records:
                self._records.setdefault((topic, choose(key)), []).append((key, value))

    async def _send_partition(
        self, topic: str, partition: int, records: list[Record]
    ) -> list[asyncio.Future[Any]]:
        producer = self._publisher.producer
        if len(records) < SMALL:
            deliveries = [
                await producer.send(topic, value, key=key, partition=partition)
                for key, value in records
            ]
        else:
            deliveries = await self._send_batches(producer, topic, partition, records)
        check = self._publisher.check_delivery
        if check is not None:
            for delivery in deliveries:
                delivery.add_done_callback(lambda future: check(topic, future))
        return deliveries

    @staticmethod
    async def _send_batches(
        producer: Any, topic: str, partition: int, records: list[Record]
    ) -> list[asyncio.Future[Any]]:
        deliveries = []
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # the first always fits
        deliveries.append(await producer.send_batch(batch, topic, partition=partition))
        return deliveries


class _KeyPartitions:
    """The producer's partitioner for one topic, remembering the partition of recent keys
    (terminal ids repeat; transaction ids do not, and are only hashed)."""

    def __init__(self, producer: Any, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._known: dict[bytes | None, int] = {}

    def __call__(self, key: bytes | None) -> int:
        partition = self._known.get(key)
        if partition is None:
            partition = self._producer._partition(self._topic, None, None, None, key, None)
            if len(self._known) >= PARTITION_CACHE_LIMIT:
                self._known.clear()
            self._known[key] = partition
        return partition
