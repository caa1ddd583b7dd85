"""Kafka plumbing shared by the worker, replay, alerts and demo: topics and client settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

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
        wanted = list(topics)
        described = await admin.describe_topics(wanted)
    finally:
        await admin.close()
    counts: dict[str, int] = {}
    for topic in described:
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            counts[topic["topic"]] = len(topic["partitions"])
    return counts


async def ensure_topics(
    kafka: KafkaSettings, wanted: Mapping[str, int], timeout: float = 10.0
) -> dict[str, int]:
    """Create the topics that do not exist yet; returns every topic's actual partition count.

    Existing topics keep their partition count: the worker adapts to what producers made.
    """
    existing = await partition_counts(kafka, wanted, timeout)
    missing = [
        NewTopic(name, num_partitions=count, replication_factor=1)
        for name, count in wanted.items()
        if name not in existing
    ]
    if missing:
        admin = await _start_admin(kafka, timeout)
        try:
            await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            log.debug("topics were created concurrently: %s", [t.name for t in missing])
        finally:
            await admin.close()
        for _ in range(50):
            existing = await partition_counts(kafka, wanted, timeout)
            if len(existing) == len(wanted):
                break
            await asyncio.sleep(0.1)
    return existing


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
