"""The Faust application: topics, changelog-backed state tables, agents and timers.

Topology (see riskstream.pipeline for the per-event work):

    transactions ─► fraud_customer_stage ─► <app>-fraud-by-terminal ─► fraud_terminal_stage ─┐
    risk.labels  ─► label_forwarder ─────────────────┘  (+ watermarks)   (holds until due)   │
    market.indicators ─► market_stage ───────────────────────────────────────────────────────┤
                          micro-batches ─► onnxruntime ─► risk.scores, risk.alerts ◄──────────┘
    any bad message ──► risk.dlq (with a stable error code and its original bytes)

Every table write happens while Faust iterates the event that caused it, so the changelog
partition is the event's partition and a restarted or rebalanced worker recovers the state.

A broker that comes back without the worker's topics (a memory-only broker restarted, topics
deleted) has lost the changelogs and committed offsets the worker relies on, and some brokers
(Tansu) then accept writes to the vanished topics without listing them, so consumers never see
those records. The worker cannot repair that in place: it exits with EXIT_TOPICS_LOST and a
restart recreates the topics, first clearing the records the broker kept for them
(riskstream.kafka.recreate_if_left_over), and starts from what the broker still has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import EventT, StreamT

from riskstream import contracts, pipeline
from riskstream.batching import MicroBatcher
from riskstream.config import Settings
from riskstream.faust_app import ChangelogSend, faust_app
from riskstream.features import fraud as fraud_features
from riskstream.watermarks import CAUGHT_UP, HoldQueue, SourceClocks

log = logging.getLogger("riskstream.worker")

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
# Tables take their serializers from the app (raw): state is packed by the feature module.
RAW_TABLE = {"key_type": bytes, "value_type": bytes}
EXIT_TOPICS_LOST = 4
EXIT_PUBLISH_FAILED = 5
TOPIC_CHECK_SECONDS = 5.0
BROKER_TIMEOUT_S = 10.0
TOPIC_MISSES_BEFORE_EXIT = 2  # a topic must be missing in two checks in a row
STALL_WARNING_SECONDS = 30.0


@dataclasses.dataclass
class Progress:
    """Last offset processed per (topic, partition): consumer lag = high water - this - 1."""

    offsets: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    sources: set[str] = dataclasses.field(default_factory=set)
    last_broker_contact: float = 0.0
    assigned: bool = False  # topics are only checked once the group gave us partitions
    topic_misses: int = 0
    stuck_since: dict[tuple[str, int], tuple[int, float]] = dataclasses.field(default_factory=dict)
    # Partitions with work behind them that have not moved, as of the last lag report:
    # (topic, partition) -> (lag, seconds without progress). /healthz reads it.
    stalls: dict[tuple[str, int], tuple[int, float]] = dataclasses.field(default_factory=dict)

    def stalled(self, key: tuple[str, int], lag: int, now: float, done: int | None = None) -> float:
        """Seconds a partition with work behind it has not moved (0 when it moves or is done).

        `done` is the last offset processed, by default the last one this worker handed on.
        """
        done = self.offsets.get(key, -1) if done is None else done
        before = self.stuck_since.get(key)
        if lag <= 0 or before is None or before[0] != done:
            self.stuck_since[key] = (done, now)
            self.stalls.pop(key, None)
            return 0.0
        seconds = now - before[1]
        self.stalls[key] = (lag, seconds)
        return seconds

    def restart_stall_clocks(self, topics: Any) -> None:
        """Forget how long partitions of `topics` stood still (they are not being read)."""
        for key in [key for key in self.stuck_since if key[0] in topics]:
            self.stuck_since.pop(key, None)
            self.stalls.pop(key, None)

    def longest_stalls(self, at_least: float) -> list[dict[str, Any]]:
        """The partitions stalled for `at_least` seconds, longest first, for /healthz."""
        found = [
            {"topic": topic, "partition": partition, "lag": lag, "seconds": round(seconds)}
            for (topic, partition), (lag, seconds) in self.stalls.items()
            if seconds >= at_least
        ]
        return sorted(found, key=lambda stall: -stall["seconds"])

    def forget(self, keys: Any) -> None:
        for key in keys:
            self.offsets.pop(key, None)
            self.stuck_since.pop(key, None)
            self.stalls.pop(key, None)

    def saw(self, event: EventT) -> None:
        message = event.message
        key = (message.topic, message.partition)
        self.offsets[key] = max(message.offset, self.offsets.get(key, -1))


async def send_raw(
    app: faust.App, topic: str, key: bytes | None, value: bytes, partition: int | None = None
) -> Awaitable[Any]:
    """Produce through Faust's own transport producer, skipping its per-message channel layers.

    Faust flushes this producer before every offset commit, so whatever an agent sent before
    acknowledging its input is delivered before that input's offset is committed — or failed:
    a failed delivery (after the client's own retries) stops the worker at once, before any
    commit can pass the event it came from, and a restart reads those events again.
    """
    delivery = await app.producer.send(topic, key, value, partition, None, None)
    delivery.add_done_callback(lambda future: _check_delivery(app, topic, future))
    return delivery


def changelog_sender(app: faust.App) -> ChangelogSend:
    """How riskstream's tables send their changelog records (RiskstreamTable)."""

    async def send(topic: str, key: Any, value: Any, partition: int | None) -> Awaitable[Any]:
        return await send_raw(app, topic, key, value, partition)

    return send


def _check_delivery(app: faust.App, topic: str, future: Any) -> None:
    if future.cancelled() or future.exception() is None:
        return
    log.critical(
        "a record for %s could not be published (%r); exiting with code %d without "
        "committing: a restart reads the events since the last commit again",
        topic,
        future.exception(),
        EXIT_PUBLISH_FAILED,
    )
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_PUBLISH_FAILED)  # a graceful stop would commit what the agents acked


