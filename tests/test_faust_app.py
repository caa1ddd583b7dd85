"""The Faust app riskstream runs: the commit rule for out-of-order acknowledgements, the
consumer's fetch wait, and the settings that reach Faust."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord
from faust.types import TP, Message

from riskstream.config import Settings
from riskstream.faust_app import (
    RiskstreamApp,
    _Consumer,
    committable_end,
    faust_app,
)
from riskstream.kafka import fetched_highwaters


@pytest.mark.parametrize(
    ("acked", "committed", "lowest_unacked", "expected"),
    [
        ([5, 6, 7], 5, None, 8),  # in order: the whole run
        ([5, 6, 8, 9], 5, None, 7),  # 7 still in flight: up to it
        ([6, 7, 8], 5, None, None),  # 5 held: nothing (Faust's own rule committed 9 here)
        ([7, 8], 5, None, None),
        ([0, 1, 2], None, None, 3),  # before the first commit
        ([1, 2, 3], None, 0, None),  # before the first commit, 0 held (Faust: committed 4)
        ([0, 1, 2, 3], None, 2, 2),  # never past an unacknowledged message
        ([0, 1, 3], None, None, 2),
        ([3, 4], None, 7, 5),  # a partition read from offset 3 (earliest after retention)
    ],
)
def test_a_commit_never_passes_an_unacknowledged_message(
    acked: list[int], committed: int | None, lowest_unacked: int | None, expected: int | None
) -> None:
    assert committable_end(acked, committed, lowest_unacked) == expected


def test_the_app_uses_the_fixed_consumer_and_the_configured_fetch_wait() -> None:
    settings = Settings.from_env(
        {"RISKSTREAM_FETCH_MAX_WAIT_MS": "25", "RISKSTREAM_LINGER_MS": "40"}
    )
    app = faust_app(settings, partitions=4)
    assert isinstance(app, RiskstreamApp)
    assert app.transport.Consumer is _Consumer
    assert app.riskstream_fetch_max_wait_ms == 25
    assert app.conf.producer_linger == pytest.approx(0.040)
    assert app.conf.stream_wait_empty is False, "a rebalance must not wait for held events"
    assert app.conf.table_standby_replicas == 0, "no standby reads unless asked for"
    # A redelivery must stay within a day of a customer's event time (see config): commit often.
    assert app.conf.broker_commit_interval == pytest.approx(0.5)
    other = Settings.from_env(
        {"RISKSTREAM_STANDBY_REPLICAS": "1", "RISKSTREAM_COMMIT_INTERVAL_S": "2"}
    )
    standby = faust_app(other, partitions=4)
    assert standby.conf.table_standby_replicas == 1
    assert standby.conf.broker_commit_interval == pytest.approx(2.0)


async def _publish(bootstrap: str, topic: str, batches: list[tuple[int, int]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=100)
    await producer.start()
    try:
        for partition, count in batches:  # each loop one produce batch of `count` records
            sent = [await producer.send(topic, b"x", partition=partition) for _ in range(count)]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _ends(bootstrap: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        listed = await consumer.end_offsets(tps)
        fetched = await fetched_highwaters(consumer, listed)
    finally:
        await consumer.stop()
    return {tp.partition: n for tp, n in listed.items()}, {
        tp.partition: n for tp, n in fetched.items()
    }


def test_fetched_high_water_marks_count_every_record_of_a_batch(kafka_bootstrap: str) -> None:
    """Faust's table recovery reads a changelog up to its listed end offset; the embedded
    broker lists a multi-record batch's base offset + 1 there, so the worker takes the
    high-water mark a fetch reports instead (issue: a partition handed back missed state)."""
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    asyncio.run(_publish(kafka_bootstrap, topic, [(0, 7), (0, 10), (1, 1)]))
    listed, fetched = asyncio.run(_ends(kafka_bootstrap, topic))
    assert fetched == {0: 17, 1: 1, 2: 0}, "every record counted, empty partitions included"
    assert all(listed[p] <= fetched[p] for p in fetched)


def _message(offset: int) -> Message:
    return Message("by-terminal", 0, offset, 0.0, 0, None, b"k", b"v", None)


def test_acknowledgements_for_a_partition_not_owned_never_commit() -> None:
    """After a revocation the worker still acknowledges what it scored from that partition;
    those acknowledgements must not commit past its held transactions (13,309 transactions
    were lost that way when a second worker joined the handbook replay)."""
    app = faust_app(Settings.from_env({}), partitions=4)
    app.topics._acking_topics.add("by-terminal")  # as an agent on that topic would
    consumer, tp = app.consumer, TP("by-terminal", 0)
    assert consumer.ack(_message(40)) is False, "not owned (yet, or any more)"
    assert consumer._new_offset(tp) is None
    consumer._owned = frozenset({tp})
    assert all(consumer.ack(_message(offset)) for offset in (0, 1, 2))
    assert consumer._new_offset(tp) == 3
    consumer._owned = frozenset()  # revoked
    assert consumer.ack(_message(3)) is False
    assert consumer._new_offset(tp) is None


class _Fetcher:
    """Faust's fetcher as the drain loop sees it: stopped once the last fetch was made."""

    def __init__(self) -> None:
        self._stopped = asyncio.Event()


