"""A fetch wait that grows while the broker runs out of time, not out of records.

Why. riskstream asks the broker to hold an empty fetch only briefly (`RISKSTREAM_FETCH_MAX_WAIT_MS`,
10 ms), so that an idle worker sees a new event at once. A broker that answers as soon as it has
records (Apache Kafka) never needs more. The embedded broker (Tansu, memory storage) finds a
fetch's position by listing the partition's stored batches from the first one on, and stops
listing when the fetch's wait has passed: once a partition holds more batches than it can list
in that time (about 10,000 batches per 5 ms on the 2-core machine), every fetch at a later
position is answered with no records and a high-water mark past it, the position never moves,
and the partition is stuck for good. With a 10 ms wait, one worker replaying the handbook stopped
scoring after some 40,000 transactions (its terminal-stage partitions held ~10,000 records in
~2,500 batches each), and a worker joining the group recovered its tables a handful of records
per fetch.

What. `AdaptiveFetchWait` reads every fetch answer of one aiokafka consumer. A partition answered
twice in a row at the same offset without records, without error, with a high-water mark past
that offset was starved: the next fetches ask for twice the wait, up to a ceiling. Once is not
enough: with live traffic a record often lands between the broker's lookup and its reading of
the high-water mark, and the next fetch reads it; counting those raised the wait to 160 ms at
500 events/s, and the event-to-score p99 with it. An answer that leaves nothing unread (every
partition in it idle at its end, or read up to its high-water mark) halves the wait back toward
the configured one: the worker is live, not behind, and a long wait now costs latency, because
the broker looks at a fetch again only after half the remaining wait. After a backlog that had
raised the wait to seconds, live traffic would otherwise have waited that long (every answer
holds records, so no answer is ever idle). On a broker that answers promptly the wait never
moves; on Tansu it settles just above what listing a partition takes.

How. aiokafka's Fetcher reads `_fetch_max_wait_ms` for each request it builds and sends through
its `_client`; the fetcher's client is replaced by a proxy that sees fetch answers and passes
everything else through. Tested with aiokafka 0.14 (pinned in pyproject.toml).

Pinned by tests/test_fetch_wait.py: against the real broker, a partition of 10,000 one-record
batches read at a 1 ms wait returns nothing without the adaptation and every record with it; the
unit tests there fix the rule (starved doubles, idle halves, records alone keep).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable
from typing import Any

log = logging.getLogger(__name__)

FETCH_API_KEY = 1
DEFAULT_CEILING_MS = 5000
# (partition, offset asked, error code, high-water mark, offset after the records or None)
FetchAnswer = tuple[Hashable, int, int, int, int | None]
RECORD_BATCH_HEADER = 12  # base offset (int64) and length (int32) of each batch, any version
MAGIC_AT = 16  # the magic byte, in message sets (v0, v1) and record batches (v2) alike
LAST_OFFSET_DELTA_AT = 23  # v2 record batch: the last record's offset, less the base offset


class AdaptiveFetchWait:
    """Owns the fetch wait of one aiokafka consumer's fetcher (see the module notes)."""

    def __init__(self, floor_ms: int, ceiling_ms: int = DEFAULT_CEILING_MS) -> None:
        self.floor_ms = max(1, int(floor_ms))
        self.ceiling_ms = max(self.floor_ms, int(ceiling_ms))
        self.wait_ms = self.floor_ms
        self.starved_answers = 0  # fetch answers that starved a partition, for the log and tests
        self._fetcher: Any = None
        self._empty_at: dict[Hashable, int] = {}  # partition -> offset last answered empty
        self._highest_logged = self.floor_ms

    def install(self, consumer: Any) -> AdaptiveFetchWait:
        """Take over the wait of a started aiokafka consumer's fetcher."""
        fetcher = consumer._fetcher
        if fetcher is None:
            raise RuntimeError("install the adaptive fetch wait after the consumer started")
        self._fetcher = fetcher
        fetcher._client = _FetchObservingClient(fetcher._client, self)
        self._apply()
        return self

    def observe(self, partitions: Iterable[FetchAnswer]) -> None:
        """One fetch answer: (partition, offset asked, error code, high-water mark, offset after
        the records returned or None) for each partition in it."""
        starved = behind = False
        for partition, offset, error_code, highwater, read_to in partitions:
            if error_code or highwater <= offset:
                self._empty_at.pop(partition, None)  # an error, or nothing to read: no sign
            elif read_to is not None:
                self._empty_at.pop(partition, None)
                behind = behind or read_to < highwater
            elif self._empty_at.get(partition) == offset:
                starved = True
            else:
                self._empty_at[partition] = offset  # maybe a record that arrived meanwhile
                behind = True
        if starved:
            self.starved_answers += 1
            self.wait_ms = min(self.ceiling_ms, self.wait_ms * 2)
            self._log_rise()
        elif not behind:
            self.wait_ms = max(self.floor_ms, self.wait_ms // 2)
        self._apply()

    def _apply(self) -> None:
        if self._fetcher is not None:
            self._fetcher._fetch_max_wait_ms = self.wait_ms

    def _log_rise(self) -> None:
        if self.wait_ms > self._highest_logged:
            self._highest_logged = self.wait_ms
            log.info(
                "the broker answered a fetch without the records it holds (it ran out of time "
                "looking them up): fetches now wait up to %d ms when there is nothing to read",
                self.wait_ms,
            )


class _FetchObservingClient:
    """The fetcher's AIOKafkaClient, passing fetch answers to an AdaptiveFetchWait on the way."""

    def __init__(self, client: Any, wait: AdaptiveFetchWait) -> None:
        self._client = client
        self._wait = wait

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def send(self, node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = await self._client.send(node_id, request, *args, **kwargs)
        if getattr(request, "API_KEY", None) == FETCH_API_KEY:
            self._wait.observe(fetch_answers(request, response))
        return response


def fetch_answers(request: Any, response: Any) -> list[FetchAnswer]:
    """(partition, offset asked, error code, high-water mark, offset after the records or None)
    for each partition answered; a partition is named (topic, partition number)."""
    asked = {
        (topic, partition): offset
        for topic, partitions in request.topics
        for partition, offset, _max_bytes in partitions
    }
    answers = []
    for topic, partitions in response.topics:
        for partition, error_code, highwater, *rest in partitions:
            offset = asked.get((topic, partition))
            if offset is not None:
                read_to = next_offset(rest[-1]) if rest and rest[-1] else None
                answers.append(((topic, partition), offset, error_code, highwater, read_to))
    return answers


def next_offset(records: bytes) -> int | None:
    """The offset after the last whole batch in a fetch answer's raw records (a broker may cut
    the last batch short at the fetch's size limit), from the batch headers alone."""
    view = memoryview(records)
    position, last = 0, None
    while position + RECORD_BATCH_HEADER <= len(view):
        base = int.from_bytes(view[position : position + 8], "big", signed=True)
        length = int.from_bytes(view[position + 8 : position + 12], "big", signed=True)
        end = position + RECORD_BATCH_HEADER + length
        if length <= 0 or end > len(view):
            break
        if view[position + MAGIC_AT] >= 2:
            delta_at = position + LAST_OFFSET_DELTA_AT
            base += int.from_bytes(view[delta_at : delta_at + 4], "big", signed=True)
        last, position = base, end
    return None if last is None else last + 1
