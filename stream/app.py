"""The Faust application: topics, changelog-backed state tables, agents and timers.

Topology (see riskstream.pipeline for the per-event work):

    transactions ─► fraud_customer_stage ─► <app>-fraud-by-terminal ─► fraud_terminal_stage ─┐
    risk.labels  ─► label_forwarder ─────────────────┘                                       │
    market.indicators ─► market_stage ───────────────────────────────────────────────────────┤
                          micro-batches ─► onnxruntime ─► risk.scores, risk.alerts ◄──────────┘
    any bad message ──► risk.dlq (with a stable error code and its original bytes)

Every table write happens while Faust iterates the event that caused it, so the changelog
partition is the event's partition and a restarted or rebalanced worker recovers the state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import EventT, StreamT

from riskstream import contracts, pipeline
from riskstream.batching import MicroBatcher
from riskstream.config import Settings
from riskstream.kafka import faust_credentials

log = logging.getLogger("riskstream.worker")

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
# Tables take their serializers from the app (raw): state is packed by the feature module.
RAW_TABLE = {"key_type": bytes, "value_type": bytes}


@dataclasses.dataclass
class Progress:
    """Last offset processed per (topic, partition): consumer lag = high water - this - 1."""

    offsets: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    sources: set[str] = dataclasses.field(default_factory=set)
    last_broker_contact: float = 0.0

    def saw(self, event: EventT) -> None:
        message = event.message
        self.offsets[(message.topic, message.partition)] = message.offset


async def send_raw(app: faust.App, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
    """Produce through Faust's own transport producer, skipping its per-message channel layers.

    Faust flushes this producer before every offset commit, so whatever an agent sent before
    acknowledging its input is delivered before that input's offset is committed.
    """
    return await app.producer.send(topic, key, value, None, None, None)


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _faust_app(settings: Settings, partitions: int) -> faust.App:
    worker = settings.worker
    return faust.App(
        worker.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings.kafka),
        store=worker.store,
        datadir=str(worker.data_dir),
        topic_partitions=partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=worker.session_timeout_s,
        broker_rebalance_timeout=worker.rebalance_timeout_s,
        broker_heartbeat_interval=worker.heartbeat_interval_s,
        producer_linger_ms=5,
        web_enabled=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
    )


def build_app(
    settings: Settings,
    models: dict[str, Any],
    metrics: Any,
    partitions: dict[str, int],
) -> faust.App:
    """Wire the topology for the models given (`fraud`, `market`); returns the Faust app."""
    topics = settings.topics
    fraud_partitions = partitions.get(topics.transactions, settings.worker.partitions)
    app = _faust_app(settings, fraud_partitions)
    progress = Progress()
    app.riskstream_progress = progress  # type: ignore[attr-defined]
    batchers: list[MicroBatcher] = []
    app.riskstream_batchers = batchers  # type: ignore[attr-defined]

    def sink(topic_name: str) -> Callable[[bytes, bytes], Awaitable[Any]]:
        async def send(key: bytes, value: bytes) -> Awaitable[Any]:
            return await send_raw(app, topic_name, key, value)

        return send

    async def dead_letter(event: EventT, error: contracts.ContractError) -> None:
        message = event.message
        record = contracts.dead_letter(
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            error=error,
            payload=message.value,
            received_at=datetime.now(UTC),
        )
        await send_raw(app, topics.dlq, message.key, contracts.encode(record))
        metrics.count_events(message.topic, "dead_letter")
        metrics.dead_letter(message.topic, error.code)

    async def guarded(event: EventT, step: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Run one event's step; bad input, or a bug, sends the event to the DLQ instead."""
        progress.saw(event)
        try:
            return True, step(*args)
        except contracts.ContractError as error:
            await dead_letter(event, error)
        except Exception as exc:  # the worker must survive anything one message can cause
            message = event.message
            log.exception(
                "unexpected error on %s:%s@%s", message.topic, message.partition, message.offset
            )
            await dead_letter(
                event, contracts.ContractError("internal_error", f"{type(exc).__name__}: {exc}")
            )
        return False, None

    def make_batcher(model: Any, source_topic: str) -> MicroBatcher:
        batcher = MicroBatcher(
            model,
            sink(topics.scores),
            sink(topics.alerts),
            metrics,
            source_topic,
            max_rows=settings.worker.batch_size,
            max_wait=settings.worker.batch_wait_ms / 1000.0,
        )
        batchers.append(batcher)
        return batcher

    if "fraud" in models:
        _wire_fraud(
            app, settings, models["fraud"], metrics, fraud_partitions, guarded, make_batcher
        )
    if "market" in models:
        market_partitions = partitions.get(topics.market, settings.worker.partitions)
        _wire_market(app, settings, models["market"], market_partitions, guarded, make_batcher)

    @app.timer(interval=max(settings.worker.batch_wait_ms / 2000.0, 0.005))
    async def flush_due_batches() -> None:
        for batcher in batchers:
            await batcher.flush_if_due()

    @app.timer(interval=5.0)
    async def report_lag() -> None:
        assignment = app.consumer.assignment()
        try:
            high = await app.consumer.highwaters(*assignment) if assignment else {}
        except Exception as exc:
            log.warning("cannot reach the broker for high water marks: %s", exc)
            metrics.set_healthy(False)
            return
        progress.last_broker_contact = time.monotonic()
        metrics.set_healthy(True)
        for tp, highwater in high.items():
            if tp.topic not in progress.sources:
                continue  # changelog partitions are Faust's bookkeeping, not work behind
            done = progress.offsets.get((tp.topic, tp.partition), -1)
            metrics.set_lag(tp.topic, tp.partition, max(0, highwater - done - 1))

    @app.on_partitions_revoked.connect
    async def flush_before_revoke(sender: faust.App, revoked: Any, **kwargs: Any) -> None:
        """Score what is pending before the partitions move, so little is scored twice."""
        for batcher in batchers:
            await batcher.flush()

    @app.on_partitions_assigned.connect
    async def forget_moved_partitions(sender: faust.App, assigned: Any, **kwargs: Any) -> None:
        metrics.retain_partitions((tp.topic, tp.partition) for tp in assigned)

    return app