def _record(tp: TP, offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])


@pytest.mark.parametrize("batch_path", [True, False])
def test_messages_fetched_again_after_a_seek_are_delivered_again(batch_path: bool) -> None:
    """Faust dropped a re-fetched message below the last offset it handed on; around the seek
    at the end of table recovery that lost transactions until the next restart (137 in a
    SIGKILL run). Every fetched message must reach the handler (or, on Faust's per-message
    path, the agents): repeats are harmless."""
    app = faust_app(Settings.from_env({}), partitions=4)
    consumer, tp = app.consumer, TP("by-terminal", 0)
    consumer._thread = _FakeThread([], _FakeClient(None))
    fetches = [[10, 11, 12], [5, 6, 7, 8, 9, 10, 11, 12]]  # the second: after a seek back to 5
    delivered: list[int] = []
    fetcher = _Fetcher()

    async def wait_next_records(timeout: float) -> Any:
        offsets = fetches.pop(0)
        if not fetches:
            fetcher._stopped.set()  # the drain loop ends after this fetch
        return {tp: [_record(tp, offset) for offset in offsets]}, None

    async def handle(partition: TP, records: list[ConsumerRecord]) -> None:
        delivered.extend(record.offset for record in records)

    async def deliver(message: Message) -> None:
        delivered.append(message.offset)

    async def drain() -> None:
        consumer._owned = frozenset({tp})
        consumer._wait_next_records = wait_next_records
        consumer.callback = deliver
        app.batch_handlers = {"by-terminal": handle} if batch_path else {}
        await consumer._drain_messages(fetcher)

    app.loop.run_until_complete(drain())  # the consumer's own loop (Faust's services bind one)
    assert delivered == [10, 11, 12, 5, 6, 7, 8, 9, 10, 11, 12]


def test_a_batch_is_acknowledged_only_by_its_handler_and_commits_in_order() -> None:
    """Offsets handed to a batch handler stay uncommittable until it acknowledges them, and
    before the first commit nothing at or past an unacknowledged offset is committed."""
    app = faust_app(Settings.from_env({}), partitions=4)
    consumer, tp = app.consumer, TP("transactions", 0)
    consumer._owned = frozenset({tp})
    consumer._batch_unacked[tp] = {0, 1, 2, 3, 4}  # handed to a handler
    assert consumer.ack_offsets(tp, [2, 3, 4]) == 3
    assert consumer._new_offset(tp) is None, "0 and 1 are not acknowledged yet"
    assert consumer.ack_offsets(tp, [0]) == 1
    assert consumer._new_offset(tp) == 1
    assert consumer.ack_offsets(tp, [1, 1]) == 1
    assert consumer._new_offset(tp) == 5
    consumer._owned = frozenset()  # revoked
    assert consumer.ack_offsets(tp, [5]) == 0


@pytest.mark.parametrize("moved", ["paused", "revoked"])
def test_records_of_a_partition_paused_or_revoked_after_the_fetch_are_read_again(
    moved: str,
) -> None:
    """A fetch can outlive a rebalance: records of a source partition fetched before it must
    not reach a handler while the partition's table state recovers (paused) or after the
    partition moved; scored then, they see state that is not there yet."""
    app = faust_app(Settings.from_env({}), partitions=4)
    consumer = app.consumer
    tp = TP("transactions", 0)
    client = _FakeClient(3)
    consumer._thread = _FakeThread([{tp: [10, 11]}], client)
    consumer._active_partitions = None  # the fetch was asked for before the rebalance
    consumer._owned = frozenset({tp})
    delivered: list[int] = []
    fetcher = _Fetcher()

    async def wait_next_records(timeout: float) -> Any:
        records = await consumer._getmany({tp}, timeout)
        if moved == "paused":  # the rebalance ran while the fetch was out
            consumer._paused_partitions.add(tp)
        else:
            consumer._owned = frozenset()
        fetcher._stopped.set()
        return records, {tp}

    async def handle(partition: TP, records: list[ConsumerRecord]) -> None:
        delivered.extend(record.offset for record in records)

    async def drain() -> None:
        app.batch_handlers = {"transactions": handle}
        consumer._wait_next_records = wait_next_records
        await consumer._drain_messages(fetcher)

    app.loop.run_until_complete(drain())
    assert delivered == []
    assert client.seeks == [("transactions", 0, 3)], "read again from the committed offset"


class _FakeClient:
    """The aiokafka consumer as the seek-back step uses it: committed offsets and seeks."""

    def __init__(self, committed: int | None) -> None:
        self.committed_offset = committed
        self.seeks: list[tuple[str, int, int]] = []

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.topic, tp.partition, offset))

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, 0))


