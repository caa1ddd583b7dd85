"""Scoring a batch: one onnxruntime call, its score records and alerts queued in an outbox.

A batch handler (riskstream.batch_hook) collects the events of one fetched partition batch that
are ready to be scored, scores them here in one inference call (split at `max_rows`), queues a
score record for every event and an alert with its reasons for every score at or above the
model's threshold in the batch's outbox (riskstream.outbox), and records the batch's metrics
once the broker acknowledged them. The handler acknowledges its input offsets only after that
(riskstream.batch_hook.ack_when_delivered): a worker killed at any point loses nothing, it can
only score an event twice, and a re-scored event yields the same alert id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from riskstream import contracts
from riskstream.alerts import build_alert
from riskstream.drift import DriftWindow
from riskstream.outbox import Outbox
from riskstream.pipeline import PendingScore, rfc3339

log = logging.getLogger(__name__)


class Scorer(Protocol):
    name: str
    version: str
    threshold: float

    def score(self, matrix: np.ndarray) -> np.ndarray: ...
    def explain(self, matrix: np.ndarray) -> list[list[Any]]: ...
    def severity(self, score: float) -> str | None: ...


DRIFT_REPORT_SECONDS = 1.0


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
    def set_drift(self, model: str, features: dict[str, float], score: float) -> None: ...


def all_of(calls: Sequence[Callable[[], None]]) -> Callable[[], None]:
    """One callable that calls each of `calls` in order (a batch's metrics, once delivered)."""

    def call_all() -> None:
        for call in calls:
            call()

    return call_all


class BatchScorer:
    """Scores batches for one model and queues their records."""

    def __init__(
        self,
        scorer: Scorer,
        observer: BatchObserver,
        source_topic: str,
        scores_topic: str,
        alerts_topic: str,
        *,
        max_rows: int = 512,
        drift_window: int = 0,
        shadow_topic: str | None = None,
    ) -> None:
        self.scorer = scorer
        self.observer = observer
        self.source_topic = source_topic
        self.scores_topic = scores_topic
        self.alerts_topic = alerts_topic
        self.max_rows = max(1, max_rows)
        # A challenger version scoring the same rows in shadow (riskstream.model_swap): its
        # score records go to `shadow_topic`, never to alerts.
        self.shadow: Scorer | None = None
        self.shadow_topic = shadow_topic
        # The model's inputs and scores against its card's training distribution (riskstream.
        # drift), reported at most every DRIFT_REPORT_SECONDS: cheap per batch, not per event.
        self.drift_window = drift_window
        self.drift = DriftWindow.for_card(getattr(scorer, "card", {}), drift_window)
        self._drift_reported = 0.0

    def serve(self, scorer: Scorer) -> None:
        """Score from the next batch on with `scorer` (a new version: its drift starts anew)."""
        self.scorer = scorer
        self.drift = DriftWindow.for_card(getattr(scorer, "card", {}), self.drift_window)

    def score_into(
        self,
        items: Sequence[PendingScore],
        outbox: Outbox,
        alerted: list[contracts.ScoreRecord] | None = None,
    ) -> Callable[[], None]:
        """Score `items`, queue their records in `outbox` (and the score records that alert in
        `alerted`, when given); returns what records the batch's metrics, to call once the
        outbox was delivered."""
        return all_of(
            [
                self._score_rows(items[start : start + self.max_rows], outbox, alerted)
                for start in range(0, len(items), self.max_rows)
            ]
        )

    def _score_rows(
        self,
        items: Sequence[PendingScore],
        outbox: Outbox,
        alerted: list[contracts.ScoreRecord] | None = None,
    ) -> Callable[[], None]:
        matrix = np.asarray([item.vector for item in items], dtype=np.float32)
        started = time.perf_counter()
        scores = self.scorer.score(matrix)
        inference_seconds = time.perf_counter() - started
        scored_at = rfc3339(datetime.now(UTC))
        records = [
            self._score_record(item, float(s), scored_at)
            for item, s in zip(items, scores, strict=True)
        ]
        for record in records:
            outbox.add(self.scores_topic, record.event_id.encode(), contracts.encode(record))
        if self.drift is not None:
            self._watch_drift(self.drift, matrix, scores)
        if self.shadow is not None and self.shadow_topic is not None:
            self._queue_shadow(self.shadow, self.shadow_topic, items, matrix, scored_at, outbox)
        alerting = [i for i, record in enumerate(records) if record.score >= self.scorer.threshold]
        if alerting:
            self._queue_alerts([records[i] for i in alerting], matrix[alerting], outbox)
            if alerted is not None:
                alerted.extend(records[i] for i in alerting)
        sources_ms = np.fromiter((item.source_timestamp_ms for item in items), np.float64)

        def observe() -> None:
            latencies = np.maximum(0.0, (time.time() * 1000.0 - sources_ms) / 1000.0)
            self.observer.observe_batch(
                self.scorer.name, len(items), inference_seconds, scores, latencies
            )
            self.observer.count_events(self.source_topic, "scored", len(items))

        return observe

    def _watch_drift(self, drift: DriftWindow, matrix: np.ndarray, scores: np.ndarray) -> None:
        drift.observe(matrix, scores)
        now = time.monotonic()
        if now - self._drift_reported < DRIFT_REPORT_SECONDS:
            return
        self._drift_reported = now
        indexes = drift.indexes()
        if indexes is not None:
            self.observer.set_drift(self.scorer.name, *indexes)

    def _queue_shadow(
        self,
        shadow: Scorer,
        topic: str,
        items: Sequence[PendingScore],
        matrix: np.ndarray,
        scored_at: str,
        outbox: Outbox,
    ) -> None:
        for item, score in zip(items, shadow.score(matrix), strict=True):
            record = self._score_record(item, float(score), scored_at, shadow)
            outbox.add(topic, record.event_id.encode(), contracts.encode(record))

    def _queue_alerts(
        self, records: list[contracts.ScoreRecord], matrix: np.ndarray, outbox: Outbox
    ) -> None:
        for record, why in zip(records, self.scorer.explain(matrix), strict=True):
            alert = build_alert(
                record,
                self.scorer.threshold,
                self.scorer.severity(record.score) or "medium",
                [_reason(reason) for reason in why],
            )
            outbox.add(self.alerts_topic, alert.alert_id.encode(), contracts.encode(alert))
            self.observer.alert(alert.model, alert.severity)

    def _score_record(
        self, item: PendingScore, score: float, scored_at: str, scorer: Scorer | None = None
    ) -> contracts.ScoreRecord:
        scorer = scorer or self.scorer
        return contracts.ScoreRecord(
            event_id=item.event_id,
            event_type=item.event_type,
            entity_id=item.entity_id,
            model=scorer.name,
            model_version=scorer.version,
            score=score,
            event_timestamp=item.event_timestamp,
            scored_at=scored_at,
        )


def _reason(reason: Any) -> contracts.Reason:
    """The record form of a scoring explanation (feature, its value or None, how much it
    added)."""
    value = None if reason.value is None else float(reason.value)
    return contracts.Reason(
        feature=reason.feature, value=value, contribution=float(reason.contribution)
    )
