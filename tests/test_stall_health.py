"""A stalled worker is not healthy: /healthz answers 503 naming the partitions that stopped.

Unit tests fix the rule (a partition with records to read that has not moved for
RISKSTREAM_STALL_SECONDS; moving again clears it); the broker test stalls a real worker on the
broker behaviour of riskstream.fetch_wait (fetch wait held at 1 ms on a partition of many
batches) and reads its /healthz and metrics.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaProducer
from faust.types import TP
from stream_support import StreamEnv, WorkerProcess, metric_value

from riskstream.app import Progress, report_progress
from riskstream.demo import BUNDLED_MODELS
from riskstream.kafka import ensure_topics
from riskstream.worker import app_health

KEY = ("transactions", 0)
BATCHES = 10_000


def test_a_partition_with_lag_that_does_not_move_counts_as_stalled() -> None:
    progress = Progress()
    progress.offsets[KEY] = 41
    assert progress.stalled(KEY, lag=500, now=100.0) == 0.0
    assert progress.stalled(KEY, lag=500, now=160.0) == 60.0
    assert progress.longest_stalls(60.0) == [
        {"topic": "transactions", "partition": 0, "lag": 500, "seconds": 60}
    ]
    assert progress.longest_stalls(61.0) == []


def test_moving_again_or_catching_up_clears_the_stall() -> None:
    progress = Progress()
    progress.offsets[KEY] = 41
    progress.stalled(KEY, lag=500, now=100.0)
    progress.stalled(KEY, lag=500, now=300.0)
    progress.offsets[KEY] = 42  # one more record handed on
    assert progress.stalled(KEY, lag=499, now=301.0) == 0.0
    assert progress.longest_stalls(0.0) == []
    progress.stalled(KEY, lag=499, now=400.0)
    assert progress.stalled(KEY, lag=0, now=500.0) == 0.0  # nothing left to read: not stalled
    assert progress.longest_stalls(0.0) == []


def test_recovery_progress_is_judged_by_the_offset_reached() -> None:
    progress = Progress()
    changelog = ("app-customers-changelog", 2)
    progress.stalled(changelog, lag=90_000, now=0.0, done=10_000)
    assert progress.stalled(changelog, lag=80_000, now=200.0, done=20_000) == 0.0
    assert progress.stalled(changelog, lag=80_000, now=400.0, done=20_000) == 200.0


def _app(progress: Progress) -> SimpleNamespace:
    consumer = SimpleNamespace(assignment=lambda: {KEY})
    return SimpleNamespace(
        riskstream_progress=progress, consumer=consumer, rebalancing=False, in_recovery=False
    )


def test_healthz_is_503_with_the_stalled_partitions_and_what_to_do() -> None:
    progress = Progress(last_broker_contact=time.monotonic())
    progress.offsets[KEY] = 41
    progress.stalled(KEY, lag=500, now=0.0)
    progress.stalled(KEY, lag=500, now=130.0)
    healthy, details = app_health(_app(progress), stall_seconds=120.0)
    assert not healthy
    assert details["stalled_partitions"] == [
        {"topic": "transactions", "partition": 0, "lag": 500, "seconds": 130}
    ]
    assert "RISKSTREAM_STALL_SECONDS" in details["reasons"][0]
    assert "restart the worker" in details["reasons"][0]
    healthy, details = app_health(_app(progress), stall_seconds=300.0)
    assert healthy and "reasons" not in details


class _Recorder:
    """Stands in for WorkerMetrics: keeps the last value each setter got."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def __getattr__(self, name: str):
        return lambda *args: self.values.__setitem__(name, args)


def _recovering_app(progress: Progress, remaining: int, reached: int) -> SimpleNamespace:
    changelog = TP("app-customers-changelog", 2)
    source = TP("transactions", 2)

    async def highwaters(*tps):
        return {tp: 1_000 for tp in tps}

    consumer = SimpleNamespace(
        assignment=lambda: {changelog, source},
        highwaters=highwaters,
        flow_active=True,
        _active_partitions=set(),
        _paused_partitions={source},
        _buffered_partitions=set(),
    )
    recovery = SimpleNamespace(
        active_remaining=lambda: {changelog: remaining}, active_offsets={changelog: reached}
    )
    return SimpleNamespace(
        riskstream_progress=progress,
        consumer=consumer,
        in_recovery=True,
        rebalancing=True,
        tables=SimpleNamespace(changelog_topics={changelog.topic}, recovery=recovery),
    )


