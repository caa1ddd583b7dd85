"""Labels joined to published alerts (riskstream.label_join): the rules, and a real worker whose
true/false positive and missed-fraud counts equal those computed from what it published, on
synthetic transactions and on three weeks of the Fraud Detection Handbook."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from stream_support import StreamEnv, WorkerProcess, collect, metric_value

from riskstream.config import KafkaSettings
from riskstream.demo import BUNDLED_MODELS
from riskstream.history import TransactionHistory, load_transactions
from riskstream.kafka import read_to_end
from riskstream.label_join import DAY, LabelJoin
from riskstream.replay import publish, transaction_events
from riskstream.simulate import generate_transactions


def _join() -> tuple[LabelJoin, Counter]:
    counts: Counter = Counter()
    return LabelJoin(lambda m, v, outcome: counts.update([(m, v, outcome)])), counts


def test_an_alert_meets_its_label_whichever_comes_first() -> None:
    join, counts = _join()
    join.scored("t1", 0.0, "fraud", "v1", alert=True)
    join.labelled("t1", 0.0, fraud=True)  # alert, then its chargeback
    join.labelled("t2", 1.0, fraud=True)  # a chargeback before its transaction was scored
    join.scored("t2", 1.0, "fraud", "v1", alert=True)
    join.scored("t3", 2.0, "fraud", "v1", alert=False)
    join.labelled("t3", 2.0, fraud=True)  # missed
    join.scored("t4", 3.0, "fraud", "v1", alert=True)
    join.labelled("t4", 3.0, fraud=False)  # a genuine label
    assert counts == {
        ("fraud", "v1", "true_positive"): 2,
        ("fraud", "v1", "false_negative"): 1,
        ("fraud", "v1", "false_positive"): 1,
    }
    assert join.awaiting == 0


def test_what_waits_past_the_window_is_settled() -> None:
    join, counts = _join()
    join.scored("old-alert", 0.0, "fraud", "v1", alert=True)
    join.scored("quiet", 0.0, "fraud", "v1", alert=False)
    join.labelled("ghost", 0.0, fraud=True)  # its transaction is never scored here
    join.scored("recent", 7 * DAY, "fraud", "v2", alert=True)
    join.scored_up_to(7 * DAY, "fraud", "v2")
    assert not counts and join.awaiting == 2  # within the 8-day window
    join.scored_up_to(8.5 * DAY, "fraud", "v2")
    assert counts == {("fraud", "v1", "false_positive"): 1, ("fraud", "v2", "false_negative"): 1}
    assert join.awaiting == 1
    join.labelled("quiet", 0.0, fraud=True)  # too late: its score was forgotten
    join.scored_up_to(20 * DAY, "fraud", "v2")
    assert counts[("fraud", "v2", "false_negative")] == 2  # the late label, unscored, expired
    assert counts[("fraud", "v2", "false_positive")] == 1  # "recent"


def test_a_workers_counts_equal_those_computed_from_what_it_published(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    history = generate_transactions(
        n_customers=300, n_terminals=600, start=date(2025, 1, 1), days=40, seed=11
    )
    env = StreamEnv(kafka_bootstrap, BUNDLED_MODELS, tmp_path)
    _replay_and_compare(env, history, np.arange(len(history)))


def test_on_the_handbook_live_precision_equals_offline(
    kafka_bootstrap: str, handbook_csv: Path, tmp_path: Path
) -> None:
    history = load_transactions(handbook_csv)
    rows = np.flatnonzero(history.between(date(2018, 6, 1), date(2018, 6, 21)))
    env = StreamEnv(kafka_bootstrap, BUNDLED_MODELS, tmp_path)
    _replay_and_compare(env, history, rows)


def _replay_and_compare(env: StreamEnv, history: TransactionHistory, rows: np.ndarray) -> None:
    """Replay `rows` with their chargebacks 7 days late, then compare the worker's counts with
    those computed from the alerts it published and the chargebacks sent."""
    settings = env.settings()
    events = list(
        transaction_events(
            history, rows, settings.topics.transactions, settings.topics.labels, "fraud", 7.0
        )
    )
    frauds = {
        json.loads(e.value)["transaction_id"] for e in events if e.topic == settings.topics.labels
    }
    # Published before the worker starts, as a backlog: labels then reach the terminal stage
    # within the watermarks' order. (Published while it runs, a sparse label partition can be
    # caught up for a moment, transactions run days ahead, and a chargeback that comes after the
    # window counts as a false positive and a missed fraud, as it would live.)
    asyncio.run(publish(settings, iter(events), show_progress=False))
    worker = WorkerProcess(env).start()
    try:
        worker.wait_assigned()
        collect(
            settings,
            settings.topics.scores,
            lambda seen: len(seen) >= len(rows),
            600,
            lambda value, _key: json.loads(value)["event_id"],
            stall_after=60,
            evidence=worker.evidence,
        )
        kafka = KafkaSettings(bootstrap_servers=env.bootstrap)
        alerts = {
            json.loads(m.value)["event_id"]
            for m in asyncio.run(read_to_end(kafka, settings.topics.alerts))
        }
        deadline = time.monotonic() + 30
        while True:
            text = worker.metrics()
            if count_of(text, "true_positive") + count_of(text, "false_negative") >= len(frauds):
                break
            assert time.monotonic() < deadline, worker.evidence()
            time.sleep(0.5)
    finally:
        worker.stop()
    assert frauds and alerts, "the replay has chargebacks and the model alerts"
    true_positives = count_of(text, "true_positive")
    false_positives = count_of(text, "false_positive")
    assert true_positives == len(alerts & frauds)
    assert count_of(text, "false_negative") == len(frauds - alerts)
    awaiting = metric_value(text, "riskstream_alerts_awaiting_label", model="fraud")
    assert false_positives + awaiting == len(alerts - frauds)
    assert false_positives > 0, "alerts older than the window were settled"
    # Precision over the settled alerts, offline: the same alerts less those still waiting.
    settled = len(alerts) - awaiting
    assert true_positives / (true_positives + false_positives) == pytest.approx(
        len(alerts & frauds) / settled
    )


def count_of(text: str, outcome: str) -> float:
    return metric_value(text, "riskstream_label_outcomes_total", outcome=outcome)
