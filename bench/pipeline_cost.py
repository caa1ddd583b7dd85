"""The product's own per-event code alone, without Kafka or Faust: the floor of the worker's cost.

The same functions the batch handlers call, on the same events, with plain dicts as tables:
stage 1 (`ingest_transaction`: decode, validate, customer state in and out of bytes,
features), the terminal history (msgpack encode of the forward, and the terminal replica's
decode and store: riskstream.terminal_replica), the terminal features and full vector
(`TerminalReplica.score`), and the micro-batch (one ONNX call per 512 events, score records
built and encoded). CPU time per event, best of three passes over fresh tables.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import numpy as np
from dataset import Dataset

from riskstream import contracts, pipeline
from riskstream.demo import BUNDLED_MODELS
from riskstream.scoring import Model, load_model
from riskstream.terminal_replica import TerminalReplica
from riskstream.watermarks import CAUGHT_UP

BATCH = 512


@dataclasses.dataclass(frozen=True)
class PipelineCost:
    events: int
    stage1_us: float
    history_us: float
    features_us: float
    batch_us: float

    @property
    def total_us(self) -> float:
        return self.stage1_us + self.history_us + self.features_us + self.batch_us


def _one_pass(messages: list[tuple[bytes, bytes]], model: Model) -> tuple[float, ...]:
    customers: dict[bytes, bytes] = {}
    replica: TerminalReplica[None] = TerminalReplica(1, [("transactions", 0)])
    replica.apply(
        0, pipeline.encode_forwarded(pipeline.ForwardedWatermark("transactions", 0, CAUGHT_UP))
    )
    clock = time.process_time
    t0 = clock()
    forwarded = [pipeline.ingest_transaction(value, key, 0, customers) for key, value in messages]
    t1 = clock()
    for message in forwarded:
        replica.apply(0, pipeline.encode_forwarded(message))
    t2 = clock()
    pending = [replica.score(message) for message in forwarded]
    t3 = clock()
    for start in range(0, len(pending), BATCH):
        items = pending[start : start + BATCH]
        matrix = np.asarray([item.vector for item in items], dtype=np.float32)
        scores = model.score(matrix)
        scored_at = pipeline.rfc3339(datetime.now(UTC))
        for item, score in zip(items, scores.tolist(), strict=True):
            contracts.encode(
                contracts.ScoreRecord(
                    event_id=item.event_id,
                    event_type=item.event_type,
                    entity_id=item.entity_id,
                    model="fraud",
                    model_version="bench",
                    score=score,
                    event_timestamp=item.event_timestamp,
                    scored_at=scored_at,
                )
            )
    t4 = clock()
    return t1 - t0, t2 - t1, t3 - t2, t4 - t3


def measure_pipeline(dataset: Dataset, passes: int = 3) -> PipelineCost:
    model = load_model(BUNDLED_MODELS, "fraud")
    messages = [(o.key, o.value) for o in dataset.outgoing("transactions", "labels")]
    best = min((_one_pass(messages, model) for _ in range(passes)), key=sum)
    per_event = [seconds / len(messages) * 1e6 for seconds in best]
    return PipelineCost(len(messages), *per_event)