class _FakeThread:
    """Faust's consumer thread: one fetch result per call (offsets per partition), calls run
    inline."""

    def __init__(self, fetches: list[dict[TP, list[int]]], client: _FakeClient) -> None:
        self.fetches, self.client = fetches, client

    async def getmany(self, active_partitions: Any, timeout: float) -> Any:
        fetch = self.fetches.pop(0)
        return {tp: [_record(tp, o) for o in offsets] for tp, offsets in fetch.items()}

    def assignment(self) -> set[TP]:
        return set()

    def highwater(self, tp: TP) -> int:
        return 100

    def seek(self, tp: TP, offset: int) -> None:
        pass

    def _ensure_consumer(self) -> _FakeClient:
        return self.client

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)


@pytest.mark.parametrize(("committed", "read_again_from"), [(5, 5), (None, 0)])
def test_records_fetched_before_a_seek_are_not_handed_on_after_it(
    committed: int | None, read_again_from: int
) -> None:
    """Records fetched before a seek and handed on after it put a partition out of order (a
    transaction scored before earlier ones of its customer: features off by 0.06 in a SIGKILL
    run). They are held back and the partition is read again from its committed offset."""
    app = faust_app(Settings.from_env({}), partitions=4)
    consumer = app.consumer
    first, sought = TP("by-terminal", 0), TP("by-terminal", 1)
    client = _FakeClient(committed)
    consumer._thread = _FakeThread(
        [{first: [10, 11], sought: [10, 11, 12, 13]}, {sought: [5, 6, 7]}], client
    )
    consumer._active_partitions = {first, sought}  # assigned and resumed
    consumer._owned = frozenset({first, sought})
    delivered: list[tuple[int, int]] = []
    fetcher = _Fetcher()

    async def handle(tp: TP, records: list[ConsumerRecord]) -> None:
        delivered.extend((tp.partition, record.offset) for record in records)
        if tp == first:
            await consumer.seek(sought, 5)  # e.g. the seek that ends table recovery
        if not consumer._thread.fetches:
            fetcher._stopped.set()

    async def read_twice() -> None:
        app.batch_handlers = {"by-terminal": handle}
        await consumer._drain_messages(fetcher)

    app.loop.run_until_complete(read_twice())
    assert client.seeks == [("by-terminal", 1, read_again_from)], delivered
    assert delivered == [(0, 10), (0, 11), (1, 5), (1, 6), (1, 7)]


def test_an_untested_faust_release_or_another_store_stops_the_worker_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from riskstream import faust_app as module
    from riskstream.worker import EXIT_UNSUPPORTED, refuse_unsupported

    refuse_unsupported(Settings.from_env({}))  # the installed releases are the tested ones
    monkeypatch.setitem(module.TESTED_VERSIONS, "faust-streaming", ("9.9.",))
    with pytest.raises(SystemExit) as exited:
        refuse_unsupported(Settings.from_env({"RISKSTREAM_STORE": "rocksdb://"}))
    assert exited.value.code == EXIT_UNSUPPORTED
    said = capsys.readouterr().err
    assert "faust-streaming 0.15" in said and "tested: 9.9.x" in said
    assert "RISKSTREAM_STORE=rocksdb://" in said and "memory://" in said


class _FlushingProducer:
    """The producer as the revoke step uses it: a flush that lands pending deliveries."""

    def __init__(self, on_flush: Any) -> None:
        self.on_flush = on_flush

    async def flush(self) -> None:
        self.on_flush()


def test_a_revoked_partition_commits_what_was_acknowledged() -> None:
    """Faust forgets a revoked partition's acknowledgements before its revoke handlers run,
    so without a commit first its next owner read everything since the last periodic commit
    again: 1,347–4,199 repeats per join/leave run, some a day of event time late (repeat
    scores over the alert threshold in the handbook pair test). Deliveries that land during
    the flush count; offsets still in flight do not."""
    app = faust_app(Settings.from_env({}), partitions=4)
    consumer, tp = app.consumer, TP("transactions", 0)
    consumer._thread = _FakeThread([], _FakeClient(None))
    consumer._thread.assignment = lambda: {tp}  # type: ignore[method-assign]
    consumer._owned = frozenset({tp})
    consumer._batch_unacked[tp] = set(range(10))
    consumer.ack_offsets(tp, [0, 1, 2])
    app.producer = _FlushingProducer(lambda: consumer.ack_offsets(tp, [3, 4]))  # type: ignore[assignment]
    committed: list[dict[TP, int]] = []

    async def commit(offsets: dict[TP, int]) -> bool:
        committed.append(dict(offsets))
        return True

    consumer._commit = commit  # type: ignore[method-assign]
    app.loop.run_until_complete(consumer.commit_before_revoke())
    assert committed == [{tp: 5}], "up to the first offset still in flight (5)"