def _note_lost_report(future: Any) -> None:
    """Retrieve a watermark report's failure, so asyncio does not log it as never retrieved."""
    if not future.cancelled() and future.exception() is not None:
        log.warning(
            "a watermark report was not delivered (%r); the next one replaces it",
            future.exception(),
        )


async def report_progress(app: faust.App, settings: Settings, metrics: Any) -> None:
    """Every few seconds: lag per source partition, stalls, broker contact, health metrics.

    Run by the worker's own supervision timer (riskstream.worker), not by a Faust timer: Faust
    starts its timers only once the first table recovery is over, and a recovery that stalls
    must be seen too. While tables recover, the source partitions wait paused by design, so
    the changelog partitions' progress is judged instead.
    """
    progress: Progress = app.riskstream_progress
    consumer = app.consumer
    if consumer is None:
        return
    recovering = bool(app.in_recovery)
    watched = app.tables.changelog_topics if recovering else progress.sources
    try:
        assignment = [tp for tp in consumer.assignment() if tp.topic in watched]
    except Exception:  # the consumer has not started yet: nothing to judge
        return
    try:  # bounded: a broker that hangs (frozen, partitioned) must show up in the log too
        high = (
            await asyncio.wait_for(consumer.highwaters(*assignment), BROKER_TIMEOUT_S)
            if assignment
            else {}
        )
    except Exception as exc:
        log.warning("cannot reach the broker for high water marks: %s: %s", type(exc).__name__, exc)
        metrics.set_healthy(False)
        return
    now = progress.last_broker_contact = time.monotonic()
    stall_after = settings.worker.stall_seconds
    # Only what is read now can stall: sources during recovery wait, changelogs after it rest.
    progress.restart_stall_clocks(progress.sources if recovering else app.tables.changelog_topics)
    if recovering:
        for key, lag, done in _recovery_positions(app):
            _check_stall(app, progress, key, lag, now, stall_after, done)
    else:
        for tp, listed in high.items():
            # The embedded broker lists a batch's base offset + 1 as the end; fetch responses
            # (what the consumer saw last) carry the true high-water mark.
            highwater = max(listed, _fetched_highwater(app, tp))
            committed = consumer._committed_offset.get(tp)  # Faust has no accessor
            done = max(progress.offsets.get((tp.topic, tp.partition), -1), (committed or 0) - 1)
            lag = max(0, highwater - done - 1)
            metrics.set_lag(tp.topic, tp.partition, lag)
            _check_stall(app, progress, (tp.topic, tp.partition), lag, now, stall_after)
    stalls = progress.longest_stalls(stall_after)
    metrics.set_stalled(len(stalls))
    metrics.set_healthy(not stalls)


def _check_stall(
    app: faust.App,
    progress: Progress,
    key: tuple[str, int],
    lag: int,
    now: float,
    warn_after: float,
    done: int | None = None,
) -> None:
    """Track a partition's progress; log it once it has had work and not moved for a while
    (STALL_WARNING_SECONDS, or sooner when the health check calls it stalled sooner)."""
    stalled = progress.stalled(key, lag, now, done)
    if stalled >= min(STALL_WARNING_SECONDS, warn_after):
        log.warning(
            "%s:%d has %d records to read but has not moved for %.0f s (%s)",
            key[0],
            key[1],
            lag,
            stalled,
            _flow_state(app, key),
        )


