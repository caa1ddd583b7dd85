"""Topic set-up against the real broker: partition counts as asked, leftovers of a lost topic.

The embedded broker (Tansu, memory only) restarted empty still takes writes to the topics it
lost from a producer that knew them, and keeps those records unlisted; a topic created again
then starts at offset 0 on top of them (writes refused with UnknownError or hidden inside the
old batches). `ensure_topics` recreates such topics when this app alone writes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from riskstream.broker import EmbeddedBroker, free_port
from riskstream.config import KafkaSettings
from riskstream.kafka import ensure_topics, partition_counts

pytestmark = pytest.mark.broker


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker("127.0.0.1", free_port()).start()
    try:
        yield broker
    finally:
        broker.stop()


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> list[int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return [(await producer.send_and_wait(topic, v, partition=0)).offset for v in values]
    finally:
        await producer.stop()


async def _read_partition_0(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        fetched = await consumer.getmany(timeout_ms=1500)
        return [record.value for records in fetched.values() for record in records]
    finally:
        await consumer.stop()


async def _late_writes_after_a_restart(broker: EmbeddedBroker, topic: str) -> list[str]:
    """A producer that knew `topic` keeps writing across a restart of the broker."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    outcomes = []
    try:
        await producer.send_and_wait(topic, b"before", partition=0)
        broker.kill()
        broker.start()
        for i in range(3):
            try:
                await producer.send_and_wait(topic, b"late-%d" % i, partition=0)
                outcomes.append("accepted")
            except Exception as error:  # which error it is, is the broker's business
                outcomes.append(type(error).__name__)
    finally:
        await producer.stop()
    return outcomes


def test_topics_are_created_with_the_partition_count_asked_for(
    own_broker: EmbeddedBroker,
) -> None:
    kafka = KafkaSettings(bootstrap_servers=own_broker.bootstrap_servers)
    assert asyncio.run(ensure_topics(kafka, {"two": 2, "seven": 7})) == {"two": 2, "seven": 7}
    assert asyncio.run(partition_counts(kafka, ["two", "seven", "absent"])) == {
        "two": 2,
        "seven": 7,
    }
    assert asyncio.run(partition_counts(kafka, ["absent"])) == {}, "describing must not create"


def test_a_topic_holding_a_lost_topics_late_writes_is_created_again(
    own_broker: EmbeddedBroker,
) -> None:
    kafka = KafkaSettings(bootstrap_servers=own_broker.bootstrap_servers)
    bootstrap = own_broker.bootstrap_servers
    asyncio.run(ensure_topics(kafka, {"scores": 2}))
    outcomes = asyncio.run(_late_writes_after_a_restart(own_broker, "scores"))
    assert "accepted" in outcomes, f"the broker took no late write: {outcomes}"

    assert asyncio.run(ensure_topics(kafka, {"scores": 2}, written_only_by_us={"scores"})) == {
        "scores": 2
    }
    assert asyncio.run(_produce(bootstrap, "scores", [b"new-0", b"new-1"])) == [0, 1]
    assert asyncio.run(_read_partition_0(bootstrap, "scores")) == [b"new-0", b"new-1"]


def test_healthy_topics_and_topics_others_write_are_left_alone(
    own_broker: EmbeddedBroker,
) -> None:
    kafka = KafkaSettings(bootstrap_servers=own_broker.bootstrap_servers)
    bootstrap = own_broker.bootstrap_servers
    asyncio.run(ensure_topics(kafka, {"alerts": 2}))
    asyncio.run(_produce(bootstrap, "alerts", [b"a-%d" % i for i in range(5)]))
    asyncio.run(ensure_topics(kafka, {"alerts": 2}, written_only_by_us={"alerts"}))
    assert asyncio.run(_read_partition_0(bootstrap, "alerts")) == [b"a-%d" % i for i in range(5)]

    asyncio.run(ensure_topics(kafka, {"transactions": 2}))
    asyncio.run(_late_writes_after_a_restart(own_broker, "transactions"))
    auto_created = asyncio.run(partition_counts(kafka, ["transactions"]))  # broker's own count
    asyncio.run(ensure_topics(kafka, {"transactions": 2}))  # an input: not ours to delete
    assert asyncio.run(partition_counts(kafka, ["transactions"])) == auto_created
