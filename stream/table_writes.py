"""One changelog record per changed key per input batch (Kafka Streams' record cache).

A batch handler (riskstream.batch_hook) reads and writes a Faust table through `TableWrites`:
reads and writes go straight to the table's store, and the keys written are remembered, so that
once the batch is done each changed key sends one changelog record with its last value, into
the changelog partition of the input partition (as Faust's own rule: a table's partition is
its source partition). A customer with five transactions in a batch costs one changelog record,
not five, and recovery replays correspondingly fewer records.

Why not `table[key] = value`: Faust's table picks the changelog partition from the event being
processed (`current_event()`), and a batch handler has no current event; Faust would also send
one changelog record per write. Only Faust's in-memory store (`memory://`, the default) is
written this way; riskstream refuses other stores at start (riskstream.config).
Tested by tests/test_table_writes.py and, end to end, by every stream replay.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from riskstream.outbox import Outbox


class TableWrites(MutableMapping[bytes, bytes]):
    """A table's state for one input partition's batch: the mapping the per-event steps use."""

    def __init__(self, table: Any, partition: int) -> None:
        store = table.data  # Faust's memory Store
        self._store: dict[bytes, bytes] = store.data
        # Which partition a key belongs to: Faust drops the keys of partitions that moved away
        # when a recovery completes (memory.Store.on_recovery_completed).
        self._key_partition: dict[bytes, int] = store._key_partition
        self._changelog = table.changelog_topic.get_topic_name()
        self._partition = partition
        self._changed: set[bytes] = set()

    def __getitem__(self, key: bytes) -> bytes:
        return self._store[key]

    def get(self, key: bytes, default: Any = None) -> Any:
        return self._store.get(key, default)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._store[key] = value
        self._key_partition[key] = self._partition
        self._changed.add(key)

    def __delitem__(self, key: bytes) -> None:
        del self._store[key]
        self._changed.add(key)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    @property
    def changed(self) -> int:
        return len(self._changed)

    def send_changes(self, outbox: Outbox) -> None:
        """Queue one changelog record per changed key (None: deleted) and forget them."""
        changed, self._changed = self._changed, set()
        for key in changed:
            outbox.add(self._changelog, key, self._store.get(key), self._partition)
