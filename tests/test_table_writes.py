"""Table writes from a batch handler: one changelog record per changed key, into the
changelog partition of the input partition, the store updated at once."""

from __future__ import annotations

from typing import Any

from riskstream.table_writes import TableWrites


class _Store:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self._key_partition: dict[bytes, int] = {}


class _Table:
    def __init__(self) -> None:
        self.data = _Store()
        self.changelog_topic = type("Topic", (), {"get_topic_name": lambda self: "t-changelog"})()


class _Outbox:
    def __init__(self) -> None:
        self.records: list[tuple[str, Any, Any, Any]] = []

    def add(self, topic: str, key: Any, value: Any, partition: Any = None) -> None:
        self.records.append((topic, key, value, partition))


def test_each_changed_key_sends_its_last_value_once() -> None:
    table = _Table()
    table.data.data[b"old"] = b"1"
    writes = TableWrites(table, partition=3)
    for value in (b"a", b"b", b"c"):
        writes[b"customer"] = value
    writes[b"other"] = b"x"
    del writes[b"old"]
    assert writes.get(b"customer") == b"c" and writes.get(b"old") is None
    assert writes.changed == 3
    outbox = _Outbox()
    writes.send_changes(outbox)
    assert sorted(outbox.records, key=str) == sorted(
        [
            ("t-changelog", b"customer", b"c", 3),
            ("t-changelog", b"other", b"x", 3),
            ("t-changelog", b"old", None, 3),  # a tombstone
        ],
        key=str,
    )
    assert table.data._key_partition == {b"customer": 3, b"other": 3}
    writes.send_changes(outbox := _Outbox())
    assert outbox.records == [], "sent once"
