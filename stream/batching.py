"""Micro-batching: one onnxruntime call per batch, outputs acknowledged before inputs are.

Events join a batch as they are processed; the batch is scored when it is full or when its
oldest event has waited `max_wait` seconds. Input events are acknowledged (so Faust may commit
their offsets) only after the broker acknowledged every score and alert built from them:
a worker killed at any point loses nothing, it can only score an event twice, and a re-scored
event yields the same alert id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from riskstream import contracts
from riskstream.alerts import build_alert
from riskstream.pipeline import PendingScore, rfc3339

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[Any]]


class Sink(Protocol):
    """Where records go: sends one message and returns an awaitable of its delivery."""

    async def __call__(self, key: bytes, value: bytes) -> Awaitable[Any]: ...


class Scorer(Protocol):
    name: str
    version: str
    threshold: float

    def score(self, matrix: np.ndarray) -> np.ndarray: ...
    def explain(self, matrix: np.ndarray) -> list[list[Any]]: ...
    def severity(self, score: float) -> str | None: ...


class BatchObserver(Protocol):
    def observe_batch(
        self,
        model: str,
        size: int,
        inference_seconds: float,
        scores: Sequence[float],
        latencies: Sequence[float],
    ) -> None: ...
    def alert(self, model: str, severity: str) -> None: ...
    def count_events(self, topic: str, outcome: str, n: int = 1) -> None: ...


class MicroBatcher:
    """Collects pending scores for one model and flushes them as one inference call."""

    def __init__(
        self,
        scorer: Scorer,
        scores_sink: Sink,
        alerts_sink: Sink,
        observer: BatchObserver,
        source_topic: str,
        *,
        max_rows: int = 512,
        max_wait: float = 0.02,
    ) -> None:
        self.scorer = scorer
        self.scores_sink = scores_sink
        self.alerts_sink = alerts_sink
        self.observer = observer
        self.source_topic = source_topic
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._items: list[PendingScore] = []
        self._acks: list[Ack] = []
        self._oldest = 0.0
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._items)

    async def add(self, item: PendingScore, ack: Ack) -> None:
        if not self._items:
            self._oldest = time.monotonic()
        self._items.append(item)
        self._acks.append(ack)
        if len(self._items) >= self.max_rows:
            await self.flush()

    async def flush_if_due(self) -> None:
        """Called by a timer: score a partial batch whose oldest event waited long enough."""
        if self._items and time.monotonic() - self._oldest >= self.max_wait:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            items, acks = self._items, self._acks
            self._items, self._acks = [], []
            if items:
                await self._score_and_publish(items)
                for ack in acks:
                    await ack()

    async def _score_and_publish(self, items: list[PendingScore]) -> None:
        matrix = np.asarray([item.vector for item in items], dtype=np.float32)
        started = time.perf_counter()
        scores = self.scorer.score(matrix)
        inference_seconds = time.perf_counter() - started
        scored_at = rfc3339(datetime.now(UTC))
        records = [
            self._score_record(item, float(s), scored_at)
            for item, s in zip(items, scores, strict=True)
        ]
        deliveries = [
            await self.scores_sink(record.event_id.encode(), contracts.encode(record))
            for record in records
        ]
        alerting = [i for i, record in enumerate(records) if record.score >= self.scorer.threshold]
        if alerting:
            explanations = self.scorer.explain(matrix[alerting])
            for row, why in zip(alerting, explanations, strict=True):
                alert = build_alert(
                    records[row],
                    self.scorer.threshold,
                    self.scorer.severity(records[row].score) or "medium",
                    [_reason(reason) for reason in why],
                )
                deliveries.append(
                    await self.alerts_sink(alert.alert_id.encode(), contracts.encode(alert))
                )
                self.observer.alert(alert.model, alert.severity)
        await asyncio.gather(*deliveries)
        now_ms = time.time() * 1000.0
        sources_ms = np.fromiter(
            (item.source_timestamp_ms for item in items), np.float64, len(items)
        )
        latencies = np.maximum(0.0, (now_ms - sources_ms) / 1000.0)
        self.observer.observe_batch(
            self.scorer.name, len(items), inference_seconds, scores, latencies
        )
        self.observer.count_events(self.source_topic, "scored", len(items))

    def _score_record(
        self, item: PendingScore, score: float, scored_at: str
    ) -> contracts.ScoreRecord:
        return contracts.ScoreRecord(
            event_id=item.event_id,
            event_type=item.event_type,
            entity_id=item.entity_id,
            model=self.scorer.name,
            model_version=self.scorer.version,
            score=score,
            event_timestamp=item.event_timestamp,
            scored_at=scored_at,
        )


def _reason(reason: Any) -> contracts.Reason:
    """The record form of a scoring explanation (feature, its value, how much it added)."""
    return contracts.Reason(
        feature=reason.feature, value=float(reason.value), contribution=float(reason.contribution)
    )