def _recovery_positions(app: faust.App) -> list[tuple[tuple[str, int], int, int]]:
    """(changelog partition, records left, offset reached) for each table partition that
    Faust's recovery still reads."""
    recovery = app.tables.recovery
    positions = []
    for tp, left in recovery.active_remaining().items():
        offset = recovery.active_offsets.get(tp)
        if left > 0 and offset is not None:
            positions.append(((tp.topic, tp.partition), int(left), int(offset)))
    return positions


def _flow_state(app: faust.App, key: tuple[str, int]) -> str:
    """What Faust's consumer thinks of a partition, for a stall warning."""
    from faust.types import TP

    tp = TP(*key)
    consumer = app.consumer
    client = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    client_paused = tp in client.paused() if client is not None else "?"
    return (
        f"rebalancing={app.rebalancing} in_recovery={app.in_recovery} "
        f"flow_active={consumer.flow_active} "
        f"active={tp in (consumer._active_partitions or set())} "
        f"paused={tp in consumer._paused_partitions} "
        f"buffered={tp in consumer._buffered_partitions} client_paused={client_paused}"
    )


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class TopicWatch:
    """Which wanted topics the broker no longer lists, over one admin connection kept open.

    Lists every topic instead of describing the wanted ones: a metadata request that names a
    topic creates it on brokers that auto-create topics (Tansu, Kafka's default), which would
    hide the loss behind an empty topic with the broker's default partition count. One
    connection serves every check (reopened after a failure) instead of a new client, with its
    bootstrap and version handshake, every few seconds.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._admin: Any = None

    async def missing(self, wanted: set[str]) -> set[str] | None:
        """The wanted topics not listed; None when the broker does not answer."""
        try:
            if self._admin is None:
                self._admin = await self._open()
            listed = set(await asyncio.wait_for(self._admin.list_topics(), 5.0))
        except Exception as exc:
            log.debug("cannot list topics: %s", exc)
            await self.close()
            return None
        return wanted - listed

    async def _open(self) -> Any:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            **self._settings.kafka.aiokafka_kwargs(), request_timeout_ms=5000
        )
        try:
            await asyncio.wait_for(admin.start(), 5.0)
        except BaseException:
            await admin.close()
            raise
        return admin

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()


def internal_topics(app: faust.App) -> dict[str, int]:
    """Topics only this app writes (table changelogs, the terminal hop), with partition counts."""
    default = app.conf.topic_partitions
    found = {
        table.changelog_topic.get_topic_name(): table.partitions or default
        for table in app.tables.values()
    }
    for agent in app.agents.values():
        channel = agent.channel
        if getattr(channel, "internal", False):
            found.update({name: channel.partitions or default for name in channel.topics})
    return found


def exit_topics_lost(settings: Settings, missing: set[str]) -> None:
    """Exit at once: the outputs of anything processed from here on could be unreadable."""
    log.critical(
        "the broker at %s no longer has topics %s: it lost its data (a memory-only broker "
        "restarted, or the topics were deleted). Exiting with code %d: restart the worker to "
        "recreate the topics; the windowed state those topics held is gone.",
        settings.kafka.bootstrap_servers,
        sorted(missing),
        EXIT_TOPICS_LOST,
    )
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_TOPICS_LOST)  # a graceful stop would retry commits to the lost topics


def build_app(
    settings: Settings,
    models: dict[str, Any],
    metrics: Any,
    partitions: dict[str, int],
) -> faust.App:
    """Wire the topology for the models given (`fraud`, `market`); returns the Faust app."""
    topics = settings.topics
    fraud_partitions = partitions.get(topics.transactions, settings.worker.partitions)
    app = faust_app(settings, fraud_partitions)
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
        _wire_fraud(app, settings, models["fraud"], metrics, partitions, guarded, make_batcher)
    if "market" in models:
        market_partitions = partitions.get(topics.market, settings.worker.partitions)
        _wire_market(app, settings, models["market"], market_partitions, guarded, make_batcher)

    @app.timer(interval=max(settings.worker.batch_wait_ms / 2000.0, 0.005))
    async def flush_due_batches() -> None:
        for batcher in batchers:
            await batcher.flush_if_due()

    topic_watch = TopicWatch(settings)

    @app.timer(interval=TOPIC_CHECK_SECONDS)
    async def watch_topics() -> None:
        if not progress.assigned:
            return
        wanted = {
            *progress.sources,
            *app.tables.changelog_topics,
            topics.scores,
            topics.alerts,
            topics.dlq,
        }
        missing = await topic_watch.missing(wanted)
        if missing is None:  # the broker does not answer: report_progress marks it unhealthy
            return
        progress.topic_misses = progress.topic_misses + 1 if missing else 0
        if progress.topic_misses >= TOPIC_MISSES_BEFORE_EXIT:
            exit_topics_lost(settings, missing)
        if missing:
            log.error("the broker does not list topics %s; checking again", sorted(missing))

    @app.on_partitions_revoked.connect
    async def flush_before_revoke(sender: faust.App, revoked: Any, **kwargs: Any) -> None:
        """Score what is pending before the partitions move, so little is scored twice."""
        for batcher in batchers:
            await batcher.flush()

    @app.on_partitions_assigned.connect
    async def forget_moved_partitions(sender: faust.App, assigned: Any, **kwargs: Any) -> None:
        progress.assigned = True
        owned = {(tp.topic, tp.partition) for tp in assigned}
        progress.forget([key for key in progress.offsets if key not in owned])
        metrics.retain_partitions((tp.topic, tp.partition) for tp in assigned)

    return app


def _wire_fraud(
    app: faust.App,
    settings: Settings,
    model: Any,
    metrics: Any,
    partitions: dict[str, int],
    guarded: Callable[..., Awaitable[tuple[bool, Any]]],
    make_batcher: Callable[[Any, str], MicroBatcher],
) -> None:
    """Two stages joined by event-time watermarks (see riskstream.watermarks)."""
    topics = settings.topics
    n_transactions = partitions.get(topics.transactions, settings.worker.partitions)
    n_labels = partitions.get(topics.labels, settings.worker.partitions)
    transactions = app.topic(topics.transactions, partitions=n_transactions, **RAW)
    labels = app.topic(topics.labels, partitions=n_labels, **RAW)
    by_terminal = app.topic(
        f"{settings.worker.app_id}-fraud-by-terminal",
        partitions=n_transactions,
        internal=True,
        **RAW,
    )
    by_terminal_name = by_terminal.get_topic_name()
    customers = app.Table("customers", partitions=n_transactions, **RAW_TABLE)
    terminals = app.Table("terminals", partitions=n_transactions, **RAW_TABLE)
    batcher = make_batcher(model, topics.transactions)
    changelog = changelog_sender(app)
    source_topics = {transactions.get_topic_name(), labels.get_topic_name()}
    app.riskstream_progress.sources.update({*source_topics, by_terminal_name})  # type: ignore[attr-defined]
    sources = [(topics.transactions, p) for p in range(n_transactions)] + [
        (topics.labels, p) for p in range(n_labels)
    ]
    clocks = SourceClocks(refresh_seconds=2.0)
    queues: dict[int, HoldQueue[tuple[EventT, pipeline.ForwardedTransaction]]] = {}
    delay = float(fraud_features.LABEL_DELAY_SECONDS)

    async def forward(message: pipeline.Forwarded) -> None:
        await send_raw(
            app, by_terminal_name, message.terminal_id.encode(), pipeline.encode_forwarded(message)
        )

    async def report(source: tuple[str, int], value: float) -> None:
        """To every stage-2 partition, after the forwards it covers (same producer)."""
        mark = pipeline.encode_forwarded(pipeline.ForwardedWatermark(*source, value))
        for partition in range(n_transactions):  # a lost report is harmless: the next one wins
            delivery = await app.producer.send(by_terminal_name, None, mark, partition, None, None)
            delivery.add_done_callback(_note_lost_report)
        clocks.sent(source, value, time.monotonic())

    @app.agent(transactions, name="fraud-customer-stage")
    async def fraud_customer_stage(stream: StreamT) -> None:
        async for event in stream.events():
            m = event.message
            ok, forwarded = await guarded(
                event, pipeline.ingest_transaction, m.value, m.key, _ms(m.timestamp), customers
            )
            await customers.send_changelog_writes(changelog)
            if ok:
                await forward(forwarded)
                metrics.count_events(m.topic, "forwarded")
            clocks.processed((m.topic, m.partition), m.offset, forwarded.timestamp if ok else None)

    @app.agent(labels, name="label-forwarder")
    async def label_forwarder(stream: StreamT) -> None:
        async for event in stream.events():
            m = event.message
            source = (m.topic, m.partition)
            ok, label = await guarded(event, pipeline.ingest_label, m.value, m.key)
            if ok:
                await forward(label)
                metrics.count_events(m.topic, "label")
            clocks.processed(source, m.offset, label.label_timestamp - delay if ok else None)
            # Live labels are rare: say at once that nothing older follows, or every
            # transaction after a label would wait for the next periodic report.
            if clocks.caught_up(source, app.consumer.highwater(event.message.tp)):
                await report(source, CAUGHT_UP)

    async def score_transaction(
        stream: StreamT, event: EventT, transaction: pipeline.ForwardedTransaction
    ) -> None:
        ok, pending = await guarded(event, pipeline.terminal_stage, transaction, terminals)
        await terminals.send_changelog_writes(changelog)
        if ok and pending is not None:
            await batcher.add(pending, _acker(stream, event))
        else:
            await stream.ack(event)

    async def score_released(stream: StreamT, queue: HoldQueue[Any]) -> None:
        for held_event, transaction in queue.release():
            await score_transaction(stream, held_event, transaction)
        metrics.set_held(sum(len(q) for q in queues.values()))

    @app.agent(by_terminal, name="fraud-terminal-stage")
    async def fraud_terminal_stage(stream: StreamT) -> None:
        manual = stream.noack()
        async for event in manual.events():
            partition = event.message.partition
            queue = queues.get(partition)
            if queue is None:
                queue = queues[partition] = HoldQueue(sources, delay)
            ok, message = await guarded(event, pipeline.decode_forwarded, event.message.value)
            if ok and isinstance(message, pipeline.ForwardedTransaction):
                late = message.too_late
                if queue.ready(message.timestamp, message.terminal_id if late else None):
                    await score_transaction(manual, event, message)
                else:
                    queue.hold(
                        message.timestamp,
                        (event, message),
                        message.terminal_id,
                        behind_group=late,
                    )
                    metrics.set_held(sum(len(q) for q in queues.values()))
                continue
            if ok and isinstance(message, pipeline.ForwardedWatermark):
                queue.mark((message.topic, message.partition), message.time)
                await score_released(manual, queue)
            elif ok:
                await guarded(event, pipeline.terminal_stage, message, terminals)
                await terminals.send_changelog_writes(changelog)
            await manual.ack(event)

    @app.timer(interval=max(settings.worker.watermark_interval_ms / 1000.0, 0.01))
    async def report_watermarks() -> None:
        if app.rebalancing:
            return
        owned = [tp for tp in app.consumer.assignment() if tp.topic in source_topics]
        clocks.retain((tp.topic, tp.partition) for tp in owned)
        for tp in owned:
            source = (tp.topic, tp.partition)
            if clocks.needs_start(source):
                clocks.started_at(source, await _start_offset(app, tp))
            value = clocks.value(source, app.consumer.highwater(tp))
            if clocks.should_send(source, value, time.monotonic()):
                await report(source, value)

    @app.on_partitions_revoked.connect
    async def drop_held(sender: faust.App, revoked: Any, **kwargs: Any) -> None:
        """Held transactions of a partition that moves are not acked: its new owner reads
        them again from the last commit, with the watermarks that follow them."""
        for tp in revoked:
            if tp.topic == by_terminal_name:
                queues.pop(tp.partition, None)
        metrics.set_held(sum(len(q) for q in queues.values()))


async def _start_offset(app: faust.App, tp: Any) -> int:
    """Where this worker began reading a partition: its committed offset, else the earliest."""
    committed = app.consumer._committed_offset.get(tp)  # Faust has no public accessor
    if committed is not None:
        return int(committed)
    earliest = await app.consumer.earliest_offsets(tp)
    return int(earliest.get(tp, 0) or 0)


def _fetched_highwater(app: faust.App, tp: Any) -> int:
    """The high-water mark of the consumer's last fetch of tp (0: none yet, or not assigned
    any more: a rebalance can run between listing and this call)."""
    try:
        return int(app.consumer.highwater(tp) or 0)
    except Exception:  # aiokafka asserts the partition is assigned
        return 0


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
    changelog = changelog_sender(app)
    app.riskstream_progress.sources.add(market.get_topic_name())  # type: ignore[attr-defined]

    @app.agent(market, name="market-stage")
    async def market_stage(stream: StreamT) -> None:
        manual = stream.noack()
        async for event in manual.events():
            m = event.message
            ok, pending = await guarded(
                event, pipeline.market_stage, m.value, m.key, _ms(m.timestamp), instruments
            )
            await instruments.send_changelog_writes(changelog)
            if ok:
                await batcher.add(pending, _acker(manual, event))
            else:
                await manual.ack(event)


def _acker(stream: StreamT, event: EventT) -> Callable[[], Awaitable[bool]]:
    async def ack() -> bool:
        return await stream.ack(event)

    return ack
