"""The outbox against the embedded broker: per-partition order, the producer's partitioner,
Kafka batches split when full, a failed delivery reported."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from riskstream.outbox import SMALL, Outbox, Publisher


async def _create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        for _ in range(40):
            for batch in (await consumer.getmany(timeout_ms=250)).values():
                records.extend(batch)
            if len(records) >= expected:
                break
    finally:
        await consumer.stop()
    return records


async def _publish_and_read(bootstrap: str) -> tuple[list[Any], dict[bytes, int], int]:
    topic = f"outbox-{uuid.uuid4().hex[:8]}"
    await _create(bootstrap, topic, 3)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        outbox = Outbox(Publisher(producer))
        for i in range(3000):  # ~60 KB per partition: several Kafka batches of 16 KB
            outbox.add(topic, f"key-{i % 7}".encode(), f"{i:05d}".encode() + b"x" * 50)
        outbox.add(topic, None, b"pinned", partition=2)
        deliveries = await outbox.send()
        await asyncio.gather(*deliveries)
        expected = {
            f"key-{k}".encode(): producer._partition(
                topic, None, None, None, f"key-{k}".encode(), None
            )
            for k in range(7)
        }
    finally:
        await producer.stop()
    return await _read_all(bootstrap, topic, 3001), expected, len(deliveries)


def test_records_keep_their_order_and_go_where_the_partitioner_puts_them(
    kafka_bootstrap: str,
) -> None:
    records, expected, deliveries = asyncio.run(_publish_and_read(kafka_bootstrap))
    assert len(records) == 3001
    assert deliveries > 3, "full Kafka batches are sent and a new one started"
    for record in records:
        if record.key is None:
            assert (record.partition, record.value) == (2, b"pinned")
        else:
            assert record.partition == expected[record.key]
    by_key: dict[bytes, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.key is not None:
            by_key.setdefault(record.key, []).append(int(record.value[:5]))
    assert all(values == sorted(values) for values in by_key.values())


def test_every_delivery_is_checked() -> None:
    class Batch:
        def append(self, **kwargs: Any) -> object:
            return object()

    class Producer:
        _metadata = type("Metadata", (), {"partitions_for_topic": lambda self, t: {0}})()

        def create_batch(self) -> Batch:
            return Batch()

        async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> Any:
            return self._failed()

        async def send(self, topic: str, value: bytes, *, key: bytes, partition: int) -> Any:
            return self._failed()

        def _failed(self) -> asyncio.Future:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(RuntimeError("broker said no"))
            return future

    checked: list[tuple[str, str]] = []

    async def scenario() -> None:
        outbox = Outbox(
            Publisher(Producer(), lambda topic, f: checked.append((topic, str(f.exception()))))
        )
        outbox.add("scores", b"k", b"v", partition=0)  # a few records: send()
        for _ in range(SMALL):  # many: one Kafka batch
            outbox.add("alerts", b"k", b"v", partition=0)
        await outbox.send()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert checked == [("scores", "broker said no"), ("alerts", "broker said no")]