def test_a_recovery_that_stops_reading_its_changelog_is_a_stall_and_waiting_sources_are_not() -> (
    None
):
    progress = Progress(sources={"transactions"})
    now = time.monotonic()
    progress.stuck_since[("transactions", 2)] = (10, now - 500.0)  # paused for the recovery
    progress.stuck_since[("app-customers-changelog", 2)] = (40_000, now - 200.0)
    metrics = _Recorder()
    settings = SimpleNamespace(worker=SimpleNamespace(stall_seconds=120.0))
    app = _recovering_app(progress, remaining=60_000, reached=40_000)
    asyncio.run(report_progress(app, settings, metrics))
    assert [s["topic"] for s in progress.longest_stalls(120.0)] == ["app-customers-changelog"]
    assert metrics.values["set_stalled"] == (1,)
    assert metrics.values["set_healthy"] == (False,)

    app = _recovering_app(progress, remaining=59_000, reached=41_000)  # it moved on
    asyncio.run(report_progress(app, settings, metrics))
    assert progress.longest_stalls(0.0) == []
    assert metrics.values["set_healthy"] == (True,)


async def _fill_with_small_batches(bootstrap: str, topic: str, count: int) -> None:
    """One partition of `count` one-record batches of valid transactions."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=16)
    await producer.start()
    try:
        deliveries = []
        for i in range(count):
            customer = f"c{i % 97}"
            value = (
                f'{{"transaction_id": "t{i}", "timestamp": "2026-01-01T{i // 3600 % 24:02d}:'
                f'{i // 60 % 60:02d}:{i % 60:02d}Z", "customer_id": "{customer}", '
                f'"terminal_id": "x{i % 89}", "amount": 12.5}}'
            ).encode()
            key = customer.encode()
            deliveries.append(await producer.send(topic, value, key=key, partition=0))
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


def _many_batches_env(kafka_bootstrap: str, tmp_path: Path, **extra: str) -> StreamEnv:
    """One transactions partition that the test fills with BATCHES one-record batches."""
    env = StreamEnv(kafka_bootstrap, BUNDLED_MODELS, tmp_path, partitions=1, extra=extra)
    settings = env.settings()
    asyncio.run(ensure_topics(settings.kafka, {settings.topics.transactions: 1}))
    asyncio.run(_fill_with_small_batches(kafka_bootstrap, settings.topics.transactions, BATCHES))
    return env


@pytest.mark.broker
def test_a_worker_reads_every_record_of_a_partition_of_many_batches(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The fix (riskstream.fetch_wait) at work in a real worker: with a 1 ms fetch wait the
    broker cannot find positions among 10,000 batches, the wait grows, every event is read."""
    env = _many_batches_env(kafka_bootstrap, tmp_path, RISKSTREAM_FETCH_MAX_WAIT_MS="1")
    worker = WorkerProcess(env).start()
    try:
        topic = env.settings().topics.transactions
        deadline = time.monotonic() + 300
        forwarded = 0.0
        while time.monotonic() < deadline and forwarded < BATCHES:
            worker.assert_not_stalled()
            time.sleep(1)
            forwarded = metric_value(
                worker.metrics(), "riskstream_events_total", topic=topic, outcome="forwarded"
            )
        assert forwarded == BATCHES, worker.evidence()
        assert "fetches now wait up to" in worker.log()
    finally:
        worker.stop()


@pytest.mark.broker
def test_a_worker_that_stops_getting_records_reports_unhealthy(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # The embedded broker cannot find a position among 10,000 batches in 1 ms, and the wait
    # may not grow past it here: the partition stops for good (riskstream.fetch_wait notes).
    env = _many_batches_env(
        kafka_bootstrap,
        tmp_path,
        RISKSTREAM_FETCH_MAX_WAIT_MS="1",
        RISKSTREAM_FETCH_WAIT_CEILING_MS="1",
        RISKSTREAM_STALL_SECONDS="5",
    )
    settings = env.settings()
    worker = WorkerProcess(env).start()
    try:
        deadline = time.monotonic() + 120
        status, body = worker.health()
        while time.monotonic() < deadline and not body.get("stalled_partitions"):
            worker.assert_running()
            time.sleep(1)
            status, body = worker.health()
        assert status == 503, worker.evidence()
        stalled = body["stalled_partitions"]
        assert {s["topic"] for s in stalled} >= {settings.topics.transactions}, body
        assert all(s["lag"] > 0 and s["seconds"] >= 5 for s in stalled), body
        assert metric_value(worker.metrics(), "riskstream_stalled_partitions") >= 1
        assert metric_value(worker.metrics(), "riskstream_worker_healthy") == 0
        assert "has not moved" in worker.log()
    finally:
        worker.stop()


def test_a_consumer_not_started_yet_is_not_judged() -> None:
    def not_started() -> set:
        raise RuntimeError("consumer not started")

    progress = Progress(sources={"transactions"})
    app = _recovering_app(progress, remaining=1, reached=0)
    app.consumer.assignment = not_started
    metrics = _Recorder()
    settings = SimpleNamespace(worker=SimpleNamespace(stall_seconds=120.0))
    asyncio.run(report_progress(app, settings, metrics))
    assert metrics.values == {}
    assert progress.last_broker_contact == 0.0
