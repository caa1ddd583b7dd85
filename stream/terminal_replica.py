"""Every terminal's state in every worker, so that a transaction is scored where it is read.

Why. Terminal features of a transaction at t count the terminal's transactions and fraud labels
up to t − d (d, the label delay, is 7 days). The two-stage topology scored a transaction only
after it crossed a second Kafka hop keyed by terminal, and each hop costs a producer linger and a
fetch: a plain relay on the embedded broker (no work at all) takes 18 ms at p50 and 26 ms at p99
for one hop at 500 events/s, 28 / 40 ms for two. Yet nothing a score needs from the terminal side
is younger than a week, so the terminal side need not be on the scoring path at all.

What. Stage 1 (the owner of a customer partition) still forwards every transaction and label,
keyed by terminal, to the history topic `<app>-fraud-by-terminal`, with its watermark reports
behind them (riskstream.watermarks). Every worker reads that whole topic, from its start and
outside the consumer group, into a `TerminalReplica`: each terminal's state, and the latest
report of every source partition as read in every history partition. Stage 1 scores a
transaction at t at once when every source has passed t − d in every history partition the
replica has read (live traffic: always, the sources are days past t − d), else holds it in the
replica's `HoldQueue` until the reports that release it are read; its offset is acknowledged only
once its score is delivered. The scores equal those of the two-stage topology, and `riskstream
evaluate`'s:
  - a prefix of one history partition is consistent (a report follows the forwards it covers),
    and the replica holds a prefix of each, so a transaction released at safe time s sees every
    forward with an event time below s, from every source;
  - the reports of a source partition this worker reads are taken from this worker only (the
    `reader` of a report): the previous reader's "caught up", still ahead in the history topic
    after a crash or a rebalance, must not vouch for the backlog this worker forwards now;
  - a source's "caught up" (+inf) can be stale by the time the replica reads it: the source may
    have forwarded more since. For a transaction at t near the worker's clock that is harmless
    (what it would miss is more than the allowed lateness late), but a replay of old events
    moves days of event time per second: a transaction whose time is more than LIVE_SECONDS
    behind the worker's clock is scored only once the replica has read its reader's own report
    sent after its forward (`sequence`), so the replica holds every forward that preceded it
    (`wait_for_own_report`), as a consumer of the history topic itself would;
  - the replica reads transactions out of event-time order (partitions drift apart in a replay),
    so what is too old to keep is decided by the replica's clock (the time every source has
    passed, at most the newest transaction read), not by each terminal's newest transaction.

Cost. Each worker holds every terminal (13 bytes per transaction of the last 44 days, 8 more per
fraud) and reads every forward, about 5 µs per transaction per worker. A worker that starts reads
the history topic from its start: its retention must cover d + 30 days + a week of lateness of
event time (the worker creates it with 45 days, HISTORY_TOPIC_CONFIG).

Pinned by tests/test_terminal_replica.py (the rules, and the replica fed out of order against
`compute_fraud_features`), and by every stream parity and reliability test (the handbook replay
with one worker and with a second joining, SIGKILL ×3 with shared terminals, scale out and in).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

import msgspec

from riskstream import pipeline
from riskstream.features import fraud as fraud_features
from riskstream.watermarks import UNKNOWN, HoldQueue, Source

log = logging.getLogger(__name__)

# Transactions within this of the worker's clock are live: see the module notes.
LIVE_SECONDS = float(fraud_features.LABEL_DELAY_SECONDS) - fraud_features.ALLOWED_LATENESS_SECONDS
HISTORY_RETENTION_DAYS = 45  # d + the longest window (30 days) + a week of lateness, and a day
# The history topic's configuration when the worker creates it: never compacted (its keys are
# terminal ids, and every transaction of a terminal counts), kept for HISTORY_RETENTION_DAYS.
HISTORY_TOPIC_CONFIG = {
    "cleanup.policy": "delete",
    "retention.ms": str(HISTORY_RETENTION_DAYS * 86_400_000),
}

T = TypeVar("T")
LabelSeen = Callable[[pipeline.ForwardedLabel], None]


class TerminalReplica(Generic[T]):
    """Every terminal's state and every source's progress, as read from the history topic."""

    def __init__(
        self,
        partitions: int,
        sources: Iterable[Source],
        delay: float = float(fraud_features.LABEL_DELAY_SECONDS),
        on_label: LabelSeen | None = None,
    ) -> None:
        self.partitions = partitions
        self.sources = list(sources)
        self.on_label = on_label
        self.terminals: dict[str, fraud_features.TerminalState] = {}
        self.holds: HoldQueue[T] = HoldQueue(
            [(q, source) for q in range(partitions) for source in self.sources], delay
        )
        self.records = 0  # history records applied
        self._own: dict[Source, str] = {}  # source this worker reads -> its reports' reader
        self._own_read: dict[tuple[int, Source], int] = {}  # own reports' sequence, as read
        self._awaiting: list[tuple[Source, int, pipeline.ForwardedTransaction, T]] = []
        self._newest = -math.inf  # the newest transaction time read

    @property
    def clock(self) -> float:
        """What decides a state's horizon: every source has passed it, and it is no later than
        the newest transaction read (+inf, a caught-up stream's safe time, is not a time)."""
        return min(self.holds.safe_time, self._newest)

    def apply(self, partition: int, raw: bytes | None) -> bool:
        """One record of history partition `partition`; True if it was a report that counted."""
        self.records += 1
        try:
            message = pipeline.decode_forwarded(raw or b"")
        except msgspec.DecodeError:  # only stage 1 writes here: a bug, not bad input
            log.error("undecodable record on the terminal history topic (partition %d)", partition)
            return False
        if isinstance(message, pipeline.ForwardedTransaction):
            self._add_transaction(message)
        elif isinstance(message, pipeline.ForwardedLabel):
            self._add_label(message)
        else:
            return self._mark(partition, message)
        return False

    def _add_transaction(self, message: pipeline.ForwardedTransaction) -> None:
        if message.too_late:  # stage 1 decided: stored nowhere (fraud.customer_is_too_late)
            return
        if message.timestamp > self._newest:
            self._newest = message.timestamp
        fraud_features.terminal_record(
            self._state(message.terminal_id),
            message.transaction_id,
            message.timestamp,
            self.clock,
        )

    def _add_label(self, message: pipeline.ForwardedLabel) -> None:
        fraud_features.terminal_label(
            self._state(message.terminal_id),
            message.transaction_id,
            message.transaction_timestamp,
            message.fraud,
        )
        if self.on_label is not None:
            self.on_label(message)

    def _mark(self, partition: int, report: pipeline.ForwardedWatermark) -> bool:
        source = (report.topic, report.partition)
        reader = self._own.get(source)
        if reader is not None and report.reader != reader:
            return False  # an earlier reader's word on a partition this worker reads now
        if reader is not None:
            self._own_read[(partition, source)] = report.sequence
        self.holds.mark((partition, source), report.time)
        return True

    def _state(self, terminal_id: str) -> fraud_features.TerminalState:
        state = self.terminals.get(terminal_id)
        if state is None:
            state = self.terminals[terminal_id] = fraud_features.TerminalState()
        return state

    def own(self, source: Source, reader: str) -> None:
        """This worker starts reading `source` and signs its reports `reader` (unique to this
        reading: a worker that reads a partition again after a rebalance must not trust its
        own earlier reports either). Until those reports are read back, nothing is known of
        how far the source has been forwarded."""
        self._own[source] = reader
        for partition in range(self.partitions):
            self.holds.mark((partition, source), UNKNOWN)
            self._own_read.pop((partition, source), None)

    def disown(self, sources: Iterable[Source]) -> None:
        """Another worker reads these now: its reports count from here on."""
        for source in sources:
            self._own.pop(source, None)
            for partition in range(self.partitions):
                self._own_read.pop((partition, source), None)
        gone = set(sources)
        self._awaiting = [waiting for waiting in self._awaiting if waiting[0] not in gone]

    def ready(self, transaction: pipeline.ForwardedTransaction) -> bool:
        return self.holds.ready(transaction.timestamp, _group(transaction))

    def hold(self, transaction: pipeline.ForwardedTransaction, item: T) -> None:
        self.holds.hold(
            transaction.timestamp,
            item,
            transaction.terminal_id,
            behind_group=transaction.too_late,
        )

    def wait_for_own_report(
        self,
        source: Source,
        sequence: int,
        transaction: pipeline.ForwardedTransaction,
        item: T,
    ) -> None:
        """Hold `item` until this worker's report `sequence` of `source` (sent after the
        transaction's forward) was read in every history partition, then as `hold` does."""
        self._awaiting.append((source, sequence, transaction, item))

    def release(self) -> list[T]:
        if self._awaiting:
            waiting, self._awaiting = self._awaiting, []
            for source, sequence, transaction, item in waiting:
                if self._read_own(source, sequence):
                    self.hold(transaction, item)
                else:
                    self._awaiting.append((source, sequence, transaction, item))
        return self.holds.release()

    def _read_own(self, source: Source, sequence: int) -> bool:
        read = self._own_read
        return all(read.get((q, source), -1) >= sequence for q in range(self.partitions))

    @property
    def awaiting_read_back(self) -> int:
        return len(self._awaiting)

    def __len__(self) -> int:
        """Transactions held, for either reason."""
        return len(self.holds) + len(self._awaiting)

    def score(self, transaction: pipeline.ForwardedTransaction) -> pipeline.PendingScore:
        return pipeline.transaction_score(transaction, self.terminals.get(transaction.terminal_id))


def _group(transaction: pipeline.ForwardedTransaction) -> Hashable:
    """A transaction too late to be stored is scored from the terminal state as it stands, so
    it waits behind the transactions of its terminal held before it (riskstream.watermarks);
    any other waits only for the watermarks."""
    return transaction.terminal_id if transaction.too_late else None
