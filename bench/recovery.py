"""Table recovery: how fast a worker that starts, restarts or joins reads its state back.

Fills `<app>-customers-changelog` (4 partitions) with one record per customer, the way the
worker's own producer writes them (key: customer id; value: the `CustomerState` bytes of 1-3
transactions; 5 ms linger and aiokafka's default batch size), then starts one `riskstream
worker` of that app and polls /healthz every 0.2 s. A worker that restarts reads every
partition back; one that joins a group reads the partitions it is handed, its share of the
same work.

- recovery seconds: from the first answer that reports table recovery under way until the
  worker reports it done with partitions assigned;
- records/s: changelog records / recovery seconds;
- serving after: from the process launch until then (imports, model check, group join,
  recovery): what a restart costs before the first event is scored.

    .venv/bin/python bench/recovery.py --customers 1000000     # prints one JSON object
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
import time
import zlib
from pathlib import Path

import click
import numpy as np
from aiokafka import AIOKafkaProducer
from common import PARTITIONS, BenchTopics, WorkerProcess, short_id

from riskstream.config import KafkaSettings
from riskstream.features import fraud
from riskstream.kafka import ensure_topics

DAY = 86_400.0
NOW = 1_750_000_000.0
POLL_SECONDS = 0.2


@dataclasses.dataclass(frozen=True)
class RecoveryRun:
    customers: int
    changelog_records: int
    fill_seconds: float
    recovery_seconds: float
    serving_after: float  # process launch -> recovered, partitions assigned

    @property
    def records_per_second(self) -> float:
        return self.changelog_records / self.recovery_seconds if self.recovery_seconds else 0.0


def _states(customers: int, seed: int = 7):
    """(key, value) of every customer's state, built through the feature module's own step."""
    rng = np.random.default_rng(seed)
    for customer in range(customers):
        state = fraud.CustomerState()
        count = 1 + customer % 3
        times = np.sort(NOW - rng.uniform(0.0, 30 * DAY, count))
        for i, ts in enumerate(times):
            fraud.customer_step(state, f"tx{customer}-{i}", float(ts), float(rng.gamma(2.0, 30.0)))
        yield f"C{customer:07d}".encode(), state.to_bytes()


async def fill_changelog(bootstrap: str, topic: str, customers: int) -> int:
    await ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), {topic: PARTITIONS})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        deliveries = []
        for key, value in _states(customers):
            partition = zlib.crc32(key) % PARTITIONS
            deliveries.append(await producer.send(topic, value, key=key, partition=partition))
            if len(deliveries) >= 20_000:
                await asyncio.gather(*deliveries)
                deliveries.clear()
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return customers


def _wait_recovered(worker: WorkerProcess, timeout: float) -> tuple[float, float]:
    """(first moment recovery was seen under way, moment it was done with partitions)."""
    began = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.check_running()
        health = worker.health() or {}
        now = time.time()
        if health.get("in_recovery") and not began:
            began = now
        recovered = not health.get("in_recovery") and not health.get("rebalancing")
        if began and recovered and health.get("assigned_partitions", 0) > 0:
            return began, now
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"recovery did not finish in {timeout:.0f} s; log {worker.log_path}")


def measure_recovery(bootstrap: str, customers: int, workdir: Path) -> RecoveryRun:
    suffix = short_id()
    topics = BenchTopics(bootstrap, f"bench-rec-tx-{suffix}", f"bench-rec-labels-{suffix}")
    started = time.monotonic()
    changelog = f"{topics.app_id}-customers-changelog"
    records = asyncio.run(fill_changelog(bootstrap, changelog, customers))
    fill_seconds = time.monotonic() - started
    worker = WorkerProcess(topics, workdir, "recovering").start()
    try:
        began, done = _wait_recovered(worker, timeout=max(300.0, customers / 2_000))
    finally:
        worker.stop()
    return RecoveryRun(customers, records, fill_seconds, done - began, done - worker.started_at)


@click.command()
@click.option("--customers", type=click.IntRange(min=1000), default=1_000_000, show_default=True)
@click.option("--bootstrap-servers", help="A running broker [default: an embedded one].")
def main(customers: int, bootstrap_servers: str | None) -> None:
    """Fill a customers changelog, start a worker on it, print the recovery figures."""
    from riskstream.broker import EmbeddedBroker, free_port

    workdir = Path(tempfile.mkdtemp(prefix="riskstream-recovery-"))
    if bootstrap_servers:
        run = measure_recovery(bootstrap_servers, customers, workdir)
    else:
        with EmbeddedBroker(port=free_port()) as broker:
            run = measure_recovery(broker.bootstrap_servers, customers, workdir)
    print(json.dumps({**dataclasses.asdict(run), "records_per_second": run.records_per_second}))


if __name__ == "__main__":
    main()
