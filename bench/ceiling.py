"""The ceiling: a plain aiokafka loop doing the product's mandatory work and nothing else.

Per `getmany` batch: decode and validate every transaction with the product's own decoder
(`riskstream.contracts.decode_transaction`, msgspec), build a cheap feature vector (the amount
in column 0, zeros elsewhere: the real features need per-entity state, which is exactly the
cost under study), score the batch with one onnxruntime call through
`riskstream.scoring.load_model(...).score`, produce one `ScoreRecord` per event (the product's
encoder) to a scores topic, wait for the broker's acknowledgements, commit the offsets.

Runs in its own process (so its CPU time is its own), on uvloop like the worker, and prints
one JSON object: events, seconds from the first batch consumed to the last commit, its own
(and the kernel's part) and the broker's CPU seconds in that window, and the group-join time
before it.

    python bench/ceiling.py BOOTSTRAP TOPIC EVENTS BROKER_PID
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime

import numpy as np
from common import cpu_seconds

from riskstream import contracts
from riskstream.demo import BUNDLED_MODELS
from riskstream.pipeline import rfc3339
from riskstream.scoring import load_model

MAX_RECORDS = 2000


async def ceiling(bootstrap: str, topic: str, events: int, broker_pid: int) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    model = load_model(BUNDLED_MODELS, "fraud")
    n_features = len(model.features)
    suffix = f"{time.time_ns():x}"
    out_topic = f"bench-ceiling-scores-{suffix}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-ceiling-{suffix}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        rebalance_timeout_ms=1000,
        heartbeat_interval_ms=500,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    started = time.time()
    await producer.start()
    await consumer.start()
    done = 0
    first = 0.0
    cpu_first = os.times()
    broker_first = 0.0
    try:
        while done < events:
            batches = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
            if not batches:
                continue
            if not first:
                first, cpu_first, broker_first = time.time(), os.times(), cpu_seconds(broker_pid)
            messages = [m for batch in batches.values() for m in batch]
            transactions = [contracts.decode_transaction(m.value) for m in messages]
            matrix = np.zeros((len(transactions), n_features), dtype=np.float32)
            matrix[:, 0] = [tx.amount for tx in transactions]
            scores = model.score(matrix)
            scored_at = rfc3339(datetime.now(UTC))
            deliveries = []
            for tx, score in zip(transactions, scores.tolist(), strict=True):
                record = contracts.ScoreRecord(
                    event_id=tx.transaction_id,
                    event_type="transaction",
                    entity_id=tx.customer_id,
                    model=model.name,
                    model_version=model.version,
                    score=score,
                    event_timestamp=rfc3339(tx.timestamp),
                    scored_at=scored_at,
                )
                value = contracts.encode(record)
                deliveries.append(
                    await producer.send(out_topic, value, key=tx.transaction_id.encode())
                )
            await asyncio.gather(*deliveries)
            await consumer.commit()
            done += len(messages)
        last, cpu_last, broker_last = time.time(), os.times(), cpu_seconds(broker_pid)
    finally:
        await consumer.stop()
        await producer.stop()
    return {
        "events": done,
        "seconds": last - first,
        "cpu_seconds": (cpu_last.user + cpu_last.system) - (cpu_first.user + cpu_first.system),
        "system_seconds": cpu_last.system - cpu_first.system,
        "broker_cpu_seconds": broker_last - broker_first,
        "join_seconds": first - started,
    }


def main() -> None:
    import uvloop

    bootstrap, topic, events, broker_pid = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    result = uvloop.run(ceiling(bootstrap, topic, events, broker_pid))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
