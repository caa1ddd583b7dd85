"""The Faust application: topics, changelog-backed state tables, agents and timers.

Topology (see riskstream.pipeline for the per-event work):

    transactions ──► fraud_customer_stage ──► score now, or hold until due ──────────────┐
                          │ forwards          ▲ terminal features                         │
    risk.labels ───► label_forwarder          │                                           │
                          │ forwards          │                                           │
                          ▼                   │                                           │
                  <app>-fraud-by-terminal ──► terminal replica (every worker reads all)   │
                    (+ watermarks)                                                        │
    market.indicators ─► market_stage ───────────────────────────────────────────────────┤
    risk.requests ─────► request_stage ──────────────────────────────────────────────────┤
                          micro-batches ─► onnxruntime ─► risk.scores, risk.alerts ◄──────┘
    any bad message ──► risk.dlq (with a stable error code and its original bytes)

Each source topic is consumed a partition batch at a time (riskstream.batch_hook): a handler
runs the per-event steps over the batch, writes state through riskstream.table_writes (one
changelog record per changed key, in the changelog partition of the input partition, so a
restarted or rebalanced worker recovers the state), scores what is ready in one inference call
(riskstream.batching) and sends every output through one outbox (riskstream.outbox); the
batch's offsets are acknowledged once the broker acknowledged all of it. The terminal side is
no table: every worker rebuilds all of it from the history topic (riskstream.terminal_replica),
and a transaction held for the watermarks is acknowledged once its score is delivered.

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
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import StreamT

from riskstream import contracts, pipeline
from riskstream.batch_hook import BatchHandler, ack_when_delivered
from riskstream.batching import BatchScorer, all_of
from riskstream.config import Settings
from riskstream.faust_app import RiskstreamApp, faust_app
from riskstream.features import fraud as fraud_features
from riskstream.features.tabular import schema_from_card
from riskstream.label_join import LabelJoin
from riskstream.model_swap import ModelSwap
from riskstream.outbox import Outbox, Publisher
from riskstream.table_writes import TableWrites
from riskstream.terminal_replica import LIVE_SECONDS, TerminalReplica
from riskstream.watermarks import CAUGHT_UP, UNKNOWN, SourceClocks

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
WINDOW_MODELS = ("fraud", "market")  # fed by windowed state; every other model is tabular


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

    def saw(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self.offsets[key] = max(offset, self.offsets.get(key, -1))


def check_delivery(topic: str, future: Any) -> None:
    """Stop the worker at once when records could not be published (after the client's own
    retries), before any commit can pass the events they came from: a restart reads those
    events again. Faust flushes the producer before every commit."""
    if future.cancelled() or future.exception() is None:
        return
    log.critical(
        "records for %s could not be published (%r); exiting with code %d without "
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
    found.update(getattr(app, "riskstream_internal_topics", None) or {})
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


@dataclasses.dataclass
class Stages:
    """What every batch handler shares (riskstream.batch_hook), passed to the stage wiring
    instead of hung on the Faust app."""

    app: RiskstreamApp
    settings: Settings
    metrics: Any
    progress: Progress
    _publisher: Publisher | None = None
    # What a model swap replaces (riskstream.model_swap): the scorer of each model, and the
    # input schema of each tabular model.
    scorers: dict[str, BatchScorer] = dataclasses.field(default_factory=dict)
    schemas: dict[str, Any] = dataclasses.field(default_factory=dict)

    def outbox(self) -> Outbox:
        if self._publisher is None:  # the producer exists once the app started
            self._publisher = Publisher(self.app.producer._ensure_producer(), check_delivery)
        return Outbox(self._publisher)

    def run_step(
        self, outbox: Outbox, record: Any, step: Callable[..., Any], *args: Any
    ) -> tuple[bool, Any]:
        """Run one event's step; bad input, or a bug, sends the event to the DLQ instead."""
        try:
            return True, step(*args)
        except contracts.ContractError as error:
            self.dead_letter(outbox, record, error)
        except Exception as exc:  # the worker must survive anything one message can cause
            log.exception(
                "unexpected error on %s:%s@%s", record.topic, record.partition, record.offset
            )
            error = contracts.ContractError("internal_error", f"{type(exc).__name__}: {exc}")
            self.dead_letter(outbox, record, error)
        return False, None

    def dead_letter(self, outbox: Outbox, record: Any, error: contracts.ContractError) -> None:
        letter = contracts.dead_letter(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            error=error,
            payload=record.value,
            received_at=datetime.now(UTC),
        )
        outbox.add(self.settings.topics.dlq, record.key, contracts.encode(letter))
        self.metrics.count_events(record.topic, "dead_letter")
        self.metrics.dead_letter(record.topic, error.code)

    async def publish(
        self,
        tp: Any,
        offsets: list[int],
        outbox: Outbox,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Send the batch's records; its offsets are acknowledged once they are delivered."""
        deliveries = await outbox.send()
        ack_when_delivered(self.app.consumer, tp, offsets, deliveries, then)

    def scorer(self, model: Any, source_topic: str) -> BatchScorer:
        topics = self.settings.topics
        scorer = self.scorers[model.name] = BatchScorer(
            model,
            self.metrics,
            source_topic,
            topics.scores,
            topics.alerts,
            max_rows=self.settings.worker.batch_size,
            drift_window=self.settings.worker.drift_window,
            shadow_topic=topics.shadow_scores,
        )
        return scorer


def build_app(
    settings: Settings,
    models: dict[str, Any],
    metrics: Any,
    partitions: dict[str, int],
) -> faust.App:
    """Wire the topology for the models given (`fraud`, `market`, tabular models by name);
    returns the Faust app."""
    topics = settings.topics
    fraud_partitions = partitions.get(topics.transactions, settings.worker.partitions)
    app = faust_app(settings, fraud_partitions)
    progress = Progress()
    app.riskstream_progress = progress  # type: ignore[attr-defined]
    app.batch_handlers = {}
    app.riskstream_internal_topics = {}
    stages = Stages(app, settings, metrics, progress)
    if "fraud" in models:
        _wire_fraud(stages, models["fraud"], partitions)
    if "market" in models:
        market_partitions = partitions.get(topics.market, settings.worker.partitions)
        _wire_market(stages, models["market"], market_partitions)
    tabular = {name: model for name, model in models.items() if name not in WINDOW_MODELS}
    if tabular:
        request_partitions = partitions.get(topics.requests, settings.worker.partitions)
        _wire_requests(stages, tabular, request_partitions)
    _watch_topics(app, settings, progress)
    _watch_models(stages)

    @app.on_partitions_assigned.connect
    async def forget_moved_partitions(sender: faust.App, assigned: Any, **kwargs: Any) -> None:
        progress.assigned = True
        owned = {(tp.topic, tp.partition) for tp in assigned}
        progress.forget([key for key in progress.offsets if key not in owned])
        metrics.retain_partitions((tp.topic, tp.partition) for tp in assigned)

    return app


def _watch_topics(app: faust.App, settings: Settings, progress: Progress) -> None:
    topics = settings.topics
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


def _watch_models(stages: Stages) -> None:
    """New model versions go into service without a restart (riskstream.model_swap)."""
    settings = stages.settings
    if settings.worker.model_watch_seconds <= 0:
        return
    swap = ModelSwap(settings.models_dir, stages.scorers, stages.schemas, stages.metrics)

    @stages.app.timer(interval=settings.worker.model_watch_seconds)
    async def watch_models() -> None:
        try:
            await swap.check()
        except Exception:  # watching must never stop the worker that serves
            log.exception("looking for new model versions failed; the next look follows")


def _consume_in_batches(app: RiskstreamApp, topic: Any, name: str, handler: BatchHandler) -> None:
    """Register `handler` for the topic's partition batches, and an agent that keeps the topic
    subscribed (it receives nothing: riskstream.batch_hook hands the records to `handler`)."""
    assert app.batch_handlers is not None
    app.batch_handlers[topic.get_topic_name()] = handler

    async def subscribed(stream: StreamT) -> None:
        async for _ in stream.events():
            pass

    app.agent(topic, name=name)(subscribed)


def _wire_fraud(stages: Stages, model: Any, partitions: dict[str, int]) -> None:
    """Stage 1 scores; every worker's terminal replica reads the history topic stage 1 writes
    (riskstream.terminal_replica), joined by event-time watermarks (riskstream.watermarks)."""
    app, settings = stages.app, stages.settings
    topics = settings.topics
    n_transactions = partitions.get(topics.transactions, settings.worker.partitions)
    n_labels = partitions.get(topics.labels, settings.worker.partitions)
    transactions = app.topic(topics.transactions, partitions=n_transactions, **RAW)
    labels = app.topic(topics.labels, partitions=n_labels, **RAW)
    history_topic = f"{settings.worker.app_id}-fraud-by-terminal"
    assert app.riskstream_internal_topics is not None
    app.riskstream_internal_topics[history_topic] = n_transactions
    sources = [(topics.transactions, p) for p in range(n_transactions)] + [
        (topics.labels, p) for p in range(n_labels)
    ]
    join = LabelJoin(
        stages.metrics.label_outcome,
        settings.worker.label_window_days * 86_400.0,
        settle_unscored_labels=False,
    )
    replica: TerminalReplica[Held] = TerminalReplica(
        n_transactions, sources, on_label=join.labelled_from
    )
    scorer = stages.scorer(model, topics.transactions)
    fraud = FraudStage(stages, history_topic, n_transactions, replica, scorer, join)
    customers = app.Table("customers", partitions=n_transactions, **RAW_TABLE)
    source_topics = {transactions.get_topic_name(), labels.get_topic_name()}
    stages.progress.sources.update(source_topics)
    _consume_in_batches(
        app, transactions, "fraud-customer-stage", fraud.customer_stage_handler(customers)
    )
    _consume_in_batches(app, labels, "label-forwarder", fraud.label_handler())
    reader = HistoryReader(stages, history_topic, n_transactions, fraud)

    @app.task
    async def read_terminal_history() -> None:
        await reader.run()

    app.riskstream_before_revoke = fraud.finish_read_back

    @app.timer(interval=max(settings.worker.watermark_interval_ms / 1000.0, 0.01))
    async def report_watermarks() -> None:
        await fraud.report_watermarks(source_topics)

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: faust.App, revoked: Any, **kwargs: Any) -> None:
        """Held transactions of a partition that moves are not acked: its new owner reads
        them again from the last commit, with the watermarks that follow them. A source
        partition's clock starts anew with its next reader."""
        fraud.forget(revoked)


