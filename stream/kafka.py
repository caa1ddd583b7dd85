"""Kafka plumbing shared by the worker, replay, alerts and demo: topics and client settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from riskstream.config import KafkaSettings

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """No broker answered at the configured bootstrap servers."""


def unavailable_message(kafka: KafkaSettings) -> str:
    return (
        f"no Kafka broker answers at {kafka.bootstrap_servers}: start one "
        f"(`riskstream broker` for development) or set KAFKA_BOOTSTRAP_SERVERS"
    )


async def _start_admin(kafka: KafkaSettings, timeout: float) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs(), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
    except (TimeoutError, KafkaConnectionError, OSError) as exc:
        await admin.close()
        raise BrokerUnavailable(unavailable_message(kafka)) from exc
    return admin


async def partition_counts(
    kafka: KafkaSettings, topics: Iterable[str], timeout: float = 10.0
) -> dict[str, int]:
    """Partition count of each existing topic among `topics` (missing topics are left out)."""
    admin = await _start_admin(kafka, timeout)
    try:
        # Only listed topics are described: a metadata request naming a topic creates it on
        # brokers that auto-create topics, with the broker's partition count, not ours.
        listed = set(await admin.list_topics())
        wanted = [topic for topic in topics if topic in listed]
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    counts: dict[str, int] = {}
    for topic in described:
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            counts[topic["topic"]] = len(topic["partitions"])
    return counts


async def ensure_topics(
    kafka: KafkaSettings,
    wanted: Mapping[str, int],
    timeout: float = 10.0,
    *,
    written_only_by_us: Collection[str] = (),
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, int]:
    """Create the topics that do not exist yet (with `configs[name]`, if any, as topic
    configuration); returns every topic's actual partition count.

    Existing topics keep their partition count: the worker adapts to what producers made.
    Topics in `written_only_by_us` are first cleared of a lost topic's leftovers
    (`recreate_if_left_over`).
    """
    existing = await partition_counts(kafka, wanted, timeout)
    missing = {name: count for name, count in wanted.items() if name not in existing}
    if missing:
        await _create(kafka, missing, timeout, configs or {})
        existing = await _wait_listed(kafka, wanted, timeout)
    ours = {name: wanted[name] for name in written_only_by_us if name in existing}
    if ours and await recreate_if_left_over(kafka, ours, existing, timeout):
        existing = await _wait_listed(kafka, wanted, timeout)
    return existing


async def _create(
    kafka: KafkaSettings,
    topics: Mapping[str, int],
    timeout: float,
    configs: Mapping[str, Mapping[str, str]],
) -> None:
    admin = await _start_admin(kafka, timeout)
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=n,
                    replication_factor=1,
                    topic_configs=dict(configs.get(name, {})),
                )
                for name, n in topics.items()
            ]
        )
    except TopicAlreadyExistsError:
        log.debug("topics were created concurrently: %s", sorted(topics))
    finally:
        await admin.close()


async def _wait_listed(
    kafka: KafkaSettings, wanted: Mapping[str, int], timeout: float
) -> dict[str, int]:
    existing: dict[str, int] = {}
    for _ in range(50):
        existing = await partition_counts(kafka, wanted, timeout)
        if len(existing) == len(wanted):
            break
        await asyncio.sleep(0.1)
    return existing


async def recreate_if_left_over(
    kafka: KafkaSettings,
    wanted: Mapping[str, int],
    existing: Mapping[str, int],
    timeout: float = 10.0,
) -> list[str]:
    """Delete and create again the topics that serve records past their own end.

    A broker that lost its topics (the embedded Tansu broker, memory-only, restarted) still
    accepts writes to them from clients that knew them (a worker on its way out, a producer)
    and keeps those records, while the topic itself starts again at offset 0 once it is
    created (or auto-created by a metadata request). Its new writes then fail (UnknownError)
    or land inside the old batches, where consumers never see them. Such a partition lists an
    end offset past the high-water mark its fetches report, which no healthy broker does;
    deleting the topic removes the kept records. Only for topics this app alone writes: their
    old contents are gone anyway. Returns the topics recreated.
    """
    left_over = await _topics_past_their_end(kafka, existing, set(wanted))
    if not left_over:
        return []
    log.warning(
        "topics %s hold records past their end (a broker that lost its data kept late writes "
        "to them): deleting them and creating them again",
        sorted(left_over),
    )
    admin = await _start_admin(kafka, timeout)
    try:
        await admin.delete_topics(sorted(left_over))
        for _ in range(50):
            if not left_over & set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    await _create(kafka, {name: wanted[name] for name in left_over}, timeout, {})
    return sorted(left_over)


async def _topics_past_their_end(
    kafka: KafkaSettings, existing: Mapping[str, int], topics: set[str], wait_s: float = 2.0
) -> set[str]:
    """Topics with a partition whose listed end lies past the high-water mark a fetch reports.

    The listed end (ListOffsets) of such a Tansu partition counts the kept records; a fetch
    answers with the topic's own end. On a healthy broker the listed end is never larger.
    """
    consumer = AIOKafkaConsumer(
        **kafka.aiokafka_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=1024,  # the high-water mark is all this fetch is for
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(name, p) for name in topics for p in range(existing[name])]
        listed_ends = await consumer.end_offsets(partitions)
        fetched = await fetched_highwaters(consumer, listed_ends, wait_s)
        return {tp.topic for tp, end in listed_ends.items() if tp in fetched and end > fetched[tp]}
    finally:
        await consumer.stop()


async def fetched_highwaters(
    probe: AIOKafkaConsumer, listed: Mapping[Any, int], timeout: float = 2.0
) -> dict[Any, int]:
    """The high-water marks a fetch response reports for the listed partitions, read by a
    group-less consumer positioned at each listed end − 1 (partitions it could not reach in
    `timeout` keep no entry)."""
    probe.assign(list(listed))
    for tp, end in listed.items():
        probe.seek(tp, max(end - 1, 0))
    deadline = asyncio.get_running_loop().time() + timeout
    marks: dict[Any, int] = {}
    while len(marks) < len(listed) and asyncio.get_running_loop().time() < deadline:
        await probe.getmany(*listed, timeout_ms=200)
        for tp in listed:
            mark = probe.highwater(tp)
            if mark is not None:
                marks[tp] = mark
    return marks


async def read_to_end(kafka: KafkaSettings, topic: str) -> list[Any]:
    """Every record of `topic` (aiokafka ConsumerRecords) from its start to its current end:
    a snapshot for tools and tests, not a live tail."""
    from riskstream.fetch_wait import AdaptiveFetchWait

    count = (await partition_counts(kafka, [topic])).get(topic)
    if not count:
        raise BrokerUnavailable(f"topic {topic} does not exist at {kafka.bootstrap_servers}")
    partitions = [TopicPartition(topic, p) for p in range(count)]
    consumer = AIOKafkaConsumer(
        **kafka.aiokafka_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        AdaptiveFetchWait(consumer._fetch_max_wait_ms).install(consumer)  # long topics, Tansu
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for messages in batches.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


def faust_credentials(kafka: KafkaSettings) -> Any:
    """Faust's credential object for the configured security protocol (None for PLAINTEXT)."""
    import ssl

    import faust

    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = (
        ssl.create_default_context(cafile=kafka.ssl_cafile)
        if kafka.ssl_cafile
        else ssl.create_default_context()
    )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = (kafka.sasl_mechanism or "PLAIN").upper()
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password,
        ssl_context=context if protocol == "SASL_SSL" else None,
        mechanism=mechanism,
    )