def _wire_fraud(
    app: faust.App,
    settings: Settings,
    model: Any,
    metrics: Any,
    partitions: int,
    guarded: Callable[..., Awaitable[tuple[bool, Any]]],
    make_batcher: Callable[[Any, str], MicroBatcher],
) -> None:
    topics = settings.topics
    transactions = app.topic(topics.transactions, partitions=partitions, **RAW)
    labels = app.topic(topics.labels, **RAW)
    by_terminal = app.topic(
        f"{settings.worker.app_id}-fraud-by-terminal", partitions=partitions, internal=True, **RAW
    )
    by_terminal_name = by_terminal.get_topic_name()
    customers = app.Table("customers", partitions=partitions, **RAW_TABLE)
    terminals = app.Table("terminals", partitions=partitions, **RAW_TABLE)
    batcher = make_batcher(model, topics.transactions)
    app.riskstream_progress.sources.update(  # type: ignore[attr-defined]
        {transactions.get_topic_name(), labels.get_topic_name(), by_terminal.get_topic_name()}
    )

    async def forward(message: pipeline.Forwarded) -> None:
        await send_raw(
            app, by_terminal_name, message.terminal_id.encode(), pipeline.encode_forwarded(message)
        )

    @app.agent(transactions, name="fraud-customer-stage")
    async def fraud_customer_stage(stream: StreamT) -> None:
        async for event in stream.events():
            m = event.message
            ok, forwarded = await guarded(
                event, pipeline.ingest_transaction, m.value, m.key, _ms(m.timestamp), customers
            )
            if ok:
                await forward(forwarded)
                metrics.count_events(m.topic, "forwarded")

    @app.agent(labels, name="label-forwarder")
    async def label_forwarder(stream: StreamT) -> None:
        async for event in stream.events():
            m = event.message
            ok, label = await guarded(event, pipeline.ingest_label, m.value, m.key)
            if ok:
                await forward(label)
                metrics.count_events(m.topic, "label")

    @app.agent(by_terminal, name="fraud-terminal-stage")
    async def fraud_terminal_stage(stream: StreamT) -> None:
        manual = stream.noack()
        async for event in manual.events():
            ok, pending = await guarded(event, _terminal_step, event.message.value, terminals)
            if ok and pending is not None:
                await batcher.add(pending, _acker(manual, event))
            else:
                await manual.ack(event)


def _terminal_step(raw: bytes, terminals: pipeline.StateTable) -> pipeline.PendingScore | None:
    return pipeline.terminal_stage(pipeline.decode_forwarded(raw), terminals)


def _ms(timestamp_seconds: float) -> int:
    return int(timestamp_seconds * 1000)


def _wire_market(
    app: faust.App,
    settings: Settings,
    model: Any,
    partitions: int,
    guarded: Callable[..., Awaitable[tuple[bool, Any]]],
    make_batcher: Callable[[Any, str], MicroBatcher],
) -> None:
    topics = settings.topics
    market = app.topic(topics.market, partitions=partitions, **RAW)
    instruments = app.Table("instruments", partitions=partitions, **RAW_TABLE)
    batcher = make_batcher(model, topics.market)
    app.riskstream_progress.sources.add(market.get_topic_name())  # type: ignore[attr-defined]

    @app.agent(market, name="market-stage")
    async def market_stage(stream: StreamT) -> None:
        manual = stream.noack()
        async for event in manual.events():
            m = event.message
            ok, pending = await guarded(
                event, pipeline.market_stage, m.value, m.key, _ms(m.timestamp), instruments
            )
            if ok:
                await batcher.add(pending, _acker(manual, event))
            else:
                await manual.ack(event)


def _acker(stream: StreamT, event: EventT) -> Callable[[], Awaitable[bool]]:
    async def ack() -> bool:
        return await stream.ack(event)

    return ack
