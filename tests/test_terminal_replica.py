"""The terminal replica: every worker's copy of the terminal side (riskstream.terminal_replica).

The replica is fed as a worker feeds it: source partitions forwarded in random chunks and
interleaved, each chunk followed by its source's watermark report, and the history partitions
read back in random steps, behind the forwarding. Every transaction scored (at once when
`ready`, else when `release` gives it back) must get the vector `compute_fraud_features`
computes offline, to 1e-5.
"""

from __future__ import annotations

import random
import zlib
from datetime import date

import numpy as np
import pytest

from riskstream import pipeline
from riskstream.features import fraud as fraud_features
from riskstream.history import TransactionHistory
from riskstream.simulate import generate_transactions
from riskstream.terminal_replica import TerminalReplica
from riskstream.watermarks import CAUGHT_UP, UNKNOWN

DELAY = float(fraud_features.LABEL_DELAY_SECONDS)
TX_PARTITIONS, LABEL_PARTITIONS, HISTORY_PARTITIONS = 3, 2, 2
CUSTOMER_COLUMNS = [
    fraud_features.FEATURE_NAMES.index(name) for name in fraud_features.CUSTOMER_FEATURE_NAMES
]


def _partition(key: str, count: int) -> int:
    return zlib.crc32(key.encode()) % count


def _source_logs(history: TransactionHistory, offline: np.ndarray) -> dict[tuple, list]:
    """Each source partition's forwards in its own order (event time)."""
    logs: dict[tuple, list] = {}
    for row in np.argsort(history.timestamp, kind="stable"):
        ts = float(history.timestamp[row])
        customer, terminal = str(history.customer_id[row]), str(history.terminal_id[row])
        tx_id = str(history.transaction_id[row])
        forwarded = pipeline.ForwardedTransaction(
            transaction_id=tx_id,
            timestamp=ts,
            event_timestamp="",
            customer_id=customer,
            terminal_id=terminal,
            amount=float(history.amount[row]),
            customer_features=tuple(float(v) for v in offline[row, CUSTOMER_COLUMNS]),
            source_timestamp_ms=0,
        )
        source = ("tx", _partition(customer, TX_PARTITIONS))
        logs.setdefault(source, []).append((ts, forwarded, row))
    labels = []
    for row in np.flatnonzero(history.fraud):
        tx_ts = float(history.timestamp[row])
        label = pipeline.ForwardedLabel(
            str(history.transaction_id[row]),
            tx_ts,
            str(history.terminal_id[row]),
            True,
            tx_ts + DELAY,
        )
        labels.append((tx_ts + DELAY, label))
    for label_time, label in sorted(labels, key=lambda pair: pair[0]):
        source = ("labels", _partition(label.transaction_id, LABEL_PARTITIONS))
        logs.setdefault(source, []).append((label_time - DELAY, label, None))  # reported time
    return logs


def _replay_through_replica(
    history: TransactionHistory, offline: np.ndarray, seed: int
) -> dict[int, list[float]]:
    rng = random.Random(seed)
    logs = _source_logs(history, offline)
    sources = [("tx", p) for p in range(TX_PARTITIONS)] + [
        ("labels", p) for p in range(LABEL_PARTITIONS)
    ]
    replica: TerminalReplica[tuple] = TerminalReplica(HISTORY_PARTITIONS, sources)
    history_log: list[list[bytes]] = [[] for _ in range(HISTORY_PARTITIONS)]
    read_to = [0] * HISTORY_PARTITIONS
    scored: dict[int, list[float]] = {}

    def report(source: tuple, value: float) -> None:
        mark = pipeline.encode_forwarded(pipeline.ForwardedWatermark(*source, value, "other"))
        for log in history_log:
            log.append(mark)

    def read_some() -> None:
        for q in range(HISTORY_PARTITIONS):
            upto = min(len(history_log[q]), read_to[q] + rng.randint(0, 400))
            for raw in history_log[q][read_to[q] : upto]:
                replica.apply(q, raw)
            read_to[q] = upto
        for forwarded, row in replica.release():
            scored[row] = replica.score(forwarded).vector

    positions = dict.fromkeys(logs, 0)
    for source in sources:
        report(source, UNKNOWN)
    while any(positions[s] < len(logs[s]) for s in logs):
        source = rng.choice([s for s in logs if positions[s] < len(logs[s])])
        chunk = logs[source][positions[source] : positions[source] + rng.randint(1, 300)]
        positions[source] += len(chunk)
        for _, message, row in chunk:
            q = _partition(message.terminal_id, HISTORY_PARTITIONS)
            history_log[q].append(pipeline.encode_forwarded(message))
            if row is not None:
                if replica.ready(message):
                    scored[row] = replica.score(message).vector
                else:
                    replica.hold(message, (message, row))
        done = positions[source] == len(logs[source])
        report(source, CAUGHT_UP if done else chunk[-1][0])
        read_some()
    for source in logs:
        report(source, CAUGHT_UP)
    while any(read_to[q] < len(history_log[q]) for q in range(HISTORY_PARTITIONS)):
        read_some()
    return scored


