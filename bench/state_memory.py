"""Resident memory of fraud feature state for many customers and terminals, in a fresh process.

Faust's memory store keeps a table as a dict of the bytes the table was given; the worker
gives it `state.to_bytes()`, so the stored form is `dict[bytes, bytes]` (form `bytes`). The
form `objects` keeps the live `CustomerState` / `TerminalState` objects instead, for
comparison. Each customer gets 1-3 transactions (cycling) within the last 30 days; each
terminal a Poisson number of them with mean (customer transactions / terminals), 1 % labelled
fraud. Every state is built through the feature module's own step functions.

Prints one JSON object (RSS from /proc/self/status, after a full garbage collection):

    python bench/state_memory.py --customers 1000000 --terminals 10000 --form bytes
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import numpy as np
from common import rss_bytes

from riskstream.features import fraud

DAY = 86_400.0
NOW = 1_750_000_000.0  # any fixed epoch: states keep only what their windows need


CHUNK = 10_000


def _customer_table(customers: int, form: str, rng: np.random.Generator) -> dict:
    """Built one customer at a time from small chunks of random input, so nothing but the
    kept form is ever resident in bulk (a big input array, once freed, would leave reusable
    memory in the baseline and hide part of the state)."""
    table: dict = {}
    for first in range(0, customers, CHUNK):
        ids = range(first, min(first + CHUNK, customers))
        counts = [1 + c % 3 for c in ids]
        times = (NOW - rng.uniform(0.0, 30 * DAY, sum(counts))).tolist()
        amounts = rng.gamma(2.0, 30.0, len(times)).tolist()
        row = 0
        for customer, count in zip(ids, counts, strict=True):
            state = fraud.CustomerState()
            for ts in sorted(times[row : row + count]):
                fraud.customer_step(state, f"tx{customer}-{row}", ts, amounts[row])
                row += 1
            _keep(table, f"C{customer:07d}", state, form)
    return table


def _terminal_table(
    terminals: int, per_terminal: float, form: str, rng: np.random.Generator
) -> dict:
    """Each terminal's transactions (Poisson count, mean `per_terminal`), 1 % labelled fraud."""
    table: dict = {}
    for terminal in range(terminals):
        count = int(rng.poisson(per_terminal))
        times = np.sort(NOW - rng.uniform(0.0, 30 * DAY, count)).tolist()
        frauds = (rng.random(count) < 0.01).tolist()
        state = fraud.TerminalState()
        for i, (ts, is_fraud) in enumerate(zip(times, frauds, strict=True)):
            fraud.terminal_step(state, f"tx{terminal}-{i}", ts)
            if is_fraud:
                fraud.terminal_label(state, f"tx{terminal}-{i}", ts, True)
        _keep(table, f"T{terminal:06d}", state, form)
    return table


def _keep(
    table: dict, key: str, state: fraud.CustomerState | fraud.TerminalState, form: str
) -> None:
    if form == "bytes":
        table[key.encode()] = state.to_bytes()
    else:
        table[key] = state


def _payload(table: dict) -> int:
    return sum(len(v if isinstance(v, bytes) else v.to_bytes()) for v in table.values())


def build(customers: int, terminals: int, form: str) -> dict[str, float | int | str]:
    rng = np.random.default_rng(7)
    transactions = sum(1 + c % 3 for c in range(customers))
    gc.collect()
    baseline = rss_bytes()
    started = time.process_time()
    terminal_table = _terminal_table(terminals, transactions / terminals, form, rng)
    gc.collect()
    with_terminals = rss_bytes()
    customer_table = _customer_table(customers, form, rng)
    gc.collect()
    total = rss_bytes()
    build_seconds = time.process_time() - started
    # A worker that recovered a table from its changelog also keeps key -> partition.
    key_partition = {key: i % 4 for i, key in enumerate(customer_table)}
    gc.collect()
    recovered = rss_bytes()
    del key_partition
    return {
        "form": form,
        "customers": len(customer_table),
        "terminals": len(terminal_table),
        "transactions": transactions,
        "baseline_rss": baseline,
        "total_rss": total,
        "customer_bytes_each": (total - with_terminals) / len(customer_table),
        "terminal_bytes_each": (with_terminals - baseline) / len(terminal_table),
        "customer_payload_bytes_each": _payload(customer_table) / len(customer_table),
        "terminal_payload_bytes_each": _payload(terminal_table) / len(terminal_table),
        "recovery_index_bytes_each": (recovered - total) / len(customer_table),
        "build_cpu_seconds": build_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--form", choices=("bytes", "objects"), default="bytes")
    args = parser.parse_args()
    print(json.dumps(build(args.customers, args.terminals, args.form)))


if __name__ == "__main__":
    main()
