"""The embedded broker and the broker fixture: real produce and consume with aiokafka."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from riskstream.broker import BrokerError, EmbeddedBroker, free_port

pytestmark = pytest.mark.broker


def _transaction(i: int) -> dict[str, object]:
    return {
        "transaction_id": str(i),
        "timestamp": f"2018-08-08T{(i // 60) % 24:02d}:{i % 60:02d}:00Z",
        "customer_id": str(i % 37),
        "terminal_id": str(i % 101),
        "amount": round(10 + i * 0.37, 2),
    }


async def _round_trip(bootstrap: str, topic: str, count: int) -> tuple[dict, dict]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    sent: dict[int, list[str]] = defaultdict(list)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for i in range(count):
            event = _transaction(i)
            futures.append(
                await producer.send(
                    topic, json.dumps(event).encode(), key=str(event["customer_id"]).encode()
                )
            )
        for i, metadata in enumerate(await asyncio.gather(*futures)):
            sent[metadata.partition].append(str(i))
    finally:
        await producer.stop()

    received: dict[int, list[str]] = defaultdict(list)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while sum(map(len, received.values())) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                for message in messages:
                    received[tp.partition].append(json.loads(message.value)["transaction_id"])
    finally:
        await consumer.stop()
    return dict(sent), dict(received)


def test_thousand_transactions_round_trip_in_order_per_partition(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    sent, received = asyncio.run(_round_trip(kafka_bootstrap, unique_topic, 1000))
    assert sum(map(len, received.values())) == 1000
    assert received == sent
    assert len(sent) > 1, "keys should spread over several partitions"


def test_broker_command_serves_plain_aiokafka_clients_and_stops_on_sigterm(
    unique_topic: str,
) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "riskstream", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                _, received = asyncio.run(_round_trip(f"127.0.0.1:{port}", unique_topic, 50))
                break
            except Exception:
                time.sleep(0.2)
        else:
            pytest.fail("riskstream broker did not accept clients")
        assert sum(map(len, received.values())) == 50
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert process.returncode == 0, output
    assert "broker ready" in output
    assert "stopping broker" in output


def test_broker_refuses_a_taken_port_with_a_clear_error() -> None:
    with EmbeddedBroker("127.0.0.1", free_port()) as first:
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker("127.0.0.1", first.port).start()
        done = subprocess.run(
            [sys.executable, "-m", "riskstream", "broker", "--port", str(first.port)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert done.returncode == 2
    assert "already in use" in done.stderr
