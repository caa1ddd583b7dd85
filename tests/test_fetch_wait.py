"""The adaptive fetch wait (riskstream.fetch_wait): the rule, and the broker behaviour it answers.

The embedded broker looks a fetch's position up by listing the partition's batches from the
first one and gives up when the fetch's wait has passed; a partition of many batches read with a
short wait then answers nothing, for ever. These tests build such a partition on a broker of
their own and read its last records with and without the adaptation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from riskstream.broker import EmbeddedBroker, free_port
from riskstream.fetch_wait import AdaptiveFetchWait, fetch_answers, next_offset

BATCHES = 10_000  # listing these takes the broker ~5 ms on the 2-core machine, far above 1 ms
SHORT_WAIT_MS = 1


def test_a_partition_starved_twice_at_one_offset_doubles_the_wait_up_to_the_ceiling() -> None:
    wait = AdaptiveFetchWait(10, ceiling_ms=50)
    starved = ("a", 100, 0, 500, None)  # asked at 100, no error, high-water mark 500, no records
    wait.observe([starved])
    assert wait.wait_ms == 10  # once may be a record that arrived during the fetch
    wait.observe([starved])
    assert wait.wait_ms == 20
    wait.observe([starved, ("b", 7, 0, 9, 9)])  # records elsewhere do not hide a starved one
    assert wait.wait_ms == 40
    wait.observe([starved])
    assert wait.wait_ms == 50
    assert wait.starved_answers == 3


def test_an_empty_answer_that_the_next_fetch_moves_past_is_not_starvation() -> None:
    """Live traffic: a record lands between the broker's lookup and its high-water mark."""
    wait = AdaptiveFetchWait(10, ceiling_ms=1000)
    for offset in range(100, 110):
        wait.observe([("a", offset, 0, offset + 1, None), ("b", 7, 0, 9, 9)])
        wait.observe([("a", offset, 0, offset + 1, offset + 1)])
    assert wait.wait_ms == 10
    assert wait.starved_answers == 0


def test_records_behind_the_high_water_mark_keep_the_wait() -> None:
    """A backlog read under a wait that starvation raised: the long wait is still needed."""
    wait = AdaptiveFetchWait(10, ceiling_ms=1000)
    wait.wait_ms = 160
    for position in range(0, 1000, 100):
        wait.observe([("a", position, 0, 5000, position + 100), ("b", 9, 0, 9, None)])
    assert wait.wait_ms == 160


def test_an_answer_that_leaves_nothing_unread_halves_the_wait_back_to_the_floor() -> None:
    """Idle, or live and caught up: after a backlog, live traffic must not wait seconds."""
    wait = AdaptiveFetchWait(10, ceiling_ms=1000)
    wait.wait_ms = 160
    wait.observe([("a", 5, 0, 9, 9), ("b", 9, 0, 9, None)])  # read to the end; at the end
    assert wait.wait_ms == 80
    for expected in (40, 20, 10, 10):
        wait.observe([("b", 9, 0, 9, None)])  # at the end, nothing to read: idle
        assert wait.wait_ms == expected


def test_an_error_or_an_end_position_is_not_starvation() -> None:
    wait = AdaptiveFetchWait(10)
    for _ in range(3):
        wait.observe([("a", 100, 1, 500, None), ("b", 500, 0, 500, None)])  # out of range; end
    assert wait.wait_ms == 10
    assert wait.starved_answers == 0


def test_fetch_answers_pairs_each_partition_with_the_offset_asked_and_where_its_records_end() -> (
    None
):
    records = _record_batch(base_offset=7, count=3) + _record_batch(base_offset=10, count=2)
    request = SimpleNamespace(topics=[("t", [(0, 100, 1024), (1, 7, 1024)])])
    response = SimpleNamespace(
        topics=[("t", [(0, 0, 500, 0, b""), (1, 0, 19, 0, records), (2, 0, 1, 0, None)])]
    )
    assert fetch_answers(request, response) == [
        (("t", 0), 100, 0, 500, None),
        (("t", 1), 7, 0, 19, 12),
    ]


def test_a_batch_cut_short_at_the_size_limit_does_not_count() -> None:
    whole = _record_batch(base_offset=0, count=4)
    cut = _record_batch(base_offset=4, count=4)[:-10]
    assert next_offset(whole + cut) == 4
    assert next_offset(cut) is None
    assert next_offset(b"") is None


def _record_batch(base_offset: int, count: int) -> bytes:
    """A v2 record batch as a broker sends it, built by aiokafka's own builder."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for delta in range(count):
        builder.append(delta, timestamp=1, key=b"k", value=b"v" * 20, headers=[])
    raw = bytearray(builder.build())
    raw[0:8] = base_offset.to_bytes(8, "big")
    return bytes(raw)


@pytest.fixture(scope="module")
def many_batches() -> Iterator[tuple[str, str]]:
    """A broker of its own with one partition of BATCHES one-record batches."""
    broker = EmbeddedBroker("127.0.0.1", free_port()).start()
    try:
        topic = "many-batches"
        asyncio.run(_produce_one_record_batches(broker.bootstrap_servers, topic, BATCHES))
        yield broker.bootstrap_servers, topic
    finally:
        broker.stop()


async def _produce_one_record_batches(bootstrap: str, topic: str, count: int) -> None:
    # One batch in flight per partition and batches too small for two records: one per batch.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=16)
    await producer.start()
    try:
        deliveries = [await producer.send(topic, b"r" * 20, partition=0) for _ in range(count)]
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


async def _read_last_records(bootstrap: str, topic: str, adapt: bool, seconds: float) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=SHORT_WAIT_MS,
    )
    await consumer.start()
    try:
        if adapt:
            AdaptiveFetchWait(SHORT_WAIT_MS).install(consumer)
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, BATCHES - 5)
        deadline = time.monotonic() + seconds
        read = 0  # an answer can hold part of them: the broker lists until its time is up
        while time.monotonic() < deadline and read < 5:
            fetched = await consumer.getmany(tp, timeout_ms=250)
            read += len(fetched.get(tp, []))
        return read
    finally:
        await consumer.stop()


@pytest.mark.broker
def test_a_short_wait_alone_never_reads_the_end_of_a_partition_of_many_batches(
    many_batches: tuple[str, str],
) -> None:
    """The broker behaviour the adaptation exists for; if this fails, the broker changed."""
    bootstrap, topic = many_batches
    assert asyncio.run(_read_last_records(bootstrap, topic, adapt=False, seconds=3.0)) == 0


@pytest.mark.broker
def test_the_adaptive_wait_reads_the_end_of_a_partition_of_many_batches(
    many_batches: tuple[str, str],
) -> None:
    bootstrap, topic = many_batches
    assert asyncio.run(_read_last_records(bootstrap, topic, adapt=True, seconds=10.0)) == 5
