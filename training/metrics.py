"""Ranking metrics (fraud, market, binary tabular models) and Poisson deviance (claim counts),
in numpy only.

`riskstream evaluate` must run where TensorFlow and scikit-learn are not installed, so the
metrics are written here; their definitions follow scikit-learn (ROC AUC with tied scores
counted as half, average precision as the step-wise area under the precision/recall curve) and
the Fraud Detection Handbook (card precision top-k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _as_binary(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return y.astype(np.int8)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (what Mann-Whitney needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], sorted_values.size]
    mean_rank_of_run = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank_of_run, ends - starts)
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = _as_binary(labels)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError("labels and scores must have the same length")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    rank_sum_pos = ranks[y == 1].sum()
    return float((rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_recall_points(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at every distinct score, highest threshold first."""
    y = _as_binary(labels)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError("labels and scores must have the same length")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # The last index of each run of equal scores: all tied rows flip together.
    last_of_run = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    true_pos = np.cumsum(y_sorted)[last_of_run].astype(np.float64)
    predicted_pos = (last_of_run + 1).astype(np.float64)
    n_pos = float(y.sum())
    precision = true_pos / predicted_pos
    recall = true_pos / n_pos if n_pos > 0 else np.full_like(true_pos, np.nan)
    return precision, recall, s_sorted[last_of_run]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Sum over thresholds of precision × recall gained; NaN without positives."""
    y = _as_binary(labels)
    if y.sum() == 0:
        return float("nan")
    precision, recall, _ = precision_recall_points(y, scores)
    recall_gain = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_gain * precision))


@dataclass(frozen=True)
class CardPrecision:
    """Card precision top-k over several days, as the handbook reports it."""

    mean: float
    per_day: tuple[float, ...]
    compromised_per_day: tuple[int, ...]


def _day_top_k_detected(
    scores: np.ndarray, labels: np.ndarray, customer_codes: np.ndarray, k: int
) -> np.ndarray:
    """Codes of the compromised customers among the day's k highest max-scores (one row per
    customer; ties keep customer order, as a stable sort of the grouped frame would)."""
    unique_codes, inverse = np.unique(customer_codes, return_inverse=True)
    max_score = np.full(unique_codes.size, -np.inf)
    np.maximum.at(max_score, inverse, scores)
    max_label = np.zeros(unique_codes.size, dtype=np.int8)
    np.maximum.at(max_label, inverse, labels)
    top = np.argsort(-max_score, kind="mergesort")[:k]
    return unique_codes[top[max_label[top] == 1]]


def card_precision_top_k(
    labels: np.ndarray,
    scores: np.ndarray,
    customers: np.ndarray,
    days: np.ndarray,
    k: int = 100,
    remove_detected: bool = True,
) -> CardPrecision:
    """The handbook's CP@k: per day, the share of compromised cards among the k most
    suspicious cards (a card's score is its highest transaction score of the day, its label
    whether it had any fraud that day); cards detected on an earlier day are left out of later
    days, because an investigator would already have blocked them. Averaged over the days."""
    y = _as_binary(labels)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    customers = np.asarray(customers).reshape(-1)
    days = np.asarray(days).reshape(-1)
    if not (y.size == s.size == customers.size == days.size):
        raise ValueError("labels, scores, customers and days must have the same length")
    # Integer codes once: membership tests on object arrays are quadratic in numpy.
    _, codes = np.unique(customers, return_inverse=True)
    detected = np.zeros(int(codes.max()) + 1 if codes.size else 0, dtype=bool)
    per_day: list[float] = []
    compromised: list[int] = []
    for day in np.unique(days):
        in_day = (days == day) & ~detected[codes]
        day_codes = codes[in_day]
        compromised.append(int(np.unique(day_codes[y[in_day] == 1]).size))
        found = _day_top_k_detected(s[in_day], y[in_day], day_codes, k)
        per_day.append(found.size / k)
        if remove_detected:
            detected[found] = True
    mean = float(np.mean(per_day)) if per_day else float("nan")
    return CardPrecision(mean=mean, per_day=tuple(per_day), compromised_per_day=tuple(compromised))


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The score threshold (alert when score >= it) that maximises F1, and that F1."""
    precision, recall, thresholds = precision_recall_points(labels, scores)
    if thresholds.size == 0 or np.isnan(recall).all():
        raise ValueError("cannot choose a threshold without positive examples")
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def precision_target_threshold(
    labels: np.ndarray, scores: np.ndarray, target: float
) -> tuple[float, float]:
    """The lowest threshold whose alerts reach `target` precision (the most fraud caught at
    that precision), and its recall. Falls back to the highest-precision threshold."""
    precision, recall, thresholds = precision_recall_points(labels, scores)
    if thresholds.size == 0 or np.isnan(recall).all():
        raise ValueError("cannot choose a threshold without positive examples")
    meets = np.flatnonzero(precision >= target)
    pick = int(meets[-1]) if meets.size else int(np.argmax(precision))
    return float(thresholds[pick]), float(recall[pick])


def log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean binary cross-entropy, scores clipped to [1e-7, 1 − 1e-7]."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def poisson_deviance(counts: np.ndarray, expected: np.ndarray) -> float:
    """Mean Poisson deviance 2/n · Σ [μ − N + N·log(N/μ)] (the N·log term is 0 when N = 0),
    μ the expected count (λ(x) · exposure). freMTPL2's papers report 100 × this ("in units of
    10⁻²")."""
    n = np.asarray(counts, dtype=np.float64).reshape(-1)
    mu = np.asarray(expected, dtype=np.float64).reshape(-1)
    if n.shape != mu.shape:
        raise ValueError("counts and expected counts must have the same length")
    if n.size == 0:
        return float("nan")
    mu = np.maximum(mu, 1e-12)
    log_term = np.where(n > 0, n * np.log(np.where(n > 0, n, 1.0) / mu), 0.0)
    return float(np.mean(2.0 * (mu - n + log_term)))