# (the source partition, its reading epoch, the record that brought it, the transaction)
Held = tuple[Any, int, Any, pipeline.ForwardedTransaction]
PROCESS = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"  # signs its reports


class FraudStage:
    """Transactions and labels in, forwarded to the history topic with watermarks; each
    transaction scored from the terminal replica as soon as the watermarks allow."""

    def __init__(
        self,
        stages: Stages,
        topic: str,
        partitions: int,
        replica: TerminalReplica[Held],
        scorer: BatchScorer,
        join: LabelJoin,
    ) -> None:
        self.stages = stages
        self.topic = topic  # the terminal-keyed history topic
        self.partitions = partitions
        self.replica = replica
        self.scorer = scorer
        self.join = join
        self.clocks = SourceClocks(refresh_seconds=2.0)
        self.epochs: dict[tuple[str, int], int] = {}  # source partition -> times revoked
        self.sequences: dict[tuple[str, int], int] = {}  # reports sent, per source partition
        self.delay = float(fraud_features.LABEL_DELAY_SECONDS)

    def customer_stage_handler(self, customers: Any) -> BatchHandler:
        stages, metrics = self.stages, self.stages.metrics

        async def customer_stage(tp: Any, records: list[Any]) -> None:
            """Customer state and features, forwarded keyed by terminal; scored now, or held
            until every source passed t - delay."""
            outbox, state = stages.outbox(), TableWrites(customers, tp.partition)
            batch = ScoreBatch(self, outbox)
            times: list[float | None] = []
            epoch = self.epochs.get((tp.topic, tp.partition), 0)
            replayed: list[tuple[pipeline.ForwardedTransaction, Held]] = []
            live_after = time.time() - LIVE_SECONDS
            for record in records:
                ok, forwarded = stages.run_step(
                    outbox,
                    record,
                    pipeline.ingest_transaction,
                    record.value,
                    record.key,
                    record.timestamp,
                    state,
                )
                if ok:
                    self.forward(outbox, forwarded)
                    item = (tp, epoch, record, forwarded)
                    if forwarded.timestamp <= live_after:
                        replayed.append((forwarded, item))
                        batch.held.add(record.offset)
                    elif self.replica.ready(forwarded):
                        batch.score(record, forwarded)
                    else:
                        self.replica.hold(forwarded, item)
                        batch.held.add(record.offset)
                times.append(forwarded.timestamp if ok else None)
            state.send_changes(outbox)
            observe = batch.score_all()
            offsets = [record.offset for record in records]
            acked = [offset for offset in offsets if offset not in batch.held]
            await self._forwarded(tp, offsets, acked, times, outbox, observe)
            if replayed:
                await self._wait_for_read_back(tp, replayed)
            metrics.count_events(tp.topic, "forwarded", sum(t is not None for t in times))
            self._set_held()

        return customer_stage

    def label_handler(self) -> BatchHandler:
        stages, metrics = self.stages, self.stages.metrics

        async def label_forwarder(tp: Any, records: list[Any]) -> None:
            """Labels, validated and forwarded keyed by terminal."""
            outbox = stages.outbox()
            times: list[float | None] = []
            for record in records:
                ok, label = stages.run_step(
                    outbox, record, pipeline.ingest_label, record.value, record.key
                )
                if ok:
                    self.forward(outbox, label)
                times.append(label.label_timestamp - self.delay if ok else None)
            offsets = [record.offset for record in records]
            await self._forwarded(tp, offsets, offsets, times, outbox)
            metrics.count_events(tp.topic, "label", sum(t is not None for t in times))
            # Live labels are rare: say at once that nothing older follows, or every
            # transaction after a label would wait for the next periodic report.
            source = (tp.topic, tp.partition)
            if self.clocks.caught_up(source, stages.app.consumer.highwater(tp)):
                await self.report(source, CAUGHT_UP)

        return label_forwarder

    def forward(self, outbox: Outbox, message: pipeline.Forwarded) -> None:
        key = message.terminal_id.encode()  # type: ignore[union-attr]
        outbox.add(self.topic, key, pipeline.encode_forwarded(message))

    async def _forwarded(
        self,
        tp: Any,
        offsets: list[int],
        acked: list[int],
        times: list[float | None],
        outbox: Outbox,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Publish stage 1's batch, then move the source's clock: a watermark report may only
        follow the forwards it covers (riskstream.watermarks). `acked`: the offsets whose
        outputs are all in the batch (a held transaction's offset waits for its score)."""
        source = (tp.topic, tp.partition)
        if not self.clocks.announced(source):  # before this reader's first forward
            await self.announce(source)
        await self.stages.publish(tp, acked, outbox, then)
        forwarded = [event_time for event_time in times if event_time is not None]
        newest = max(forwarded) if forwarded else None  # the clock keeps the newest anyway
        self.clocks.processed(source, offsets[-1], newest)
        self.stages.progress.saw(tp.topic, tp.partition, offsets[-1])

    async def _wait_for_read_back(
        self, tp: Any, replayed: list[tuple[pipeline.ForwardedTransaction, Held]]
    ) -> None:
        """Old events (a replay): report now, and score each once the replica has read this
        report, and with it every forward before it (riskstream.terminal_replica)."""
        source = (tp.topic, tp.partition)
        value = self.clocks.value(source, self.stages.app.consumer.highwater(tp))
        sequence = await self.report(source, value)
        for transaction, item in replayed:
            self.replica.wait_for_own_report(source, sequence, transaction, item)

    async def finish_read_back(self, timeout: float = 2.0) -> None:
        """Before a revocation's commit: the transactions waiting only for the replica to read
        their forwards back are scored within milliseconds; wait for them (at most `timeout`)
        rather than leave them to the next owner to score again."""
        deadline = time.monotonic() + timeout
        while self.replica.awaiting_read_back and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def release(self) -> None:
        """Score what the replica's newest reports released; each source partition's offsets
        are acknowledged once the scores are delivered."""
        released = self.replica.release()
        if not released:
            return
        outbox = self.stages.outbox()
        batch = ScoreBatch(self, outbox)
        offsets: dict[Any, list[int]] = {}
        for tp, epoch, record, transaction in released:
            if self.epochs.get((tp.topic, tp.partition), 0) != epoch:
                continue  # the partition moved since: its next reader scores it
            batch.score(record, transaction)
            offsets.setdefault(tp, []).append(record.offset)
        observe = batch.score_all()
        deliveries = await outbox.send()
        for tp, done in offsets.items():
            ack_when_delivered(self.stages.app.consumer, tp, done, deliveries, observe)
            observe = None
        self._set_held()

    def _set_held(self) -> None:
        self.stages.metrics.set_held(len(self.replica))

    def _reader(self, source: tuple[str, int]) -> str:
        """This reading of the source partition, as its reports name it."""
        return f"{PROCESS}#{self.epochs.get(source, 0)}"

    async def announce(self, source: tuple[str, int]) -> None:
        """Before this reader's first forward: its predecessor's reports no longer count."""
        self.replica.own(source, self._reader(source))
        await self.report(source, UNKNOWN)

    async def report(self, source: tuple[str, int], value: float) -> int:
        """To every history partition, after the forwards it covers (same producer); returns
        the report's sequence number."""
        sequence = self.sequences[source] = self.sequences.get(source, 0) + 1
        report = pipeline.ForwardedWatermark(*source, value, self._reader(source), sequence)
        mark = pipeline.encode_forwarded(report)
        producer = self.stages.app.producer
        for partition in range(self.partitions):  # a lost report is harmless: the next wins
            delivery = await producer.send(self.topic, None, mark, partition, None, None)
            delivery.add_done_callback(_note_lost_report)
        self.clocks.sent(source, value, time.monotonic())
        return sequence

    async def report_watermarks(self, source_topics: set[str]) -> None:
        app = self.stages.app
        if app.rebalancing:
            return
        owned = [tp for tp in app.consumer.assignment() if tp.topic in source_topics]
        self.clocks.retain((tp.topic, tp.partition) for tp in owned)
        for tp in owned:
            source = (tp.topic, tp.partition)
            if self.clocks.needs_start(source):
                self.clocks.started_at(source, await _start_offset(app, tp))
            value = self.clocks.value(source, app.consumer.highwater(tp))
            if not self.clocks.announced(source):
                await self.announce(source)
            if self.clocks.should_send(source, value, time.monotonic()):
                await self.report(source, value)

    def forget(self, revoked: Any) -> None:
        sources = [(tp.topic, tp.partition) for tp in revoked]
        self.clocks.forget(sources)
        self.replica.disown(sources)
        for source in sources:
            self.epochs[source] = self.epochs.get(source, 0) + 1


class ScoreBatch:
    """Transactions scored together: one inference call, their alerts joined to labels."""

    def __init__(self, fraud: FraudStage, outbox: Outbox) -> None:
        self.fraud, self.outbox = fraud, outbox
        self.ready: list[pipeline.PendingScore] = []
        self.times: dict[str, float] = {}  # event time of each transaction in `ready`
        self.held: set[int] = set()  # offsets of this batch held for the watermarks

    def score(self, record: Any, transaction: pipeline.ForwardedTransaction) -> None:
        ok, pending = self.fraud.stages.run_step(
            self.outbox, record, self.fraud.replica.score, transaction
        )
        if ok:
            self.ready.append(pending)
            self.times[pending.event_id] = transaction.timestamp

    def score_all(self) -> Callable[[], None] | None:
        if not self.ready:
            return None
        alerted: list[Any] = []
        observe = self.fraud.scorer.score_into(self.ready, self.outbox, alerted)
        self._join_alerts(alerted)
        return observe

    def _join_alerts(self, alerted: list[Any]) -> None:
        """The batch's scores meet their labels (riskstream.label_join); the batch's newest
        event time settles what waited longer than the label window."""
        join, model = self.fraud.join, self.fraud.scorer.scorer
        alerts = {record.event_id for record in alerted}
        for event_id, event_time in self.times.items():
            join.scored(event_id, event_time, model.name, model.version, event_id in alerts)
        join.scored_up_to(max(self.times.values()), model.name, model.version)
        self.fraud.stages.metrics.set_awaiting_label(model.name, join.awaiting)


class HistoryReader:
    """Reads the whole history topic into the terminal replica, outside the consumer group,
    and releases held transactions as the watermarks move (riskstream.terminal_replica)."""

    def __init__(self, stages: Stages, topic: str, partitions: int, fraud: FraudStage) -> None:
        self.stages, self.topic, self.partitions, self.fraud = stages, topic, partitions, fraud
        self.positions: dict[Any, int] = {}  # where to go on after a reconnect

    async def run(self) -> None:
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker went away: start a new consumer where this one was
                log.exception("reading %s failed; reading on in a second", self.topic)
                await asyncio.sleep(1.0)

    async def _read(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from riskstream.fetch_wait import AdaptiveFetchWait

        settings = self.stages.settings
        consumer = AIOKafkaConsumer(
            **settings.kafka.aiokafka_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=settings.worker.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        try:
            AdaptiveFetchWait(
                settings.worker.fetch_max_wait_ms, settings.worker.fetch_wait_ceiling_ms
            ).install(consumer)
            partitions = [TopicPartition(self.topic, q) for q in range(self.partitions)]
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, self.positions.get(tp, 0))
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
                self._apply(batches)
                await self.fraud.release()
        finally:
            await consumer.stop()

    def _apply(self, batches: dict[Any, list[Any]]) -> None:
        replica = self.fraud.replica
        for tp, records in batches.items():
            for record in records:
                replica.apply(tp.partition, record.value)
            self.positions[tp] = records[-1].offset + 1


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


def _wire_market(stages: Stages, model: Any, partitions: int) -> None:
    app, topics = stages.app, stages.settings.topics
    market = app.topic(topics.market, partitions=partitions, **RAW)
    instruments = app.Table("instruments", partitions=partitions, **RAW_TABLE)
    scorer = stages.scorer(model, topics.market)
    stages.progress.sources.add(market.get_topic_name())

    async def market_stage(tp: Any, records: list[Any]) -> None:
        """Instrument state and features, scored a batch at a time."""
        outbox, state = stages.outbox(), TableWrites(instruments, tp.partition)
        ready = []
        for record in records:
            ok, pending = stages.run_step(
                outbox,
                record,
                pipeline.market_stage,
                record.value,
                record.key,
                record.timestamp,
                state,
            )
            if ok:
                ready.append(pending)
        state.send_changes(outbox)
        observe = scorer.score_into(ready, outbox) if ready else None
        offsets = [record.offset for record in records]
        stages.progress.saw(tp.topic, tp.partition, offsets[-1])
        await stages.publish(tp, offsets, outbox, observe)

    _consume_in_batches(app, market, "market-stage", market_stage)


def _wire_requests(stages: Stages, models: dict[str, Any], partitions: int) -> None:
    """Tabular models: each request is scored by the model it names, a batch per model."""
    app, topics = stages.app, stages.settings.topics
    requests = app.topic(topics.requests, partitions=partitions, **RAW)
    schemas = stages.schemas  # a model swap replaces a model's schema here
    schemas.update({name: schema_from_card(model.card) for name, model in models.items()})
    scorers = {name: stages.scorer(model, topics.requests) for name, model in models.items()}
    stages.progress.sources.add(requests.get_topic_name())

    async def request_stage(tp: Any, records: list[Any]) -> None:
        """Validate each request against its model's input schema; score per model."""
        outbox = stages.outbox()
        ready: dict[str, list[pipeline.PendingScore]] = {}
        for record in records:
            ok, pending = stages.run_step(
                outbox, record, pipeline.request_stage, record.value, record.timestamp, schemas
            )
            if ok:
                ready.setdefault(pending.model, []).append(pending)
        observers = [scorers[name].score_into(items, outbox) for name, items in ready.items()]
        offsets = [record.offset for record in records]
        stages.progress.saw(tp.topic, tp.partition, offsets[-1])
        await stages.publish(tp, offsets, outbox, all_of(observers) if observers else None)

    _consume_in_batches(app, requests, "request-stage", request_stage)
