"""Drift (riskstream.drift): the index's arithmetic, the card's reference bins, the rolling
window, and a real worker whose credit requests shift (income ×3) reporting the shift in
`riskstream_feature_psi` past the alert rule's 0.25 while the other inputs stay below 0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
from stream_support import WorkerProcess, metric_value
from test_model_swap import credit_env

from riskstream.credit_table import HEADER, simulate_credit, write_credit
from riskstream.demo import BUNDLED_MODELS
from riskstream.drift import DriftWindow, bin_counts, psi, reference_bins
from riskstream.replay import publish, request_events

SHIFTED = "MonthlyIncome"
BUNDLED_FEATURES = HEADER[2:]  # the shipped credit model's inputs: the table less id and label


def test_psi_is_zero_for_equal_shares_and_follows_the_formula() -> None:
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    expected, actual = np.array([0.6, 0.4]), np.array([0.3, 0.7])
    by_hand = (0.3 - 0.6) * np.log(0.3 / 0.6) + (0.7 - 0.4) * np.log(0.7 / 0.4)
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert np.isfinite(psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))  # empty bins: floored


def test_reference_bins_are_one_per_value_or_deciles_and_count_missing() -> None:
    counts = reference_bins(np.array([0.0, 1.0, 1.0, 2.0, np.nan]))
    assert counts["edges"] == [0.5, 1.5]
    assert counts["expected"] == [0.2, 0.4, 0.2] and counts["missing"] == 0.2
    spread = reference_bins(np.random.default_rng(0).normal(size=10_000))
    assert len(spread["edges"]) == 9 and np.allclose(spread["expected"], 0.1, atol=0.01)
    assert bin_counts(np.array([-5.0, 0.5, 9.0]), [0.0, 1.0])[0].tolist() == [1, 1, 1]


def test_the_window_forgets_rows_older_than_its_size() -> None:
    rng = np.random.default_rng(1)
    card = {
        "features": ["x"],
        "drift": {
            "features": [reference_bins(rng.normal(size=5000))],
            "score": reference_bins(rng.random(5000)),
        },
    }
    window = DriftWindow(card, window=1000, chunk=100, min_rows=500)
    assert window.indexes() is None
    for _ in range(10):
        window.observe(rng.normal(3, 1, (100, 1)), rng.random(100))
    assert window.indexes()[0]["x"] > 1.0  # shifted
    for _ in range(12):
        window.observe(rng.normal(0, 1, (100, 1)), rng.random(100))
    assert window.indexes()[0]["x"] < 0.05  # the shifted rows have left the window


def _requests_file(path: Path, seed: int, income_factor: float, rows: int = 1500) -> Path:
    table = simulate_credit(rows, seed)
    numbers = dict(table.numbers)
    numbers[SHIFTED] = numbers[SHIFTED] * income_factor
    write_credit(path, dataclasses.replace(table, numbers=numbers))
    return path


def test_a_worker_reports_a_shifted_input_and_not_the_others(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = credit_env(kafka_bootstrap, BUNDLED_MODELS, tmp_path, RISKSTREAM_DRIFT_WINDOW="1000")
    settings = env.settings()
    worker = WorkerProcess(env).start()

    def send(path: Path) -> None:
        total, events = request_events(path, BUNDLED_MODELS, "credit", settings.topics.requests)
        asyncio.run(publish(settings, events, total=total, show_progress=False))

    def indexes(after_scored: float) -> dict[str, float]:
        """PSI per input, once the worker scored `after_scored` requests and reported since."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            worker.assert_not_stalled()
            text = worker.metrics()
            if metric_value(text, "riskstream_events_total", outcome="scored") >= after_scored:
                time.sleep(1.2)  # drift is reported at most every second: one more batch
                send(tmp_path / "nudge.csv")
                time.sleep(1.0)
                text = worker.metrics()
                names = BUNDLED_FEATURES
                return {n: metric_value(text, "riskstream_feature_psi", feature=n) for n in names}
            time.sleep(0.3)
        raise AssertionError(f"not scored in time:\n{worker.evidence()}")

    try:
        worker.wait_assigned()
        _requests_file(tmp_path / "nudge.csv", 9, 1.0, rows=40)  # a batch after the report gap
        send(_requests_file(tmp_path / "same.csv", 3, 1.0))
        steady = indexes(1500)
        send(_requests_file(tmp_path / "shifted.csv", 4, 3.0))
        shifted = indexes(3040)  # and the first nudge's 40
    finally:
        worker.stop()
    assert max(steady.values()) < 0.1, steady
    # The window (the last 1,000 rows) holds the shifted file's last rows and the small nudge.
    assert shifted[SHIFTED] >= 0.25, shifted
    assert max(v for k, v in shifted.items() if k != SHIFTED) < 0.1, shifted
