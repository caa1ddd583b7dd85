"""How good the alerts turned out: fraud labels joined to the scores that were published.

Why. A fraud team judges its model by its alerts' precision once the chargebacks are in, a week
or more after the alert; the scores alone say nothing about that.

What. The fraud stage scores a transaction (and publishes its alert, if any), and every
worker's terminal replica reads every label (riskstream.terminal_replica). A label may arrive
before its transaction is scored (labels are applied at once, transactions wait for the
watermarks), so both sides wait for each other. `LabelJoin` counts, per model version:
  - true positive: a fraud label for an alerted transaction;
  - false positive: a genuine label for an alerted transaction, or no fraud label within
    `window_seconds` of event time after it (labels are chargebacks: most genuine transactions
    never get one). The event-time clock is the newest transaction the worker scored;
  - false negative: a fraud label for a transaction scored without an alert (or, where one
    join sees only its own worker's labels, never scored within the window; the worker's join
    sees every worker's labels, so there a label no score of its own met is not counted).
`riskstream_label_outcomes_total{model,version,outcome}` carries the counts and
`riskstream_alerts_awaiting_label{model}` the alerts still open; precision over any window of
label time is increase(TP) / increase(TP + FP). Memory is bounded: what waits is dropped once the
clock passes the window, and at `max_entries` per side the oldest goes first. Counts are per
worker process, each for the transactions it scored.

Pinned by tests/test_label_join.py: the rules, and a real worker replaying labelled synthetic
transactions whose counts equal those computed from the alerts and labels published.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

DAY = 86_400.0
DEFAULT_WINDOW_SECONDS = 8 * DAY  # the 7-day label delay and a day of slack

Outcome = Callable[[str, str, str], None]  # (model, version, outcome)


class _Waiting:
    """Entries keyed by transaction id, oldest event time first (insertion order)."""

    def __init__(self, max_entries: int) -> None:
        self.entries: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.max_entries = max_entries

    def add(self, key: str, value: Any) -> Any | None:
        """Add; returns the entry evicted to stay within max_entries, if any."""
        self.entries[key] = value
        if len(self.entries) > self.max_entries:
            return self.entries.popitem(last=False)[1]
        return None

    def older_than(self, horizon: float) -> list[Any]:
        """Remove and return the entries whose event time (first item) is before horizon."""
        gone = []
        while self.entries:
            key, value = next(iter(self.entries.items()))
            if value[0] >= horizon:
                break
            del self.entries[key]
            gone.append(value)
        return gone


class LabelJoin:
    """Scores and labels waiting for each other."""

    def __init__(
        self,
        outcome: Outcome,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        max_entries: int = 500_000,
        *,
        settle_unscored_labels: bool = True,
    ) -> None:
        self.outcome = outcome  # e.g. WorkerMetrics.label_outcome
        self.window = window_seconds
        # False where labels of transactions other workers score reach this join too.
        self.settle_unscored_labels = settle_unscored_labels
        self._alerts = _Waiting(max_entries)  # id -> (event time, model, version)
        self._quiet = _Waiting(max_entries)  # scored without an alert: same
        self._labels = _Waiting(max_entries)  # labelled before scored: id -> (event time, fraud)
        self._clock = float("-inf")

    @property
    def awaiting(self) -> int:
        """Alerts with no label yet."""
        return len(self._alerts.entries)

    def scored(
        self, event_id: str, event_time: float, model: str, version: str, alert: bool
    ) -> None:
        label = self._labels.entries.pop(event_id, None)
        if label is not None:
            self._resolve(model, version, alert, label[1])
            return
        evicted = (self._alerts if alert else self._quiet).add(
            event_id, (event_time, model, version)
        )
        if evicted is not None and alert:
            self.outcome(evicted[1], evicted[2], "false_positive")

    def labelled(self, event_id: str, transaction_time: float, fraud: bool) -> None:
        for waiting, alert in ((self._alerts, True), (self._quiet, False)):
            scored = waiting.entries.pop(event_id, None)
            if scored is not None:
                self._resolve(scored[1], scored[2], alert, fraud)
                return
        self._labels.add(event_id, (transaction_time, fraud))

    def labelled_from(self, label: Any) -> None:
        """`labelled` for a forwarded label (riskstream.pipeline.ForwardedLabel)."""
        self.labelled(label.transaction_id, label.transaction_timestamp, label.fraud)

    def scored_up_to(self, event_time: float, model: str, version: str) -> None:
        """Scored up to `event_time`: what waited longer than the window is
        settled (an alert without a fraud label was a false one; a fraud label whose
        transaction was never scored here, a missed fraud)."""
        if event_time <= self._clock:
            return
        self._clock = event_time
        horizon = event_time - self.window
        for _, alert_model, alert_version in self._alerts.older_than(horizon):
            self.outcome(alert_model, alert_version, "false_positive")
        self._quiet.older_than(horizon)
        for _, fraud in self._labels.older_than(horizon):
            if fraud and self.settle_unscored_labels:
                self.outcome(model, version, "false_negative")

    def _resolve(self, model: str, version: str, alert: bool, fraud: bool) -> None:
        if alert:
            self.outcome(model, version, "true_positive" if fraud else "false_positive")
        elif fraud:
            self.outcome(model, version, "false_negative")
