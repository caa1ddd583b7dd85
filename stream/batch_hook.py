"""Faust's consumer hands each fetched partition batch to one handler, not each message to an agent.

Why. Faust's per-message path (its consumer's `_drain_messages` → a `wait_first` with four
tasks per record → the conductor → the agent's stream iterator → sensors → ack) costs 156–214
CPU µs per record with an empty agent body, ten times riskstream's own work per transaction.
Overriding only the drain loop of Faust's consumer, each partition's records of one fetch go to
one batch handler under one `wait_first(handler, suspend_flow)`: about 8 µs per record, and
Faust keeps everything else — the consumer group, assignment and rebalancing, table recovery,
commits, timers, the producer.

The rules this module keeps:
  - Topics with a registered handler (`RiskstreamApp.batch_handlers`) take the batch path; every
    other topic (table changelogs during recovery) takes Faust's per-message path unchanged.
    An agent stays registered on each batch topic so Faust keeps it subscribed.
  - Offsets a handler was given stay unacknowledged until it calls `ack_offsets` — after the
    broker acknowledged every record the batch produced (`ack_when_delivered`). Faust's commit
    then moves over them by riskstream's commit rule (riskstream.faust_app: only a run of
    acknowledged offsets starting at the committed offset), so a worker killed at any moment
    loses nothing, and re-reads at most what was not committed.
  - A rebalance sets Faust's `suspend_flow`: the handler running is cancelled, what it produced
    for offsets it did not acknowledge is read again by the partition's next owner, and the
    rest of the fetch is dropped (Faust seeks every partition to its committed offset).
  - Records of a partition sought after they were fetched, or paused or revoked meanwhile (a
    fetch can outlive a rebalance), are never handed on; the partition is read again from its
    committed offset (see the "Re-delivery after a seek" notes in riskstream.faust_app).
Pinned by the drain-loop tests in tests/test_faust_app.py and by every replay and reliability test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from mode.utils.futures import notify

BatchHandler = Callable[[Any, list[Any]], Awaitable[None]]  # (TP, aiokafka ConsumerRecords)
FETCH_TIMEOUT_S = 1.0


class BatchDrain:
    """The drain loop and batch acknowledgements, mixed into riskstream's Faust consumer."""

    app: Any
    _owned: frozenset[Any]
    _seeks: dict[Any, int]

    def _init_batch_drain(self) -> None:
        # Offsets handed to a batch handler and not acknowledged yet, per partition: before a
        # partition's first commit, nothing at or past the lowest may be committed.
        self._batch_unacked: dict[Any, set[int]] = {}

    def batch_handlers(self) -> Mapping[str, BatchHandler]:
        return getattr(self.app, "batch_handlers", None) or {}

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (transport/consumer.py), a partition batch at a time."""
        handlers = self.batch_handlers()
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                await self.sleep(0)
                if self.should_stop:
                    continue
                seeks = dict(self._seeks)  # a seek from here on makes this fetch stale
                stale = set()
                batches = await self._next_batches(FETCH_TIMEOUT_S)
                generation = self.app.consumer_generation_id  # as Faust: taken after the fetch
                for tp, records in batches:
                    if not self._may_deliver() or self.app.consumer_generation_id != generation:
                        break  # a rebalance started: the rest is read again from the commits
                    handler = handlers.get(tp.topic)
                    if self._sought_since(tp, seeks) or (handler and not self._readable(tp)):
                        stale.add(tp)
                        continue
                    if handler is None:
                        await self._deliver_each(tp, records, seeks)
                    else:
                        await self._deliver_batch(handler, tp, records)
                if stale:
                    await self._read_again_from_committed(stale)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    def _readable(self, tp: Any) -> bool:
        """Whether tp is owned and not paused now. A fetch can outlive a rebalance: records of
        a source partition fetched before it must not reach a handler while its table
        partition recovers (paused) or after it moved, or they are scored from state that is
        not there yet (a score 0.83 off in the join/leave test)."""
        return tp in self._owned and tp not in self._paused_partitions

    def _may_deliver(self) -> bool:
        return bool(self.flow_active) and not self.suspend_flow.is_set()

    def _sought_since(self, tp: Any, seeks: dict[Any, int]) -> bool:
        """Whether tp was sought since `seeks` was taken (changelogs: recovery positions them
        itself, and there are no commits to go back to)."""
        if self._seeks.get(tp, 0) == seeks.get(tp, 0):
            return False
        return tp.topic not in self.app.tables.changelog_topics

    async def _next_batches(self, timeout: float) -> list[tuple[Any, list[Any]]]:
        """One fetch, per partition, without partitions paused meanwhile."""
        records, active = await self._wait_next_records(timeout)
        if not records or self.should_stop:
            return []
        if not self.flow_active:
            await self._seek_after_suspended_fetch()
            return []
        batches = []
        buffered = self._buffered_partitions
        for tp, fetched in records.items():
            if active is not None and tp not in active and tp not in buffered:
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            batches.append((tp, fetched))
        return batches

    async def _seek_after_suspended_fetch(self) -> None:
        try:
            await self.perform_seek()
        except Exception as exc:  # as Faust's own getmany: logged, the next fetch retries
            self.log.warning("exception performing seek when flow not active %r", exc)

    async def _deliver_each(self, tp: Any, records: list[Any], seeks: dict[Any, int]) -> None:
        """Faust's own per-message path (changelogs, topics without a batch handler)."""
        to_message = self._to_message
        callback = self.callback
        for record in records:
            if self._sought_since(tp, seeks):
                await self._read_again_from_committed({tp})
                return
            await self._commit_if_many_acked()
            await self.wait_first(callback(to_message(tp, record)), self.suspend_flow.wait())
            if not self._may_deliver():
                return

    async def _deliver_batch(self, handler: BatchHandler, tp: Any, records: list[Any]) -> None:
        await self._commit_if_many_acked()
        self._batch_unacked.setdefault(tp, set()).update(record.offset for record in records)
        monitor = self.app.monitor
        if monitor is not None:  # Faust's "stream stopped processing" check reads it
            monitor.stream_inbound_time[tp] = time.monotonic()
        await self.wait_first(handler(tp, records), self.suspend_flow.wait())

    async def _commit_if_many_acked(self) -> None:
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()

    def ack_offsets(self, tp: Any, offsets: Iterable[int]) -> int:
        """Acknowledge offsets a batch handler finished: Faust may commit past them. Offsets
        of partitions this worker no longer owns count for nothing. Returns how many counted."""
        unacked = self._batch_unacked.get(tp)
        if tp not in self._owned:
            return 0
        committed = self._committed_offset.get(tp)
        acked_index = self._acked_index[tp]
        acked = self._acked[tp]
        counted = 0
        for offset in offsets:
            if unacked is not None:
                unacked.discard(offset)
            if (committed is None or offset >= committed) and offset not in acked_index:
                acked_index.add(offset)
                acked.append(offset)
                counted += 1
        self._n_acked += counted
        notify(self._waiting_for_ack)
        return counted

    def lowest_batch_unacked(self, tp: Any) -> int | None:
        unacked = self._batch_unacked.get(tp)
        return min(unacked) if unacked else None

    def forget_batches(self, partitions: Iterable[Any]) -> None:
        for tp in partitions:
            self._batch_unacked.pop(tp, None)


def ack_when_delivered(
    consumer: BatchDrain,
    tp: Any,
    offsets: list[int],
    deliveries: list[asyncio.Future[Any]],
    then: Callable[[], None] | None = None,
) -> None:
    """Acknowledge `offsets` (and call `then`) once every delivery succeeded. A failed delivery
    acknowledges nothing: the worker exits on it (riskstream.app) and a restart reads the batch
    again."""
    remaining = len(deliveries)

    def finish() -> None:
        consumer.ack_offsets(tp, offsets)
        if then is not None:
            then()

    def done(future: asyncio.Future[Any]) -> None:
        nonlocal remaining
        if future.cancelled() or future.exception() is not None:
            return
        remaining -= 1
        if remaining == 0:
            finish()

    if not deliveries:
        finish()
    for delivery in deliveries:
        delivery.add_done_callback(done)
