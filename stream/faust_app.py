"""The Faust application object with riskstream's settings, and two fixes to Faust's consumer.

Offsets to commit. Faust commits, per partition, the first run of consecutive acknowledged
offsets, but its check that the run starts at the committed offset is off by one (it lets a
run start one past it) and is skipped while nothing was committed yet. Agents that acknowledge
in order never notice; riskstream's fraud stage holds transactions unacknowledged while it
acknowledges later messages (riskstream.terminal_replica), and with Faust's rule a crash or a
rebalance then skipped held transactions: they were never scored (seen in the handbook replay
with a second worker joining: 2,077 transactions lost). `_Consumer._new_offset` commits only a
run that starts exactly at the committed offset (or, before any commit, with no unacknowledged
message below it) — the at-least-once rule.

Gaps. Faust records a "gap" when a delivered offset jumps past the last one it read, and its
own rule counts gapped offsets as done (for compacted topics and transaction markers). Around
rebalances it recorded gaps over offsets that exist but were not delivered again after the
partition came back (seen: by-terminal offsets 6,662..6,984 in the scale test), and counting
those as done can commit past transactions nobody scored. `_new_offset` never counts a gap:
a commit waits until every offset in its run was acknowledged. On a topic with real gaps
(compaction, transactional producers) commits then wait for the next rebalance, which reads
again from the last commit: more re-processing, never a loss.

Acknowledgements after a revocation. Faust forgets a revoked partition's committed offset and
acknowledgements, but acknowledgements arriving afterwards (a micro-batch scored while the
partitions move) were recorded again, with no committed offset to check them against and the
held transactions of that partition already dropped: the next commit jumped past them (the
handbook replay with a second worker joining lost 13,309 transactions, committed but never
scored). `_Consumer` ignores acknowledgements and commits for partitions it does not own and
starts each assignment with clean acknowledgement bookkeeping.

Re-delivery after a seek. Faust drops a fetched message whose offset is below the last one
it handed on for that partition ("read offset"), to hide the repeats a seek back to the
committed offset causes. But at the end of table recovery it resumes the stream partitions
before seeking them: a fetch made in between delivers messages, the seek resets the read
offset, and records fetched before the seek then move it far ahead again; the seek's own
re-fetch from the committed offset is dropped up to there. Whatever of the first delivery was
not processed (seen: a SIGKILL test where 137 transactions forwarded just before the kill were
never scored by the next three worker processes, the group's commit stuck before them) was
then lost until the next restart. riskstream's drain loop (riskstream.batch_hook) never
drops on the read offset: every fetched message is handed on, so a seek can only cause
repeats, which riskstream's idempotent steps and alert ids absorb. And records of a
partition sought after they were fetched are not handed on at all: out of order behind the
seek's re-fetch they put a customer's later transaction before earlier ones (seen: a score
0.059 off in a SIGKILL run); the partition is read again from its committed offset instead.

Fetch wait. faust-streaming 0.15 creates its aiokafka consumer with `fetch_max_wait_ms=1500`
written into the driver (faust/transport/drivers/aiokafka.py), not taken from a setting. A
broker may hold a fetch that long before answering even when records arrived meanwhile (the
embedded Tansu broker does), and a fraud score takes two fetches (transactions, then the
terminal topic), so that constant alone put seconds into the event-to-score latency.
`RiskstreamApp` builds its consumer through a driver subclass that only replaces that value
(`RISKSTREAM_FETCH_MAX_WAIT_MS`), and lets it grow while the broker answers fetches without the
records it holds (riskstream.fetch_wait: the embedded broker needs more than 10 ms to find a
position in a partition of many batches).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiokafka
import aiokafka.errors
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from riskstream.batch_hook import BatchDrain, BatchHandler
from riskstream.commit_on_revoke import CommitOnRevoke
from riskstream.config import Settings
from riskstream.fetch_wait import DEFAULT_CEILING_MS, AdaptiveFetchWait
from riskstream.kafka import faust_credentials, fetched_highwaters

_log = logging.getLogger("riskstream.worker")

# The releases the consumer overrides here and in riskstream.batch_hook and riskstream.fetch_wait
# were written against and tested with (they reach into private names of both); pyproject.toml
# pins the same ranges.
TESTED_VERSIONS = {"faust-streaming": ("0.15.",), "aiokafka": ("0.14.",)}


def untested_versions() -> list[str]:
    """The installed Faust/aiokafka releases the overrides were not tested with, as
    "name version (tested: 0.15.x)"; empty when all are tested."""
    from importlib.metadata import version

    found = []
    for name, prefixes in TESTED_VERSIONS.items():
        installed = version(name)
        if not installed.startswith(prefixes):
            tested = ", ".join(f"{prefix}x" for prefix in prefixes)
            found.append(f"{name} {installed} (tested: {tested})")
    return found


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    _probe: aiokafka.AIOKafkaConsumer | None = None
    _probe_lock: asyncio.Lock | None = None
    fetch_wait: AdaptiveFetchWait | None = None

    async def on_start(self) -> None:
        await super().on_start()
        wait_ms = getattr(self.app, "riskstream_fetch_max_wait_ms", None)
        if wait_ms is not None:  # see riskstream.fetch_wait: the embedded broker needs it
            ceiling_ms = getattr(self.app, "riskstream_fetch_wait_ceiling_ms", None)
            self.fetch_wait = AdaptiveFetchWait(wait_ms, ceiling_ms or DEFAULT_CEILING_MS).install(
                self._consumer
            )

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "riskstream_fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # read by consumer.start() (its Fetcher)
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
        """End offsets as the broker lists them, raised to what a fetch reports (see the
        module notes: the embedded broker lists the last batch's base offset + 1)."""
        listed = dict(await super()._highwaters(partitions))
        kwargs = getattr(self.app, "riskstream_probe_kwargs", None)
        # Only changelogs: a fetch names its topics, and a broker that auto-creates topics
        # would recreate lost source topics and hide their loss (riskstream.app).
        changelogs = {tp: end for tp, end in listed.items() if tp.topic.endswith("-changelog")}
        if kwargs is None or not changelogs:
            return listed
        if self._probe_lock is None:
            self._probe_lock = asyncio.Lock()  # recovery and the lag report may ask at once
        async with self._probe_lock:
            if self._probe is None:
                self._probe = aiokafka.AIOKafkaConsumer(
                    **kwargs, enable_auto_commit=False, max_partition_fetch_bytes=1
                )
                await self._probe.start()
            fetched = await fetched_highwaters(self._probe, changelogs)
        return {tp: max(end, fetched.get(tp, end)) for tp, end in listed.items()}

    async def on_thread_stop(self) -> None:
        if self._probe is not None:
            await self._probe.stop()
        await super().on_thread_stop()


async def _seek_back_to_committed(client: aiokafka.AIOKafkaConsumer, partitions: set[Any]) -> None:
    """To the committed offset, or the beginning when nothing was committed yet (aiokafka's
    own seek_to_committed leaves such a partition where it is)."""
    for tp in partitions:
        partition = aiokafka.TopicPartition(tp.topic, tp.partition)
        try:
            committed = await client.committed(partition)
            if committed:
                client.seek(partition, committed)
            else:
                await client.seek_to_beginning(partition)
        except aiokafka.errors.IllegalStateError:
            continue  # no longer assigned: its next owner reads it from the committed offset
        except aiokafka.errors.KafkaError as exc:
            _log.warning(
                "could not read %s again from its committed offset (%r); records fetched "
                "before a seek were held back and are read again after the next restart or "
                "rebalance, never committed past",
                tp,
                exc,
            )


class _Consumer(CommitOnRevoke, BatchDrain, faust_aiokafka.Consumer):
    _owned: frozenset[Any] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seeks: dict[Any, int] = {}  # per partition: how many seeks so far
        self._init_batch_drain()

    async def seek_to_committed(self) -> Mapping[Any, int]:
        self._count_seeks(self.assignment())
        return await super().seek_to_committed()

    async def _seek(self, partition: Any, offset: int) -> None:
        self._count_seeks([partition])
        await super()._seek(partition, offset)

    def _count_seeks(self, partitions: Iterable[Any]) -> None:
        for tp in partitions:
            self._seeks[tp] = self._seeks.get(tp, 0) + 1

    async def _read_again_from_committed(self, partitions: set[Any]) -> None:
        """Records fetched before a seek are dropped (riskstream.batch_hook); they may also be
        records read from the new position, so the partitions are read again from the commit."""
        self._count_seeks(partitions)
        _log.info(
            "reading %s again from the committed offset: records fetched before a seek or a "
            "rebalance are not handed on",
            sorted(f"{tp.topic}:{tp.partition}" for tp in partitions),
        )
        client = self._thread._ensure_consumer()
        await self._thread.call_thread(_seek_back_to_committed, client, partitions)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_stop(self) -> None:
        # A worker that leaves commits what it finished, outputs delivered first: Faust's own
        # stop commits only what was acknowledged by then (riskstream.commit_on_revoke).
        await self.commit_before_revoke()
        await super().on_stop()

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self.commit_before_revoke()  # Faust forgets the acknowledgements next
        self._owned = self._owned - frozenset(revoked)  # before the revoke handlers ack
        self.forget_batches(revoked)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        for tp in assigned:  # anything acknowledged while it was not ours is forgotten
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._gap.pop(tp, None)
        self.forget_batches(assigned)
        self._owned = frozenset(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    def ack(self, message: Any) -> bool:
        """Acknowledgements for partitions this worker does not own count for nothing."""
        if message.tp not in self._owned:
            message.acked = True
            self._unacked_messages.discard(message)
            return False
        return bool(super().ack(message))

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit for tp: the end of the acknowledged run that starts where the
        last commit ended; None when the message there is still unacknowledged."""
        acked: list[int] = self._acked[tp]
        if not acked or tp not in self._owned:
            return None
        acked.sort()
        committed = self._committed_offset[tp]
        lowest_unacked = self._lowest_unacked(tp) if committed is None else None
        end = committable_end(acked, committed, lowest_unacked)
        if end is None:
            return None
        done = acked[: bisect.bisect_left(acked, end)]
        del acked[: len(done)]
        self._acked_index[tp].difference_update(done)
        return end

    def _lowest_unacked(self, tp: Any) -> int | None:
        offsets = [m.offset for m in list(self._unacked_messages) if m.tp == tp and not m.acked]
        in_batches = self.lowest_batch_unacked(tp)
        if in_batches is not None:
            offsets.append(in_batches)
        return min(offsets) if offsets else None


def committable_end(
    acked: list[int], committed: int | None, lowest_unacked: int | None
) -> int | None:
    """Where a commit may move to, from sorted acknowledged offsets (see the module notes).

    `committed` is Faust's last commit (the next offset to read; None before the first, and
    Faust also stores a commit of 0 as None); nothing at or past `lowest_unacked` may be
    committed.
    """
    run_end = acked[0]
    for offset in acked:
        if offset > run_end:
            break
        run_end = offset + 1
    if committed is not None and acked[0] > committed:
        return None  # the message at the committed offset is not acknowledged yet
    if lowest_unacked is not None:
        run_end = min(run_end, lowest_unacked)
    if run_end <= acked[0] or (committed is not None and run_end <= committed):
        return None
    return run_end


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class RiskstreamApp(faust.App):
    """faust.App whose Kafka consumer waits at most `riskstream_fetch_max_wait_ms` per fetch
    and commits only past acknowledged offsets."""

    riskstream_fetch_max_wait_ms: int | None = None
    riskstream_fetch_wait_ceiling_ms: int | None = None
    riskstream_probe_kwargs: dict[str, Any] | None = None
    # Topics consumed a partition batch at a time (riskstream.batch_hook), set by build_app.
    batch_handlers: dict[str, BatchHandler] | None = None
    # Topics only this app writes and reads outside Faust's agents and tables (name ->
    # partitions), created with the changelogs at start; set by build_app.
    riskstream_internal_topics: dict[str, int] | None = None
    # Awaited before the commit on a revocation: lets work about to finish finish (the fraud
    # stage's transactions waiting for the replica to read their forwards back).
    riskstream_before_revoke: Callable[[], Awaitable[None]] | None = None

    def _new_transport(self) -> Any:
        if not str(self.conf.broker_consumer[0]).startswith("kafka:"):
            return super()._new_transport()
        return _Transport(self.conf.broker_consumer, self)


def faust_app(settings: Settings, partitions: int) -> faust.App:
    """The Faust app: raw bytes everywhere (the contracts and the feature module do the
    encoding), no Faust web server (riskstream serves its own /metrics), group timing and
    producer batching from the settings."""
    worker = settings.worker
    app = RiskstreamApp(
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
        producer_linger=worker.linger_ms / 1000.0,
        broker_commit_interval=worker.commit_interval_s,
        table_standby_replicas=worker.standby_replicas,
        # On a rebalance, commit what is acked and move on instead of waiting for every event
        # in flight: the fraud stage holds transactions unacked until slower partitions
        # catch up (riskstream.terminal_replica), which can take longer than any rebalance may. The
        # new owner reads them again from the commit, so nothing is lost.
        stream_wait_empty=False,
        web_enabled=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    app.riskstream_fetch_max_wait_ms = worker.fetch_max_wait_ms
    app.riskstream_fetch_wait_ceiling_ms = worker.fetch_wait_ceiling_ms
    app.riskstream_probe_kwargs = settings.kafka.aiokafka_kwargs()
    return app
