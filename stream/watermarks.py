"""Event-time watermarks: when the terminal side of a transaction is complete.

Terminal features of a transaction at t count the terminal's transactions and fraud labels up
to t − d (d = the label delay). Stage 1 reads many source partitions (transactions keyed by
customer, labels keyed by transaction id) and forwards what it reads to the history topic keyed
by terminal, which every worker's terminal replica reads (riskstream.terminal_replica). While a
worker works through a backlog, those source partitions drift apart by days or weeks of event
time (the consumer reads whichever partition has data), so a transaction could be scored before
earlier transactions from a slower partition reached the replica. Offline there is no such
race, so the stream would disagree with `riskstream evaluate`.

So stage 1 reports, for every source partition it owns, how far in event time it has forwarded
(`SourceClocks`), to every partition of the history topic and through the same producer as the
forwards, so a report always follows the forwards it covers. A transaction at t is held
(`HoldQueue`) until every source partition reported passing t − d in every history partition
the replica has read, then scored. Labels need no holding: a label only ever counts for
transactions at least d after its own, so applying one early changes nothing.

Conventions:
  - A transaction partition reports the newest transaction time it forwarded; a label partition
    reports the newest label time minus d (a label is due d after its transaction), so both
    speak in transaction time.
  - A partition that is caught up (nothing left to read at its last known high-water mark)
    reports +inf: only late events can still come from it, and a late event is scored from what
    the state holds (exact within the allowed lateness). Without this an idle partition would
    hold everything forever, and a live stream would wait for the next label.
  - The latest report wins (a partition that was caught up and receives new events reports a
    finite time again); a replica that has not heard from every source holds.
  - A new reader of a source partition (after a start, a crash or a rebalance) withdraws its
    predecessor's last report before its first forward: it reports UNKNOWN first, and its own
    replica counts only its own reports of that partition. Otherwise a "caught up" from before
    a crash vouched for the backlog read after it, and transactions were scored before the
    labels of a slower partition (28 scores off in a SIGKILL run with shared terminals and
    interleaved labels).
  - In live traffic nothing is held: transactions at t ≈ now need reports past now − d.
  - A transaction too late to be stored (decided by stage 1, see
    fraud.customer_is_too_late) is scored from the terminal state as it stands: it waits
    behind the transactions of its terminal held before it (`behind_group`), and is not held
    for anything else.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

Source = tuple[str, int]  # (topic, partition)
CAUGHT_UP = math.inf
UNKNOWN = -math.inf

T = TypeVar("T")


@dataclasses.dataclass(slots=True)
class _SourceProgress:
    newest: float = UNKNOWN
    next_offset: int | None = None  # the next offset to process: start, or last processed + 1
    sent: float | None = None
    sent_at: float = -math.inf


class SourceClocks:
    """How far each source partition this worker owns has been forwarded."""

    def __init__(self, refresh_seconds: float = 1.0) -> None:
        self.refresh_seconds = refresh_seconds
        self._sources: dict[Source, _SourceProgress] = {}

    def processed(self, source: Source, offset: int, event_time: float | None) -> None:
        """After an event was handled (event_time: what it forwarded; None: dead-lettered)."""
        progress = self._sources.setdefault(source, _SourceProgress())
        progress.next_offset = max(progress.next_offset or 0, offset + 1)
        if event_time is not None and event_time > progress.newest:
            progress.newest = event_time

    def needs_start(self, source: Source) -> bool:
        progress = self._sources.get(source)
        return progress is None or progress.next_offset is None

    def started_at(self, source: Source, offset: int) -> None:
        """Where reading began (committed offset or the partition's earliest), before any event."""
        progress = self._sources.setdefault(source, _SourceProgress())
        if progress.next_offset is None:
            progress.next_offset = offset

    def caught_up(self, source: Source, highwater: int | None) -> bool:
        progress = self._sources.get(source)
        if progress is None or progress.next_offset is None or highwater is None:
            return False
        return progress.next_offset >= highwater

    def value(self, source: Source, highwater: int | None) -> float:
        """What to report: +inf when caught up, else the newest forwarded event time."""
        if self.caught_up(source, highwater):
            return CAUGHT_UP
        progress = self._sources.get(source)
        return progress.newest if progress is not None else UNKNOWN

    def should_send(self, source: Source, value: float, now: float) -> bool:
        """On change, and every refresh_seconds anyway: a report lost on its way must not hold
        transactions until the next change."""
        progress = self._sources.setdefault(source, _SourceProgress())
        return progress.sent != value or now - progress.sent_at >= self.refresh_seconds

    def sent(self, source: Source, value: float, now: float) -> None:
        progress = self._sources.setdefault(source, _SourceProgress())
        progress.sent, progress.sent_at = value, now

    def announced(self, source: Source) -> bool:
        """Whether this reader of the source partition has sent its first report. Until it
        has, a replica may still hold a report of the partition's previous reader (before a
        crash or a rebalance), and that one can say "caught up" of a partition now read again
        from its commit, with a backlog behind it."""
        progress = self._sources.get(source)
        return progress is not None and progress.sent is not None

    def forget(self, sources: Iterable[Source]) -> None:
        """Partitions revoked: whoever reads them next, this worker included, starts anew."""
        for source in sources:
            self._sources.pop(source, None)

    def retain(self, owned: Iterable[Source]) -> None:
        """Forget partitions this worker no longer owns; a new owner starts from the commit."""
        keep = set(owned)
        for source in [s for s in self._sources if s not in keep]:
            del self._sources[source]


class HoldQueue(Generic[T]):
    """Held transactions and the latest report from every source partition (in every history
    partition: the terminal replica's sources are (history partition, source) pairs)."""

    def __init__(self, sources: Iterable[Source], delay: float) -> None:
        self.delay = delay
        self._marks: dict[Source, float] = dict.fromkeys(sources, UNKNOWN)
        self._safe = UNKNOWN if self._marks else CAUGHT_UP
        self._held: list[tuple[float, int, Hashable, T]] = []
        self._arrivals = 0
        self._groups: dict[Hashable, tuple[float, int]] = {}  # group → (newest key, held count)

    def __len__(self) -> int:
        return len(self._held)

    @property
    def safe_time(self) -> float:
        """Every source partition has forwarded everything up to here (in transaction time)."""
        return self._safe

    def mark(self, source: Source, value: float) -> None:
        """A report from a source partition; unknown sources (not in the topology) are ignored."""
        if source in self._marks:
            self._marks[source] = value
            self._safe = min(self._marks.values())

    def ready(self, event_time: float, group: Hashable = None) -> bool:
        """Whether a transaction at event_time may be scored now; with a group, also that
        nothing of that group is held."""
        return event_time - self.delay < self._safe and (group is None or group not in self._groups)

    def hold(
        self, event_time: float, item: T, group: Hashable = None, *, behind_group: bool = False
    ) -> None:
        """Hold an item of `group` (its terminal); `behind_group`: release it no earlier than
        the group's items held before it."""
        key = event_time
        if group is not None:
            newest, count = self._groups.get(group, (UNKNOWN, 0))
            if behind_group:
                key = max(event_time, newest)
            self._groups[group] = (max(key, newest), count + 1)
        self._arrivals += 1
        heapq.heappush(self._held, (key, self._arrivals, group, item))

    def release(self) -> list[T]:
        """The held transactions that became ready, oldest event time first (ties: arrival)."""
        held, released = self._held, []
        while held and held[0][0] - self.delay < self._safe:
            _, _, group, item = heapq.heappop(held)
            if group is not None:
                newest, count = self._groups[group]
                if count == 1:
                    del self._groups[group]
                else:
                    self._groups[group] = (newest, count - 1)
            released.append(item)
        return released
