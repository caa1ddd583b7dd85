"""The numpy metrics against hand-computed cases and brute-force / pandas references."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from riskstream.training.metrics import (
    average_precision,
    best_f1_threshold,
    card_precision_top_k,
    precision_target_threshold,
    roc_auc,
)


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half, over all pairs."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (pos.size * neg.size)


def brute_force_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """sum over distinct thresholds t (high to low) of (R(t) − R(prev)) × P(t)."""
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores.tolist()), reverse=True):
        alerted = scores >= threshold
        true_pos = np.sum(alerted & (labels == 1))
        recall = true_pos / labels.sum()
        total += (recall - previous_recall) * true_pos / alerted.sum()
        previous_recall = recall
    return total


def test_auc_hand_computed() -> None:
    # Pairs (pos, neg): (0.8,0.1) win, (0.8,0.4) win, (0.35,0.1) win, (0.35,0.4) loss -> 3/4.
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(labels, scores) == pytest.approx(0.75)


def test_auc_ties_count_half() -> None:
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.2, 0.2, 0.1, 0.9])) == pytest.approx(
        (1 + 0.5 + 1 + 1) / 4
    )


def test_auc_single_class_is_nan() -> None:
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_ap_hand_computed() -> None:
    # Ranked: 0.8 (pos) P=1 R=.5 ; 0.4 (neg) ; 0.35 (pos) P=2/3 R=1 ; 0.1 (neg)
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    assert average_precision(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_ap_tied_scores_flip_together() -> None:
    # One threshold covers all rows: P = 1/2, R = 1.
    assert average_precision(np.array([1, 0]), np.array([0.3, 0.3])) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(120) < 0.2).astype(np.int8)
    labels[0] = 1
    scores = np.round(rng.random(120) + 0.3 * labels, 1)  # rounding creates many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))
    assert average_precision(labels, scores) == pytest.approx(brute_force_ap(labels, scores))


def test_labels_must_be_binary() -> None:
    with pytest.raises(ValueError):
        roc_auc(np.array([0, 2]), np.array([0.1, 0.2]))


def handbook_card_precision(frame: pd.DataFrame, top_k: int) -> tuple[list[int], list[float]]:
    """The handbook's own pandas implementation (shared functions of its Chapter 3/4)."""
    detected: list = []
    per_day: list[float] = []
    compromised: list[int] = []
    for day in sorted(frame["day"].unique()):
        day_frame = frame[frame["day"] == day][["predictions", "customer", "fraud"]]
        day_frame = day_frame[~day_frame["customer"].isin(detected)]
        compromised.append(len(day_frame[day_frame["fraud"] == 1]["customer"].unique()))
        top = (
            day_frame.groupby("customer")
            .max()
            .sort_values(by="predictions", ascending=False)
            .reset_index(drop=False)
            .head(top_k)
        )
        found = list(top[top["fraud"] == 1]["customer"])
        per_day.append(len(found) / top_k)
        detected.extend(found)
    return compromised, per_day


def test_card_precision_hand_computed() -> None:
    # Day 0: cards a (max .9, fraud), b (.8, legit), c (.1, fraud). Top-2 = a, b -> 1/2.
    # Day 1: a is left out (detected); b (.95, fraud), c (.2, legit). Top-2 = b, c -> 1/2.
    customers = np.array(["a", "a", "b", "c", "a", "b", "c"], dtype=object)
    days = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.99, 0.95, 0.2])
    labels = np.array([0, 1, 0, 1, 1, 1, 0])
    result = card_precision_top_k(labels, scores, customers, days, k=2)
    assert result.per_day == (0.5, 0.5)
    assert result.compromised_per_day == (2, 1)
    assert result.mean == pytest.approx(0.5)
    # Without removal, day 1's top-2 is a (.99) and b (.95), both compromised.
    kept = card_precision_top_k(labels, scores, customers, days, k=2, remove_detected=False)
    assert kept.per_day == (0.5, 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_card_precision_matches_handbook_pandas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    customers = rng.integers(0, 400, n)
    days = np.sort(rng.integers(0, 7, n))
    labels = (rng.random(n) < 0.05).astype(np.int8)
    scores = rng.random(n) + 0.5 * labels  # continuous: no ties, so orderings agree exactly
    frame = pd.DataFrame(
        {"customer": customers, "day": days, "fraud": labels, "predictions": scores}
    )
    compromised, per_day = handbook_card_precision(frame, top_k=20)
    result = card_precision_top_k(labels, scores, customers, days, k=20)
    assert list(result.per_day) == pytest.approx(per_day)
    assert list(result.compromised_per_day) == compromised
    assert result.mean == pytest.approx(np.mean(per_day))


def test_best_f1_threshold() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.9])
    threshold, f1 = best_f1_threshold(labels, scores)
    # Alert >= 0.3: 3 TP, 1 FP, 0 FN -> F1 = 6/7, the best of all cut points.
    assert threshold == pytest.approx(0.3)
    assert f1 == pytest.approx(6 / 7)


def test_precision_target_threshold_takes_lowest_qualifying_score() -> None:
    labels = np.array([1, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    threshold, recall = precision_target_threshold(labels, scores, 0.75)
    assert threshold == pytest.approx(0.6)  # 3 of 4 alerts are fraud
    assert recall == pytest.approx(1.0)
