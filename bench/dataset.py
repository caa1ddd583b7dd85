"""The benchmark's events: synthetic card transactions, published once before any consumer.

1,000 customers and 2,000 terminals make about 2,000 transactions per simulated day, so the
default 20,000 events span ten days: each customer's state grows to about 20 transactions
during the run instead of staying near empty. No labels are published: the ceiling
and the worker must read exactly the same events (labels are under 1 % of traffic).
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
from common import PARTITIONS, short_id

from riskstream.config import Settings
from riskstream.history import TransactionHistory
from riskstream.replay import Outgoing, publish, transaction_events
from riskstream.simulate import generate_transactions

CUSTOMERS = 1_000
TERMINALS = 2_000


@dataclasses.dataclass(frozen=True)
class Dataset:
    history: TransactionHistory
    events: int

    def outgoing(self, topic: str, labels_topic: str, first: int = 0) -> list[Outgoing]:
        rows = np.arange(first, first + self.events)
        return list(transaction_events(self.history, rows, topic, labels_topic, "none", 7.0))


def make_dataset(events: int) -> Dataset:
    days = 1
    while True:
        history = generate_transactions(n_customers=CUSTOMERS, n_terminals=TERMINALS, days=days)
        if len(history) >= events:
            return Dataset(history, events)
        days = int(days * events / max(len(history), 1)) + 2


def settings_for(bootstrap: str) -> Settings:
    return Settings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "RISKSTREAM_PARTITIONS": str(PARTITIONS)}
    )


@dataclasses.dataclass(frozen=True)
class Published:
    transactions: str
    labels: str
    events: int
    seconds: float


def publish_once(bootstrap: str, dataset: Dataset) -> Published:
    """The input topic (4 partitions, keyed by customer) with every event, before any reader."""
    suffix = short_id()
    transactions, labels = f"bench-transactions-{suffix}", f"bench-labels-{suffix}"
    outgoing = dataset.outgoing(transactions, labels)
    stats = asyncio.run(
        publish(settings_for(bootstrap), iter(outgoing), total=len(outgoing), show_progress=False)
    )
    return Published(transactions, labels, stats.transactions, stats.seconds)