@pytest.mark.parametrize("seed", [0, 1])
def test_out_of_order_reading_scores_as_offline(seed: int) -> None:
    history = generate_transactions(
        n_customers=120, n_terminals=40, start=date(2025, 1, 1), days=75, seed=5 + seed
    )
    offline = fraud_features.compute_fraud_features(history)
    scored = _replay_through_replica(history, offline, seed)
    assert len(scored) == len(history), "every transaction was scored"
    rows = sorted(scored)
    stream = np.asarray([scored[row] for row in rows], dtype=np.float32)
    terminal = [
        fraud_features.FEATURE_NAMES.index(n) for n in fraud_features.TERMINAL_FEATURE_NAMES
    ]
    assert stream[:, terminal].max() > 0, "terminals have history"
    np.testing.assert_allclose(stream, offline[rows], atol=1e-5)


def _transaction(tx_id: str, ts: float, terminal: str = "T1") -> pipeline.ForwardedTransaction:
    return pipeline.ForwardedTransaction(tx_id, ts, "", "C1", terminal, 10.0, (0.0,) * 8, 0)


def _mark(source: tuple, value: float, reader: str) -> bytes:
    return pipeline.encode_forwarded(pipeline.ForwardedWatermark(*source, value, reader))


def test_a_source_this_worker_reads_counts_only_its_own_reports() -> None:
    source = ("tx", 0)
    replica: TerminalReplica[str] = TerminalReplica(1, [source])
    replica.apply(0, _mark(source, CAUGHT_UP, "crashed-predecessor"))
    assert replica.ready(_transaction("a", 100 * DELAY))
    replica.own(source, "me#0")
    assert not replica.ready(_transaction("a", 100 * DELAY)), "the predecessor's word is void"
    replica.apply(0, _mark(source, CAUGHT_UP, "crashed-predecessor"))  # read late
    assert not replica.ready(_transaction("a", 100 * DELAY))
    replica.apply(0, _mark(source, 50 * DELAY, "me#0"))
    assert replica.ready(_transaction("a", 50 * DELAY))
    assert not replica.ready(_transaction("b", 52 * DELAY))
    replica.disown([source])
    replica.apply(0, _mark(source, CAUGHT_UP, "next-owner"))
    assert replica.ready(_transaction("b", 52 * DELAY))


def test_reading_ahead_does_not_drop_what_a_held_transaction_needs() -> None:
    """One source forwards 60 days ahead of another: the terminal keeps the slow source's
    transactions that a transaction still held will count."""
    fast, slow = ("tx", 0), ("tx", 1)
    replica: TerminalReplica[str] = TerminalReplica(1, [fast, slow])
    day = 86_400.0
    replica.apply(0, pipeline.encode_forwarded(_transaction("old", 10 * day)))
    for n in range(60):
        replica.apply(0, pipeline.encode_forwarded(_transaction(f"f{n}", (20 + n) * day)))
    replica.apply(0, _mark(fast, CAUGHT_UP, "w"))
    held = _transaction("late-scored", 10 * day + DELAY + day / 2)
    assert not replica.ready(held)
    replica.hold(held, "held")
    replica.apply(0, _mark(slow, CAUGHT_UP, "w"))
    assert replica.release() == ["held"]
    features = dict(zip(fraud_features.FEATURE_NAMES, replica.score(held).vector, strict=True))
    assert features["terminal_nb_tx_1day"] == 1  # "old", which the fast source's reads outran
