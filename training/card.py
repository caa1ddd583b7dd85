"""The model card: what a model is, what it was trained on, and how its scores become alerts.

Thresholds are chosen on the time-based validation rows (never on the rows the network fitted)
with a rule a desk can read back: the score that maximises F1 (the fraud default: alerts are
worth opening about as often as fraud is missed), the lowest score that keeps a target
precision ("at least P of alerts are fraud"), or an alert budget ("the top R of events": the
market default, where a weak signal and a 20 % base rate would make max-F1 alert most days).
Severity bands split the validation alerts by score: medium from the threshold, high from their
median, critical from their 90th percentile.
"""

from __future__ import annotations

import hashlib
import platform
import re
from datetime import date, datetime
from importlib import metadata
from typing import Any

import numpy as np

from riskstream.drift import reference_bins
from riskstream.training.metrics import best_f1_threshold, precision_target_threshold

THRESHOLD_RULE_PATTERN = re.compile(r"^(max-f1|(precision|top):(0?\.\d+|1(\.0*)?))$")
LIBRARIES = ("riskstream", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")


def parse_threshold_rule(rule: str) -> str:
    if not THRESHOLD_RULE_PATTERN.match(rule) or float(rule.partition(":")[2] or 1) <= 0:
        raise ValueError(
            f"threshold rule {rule!r} is not 'max-f1', 'precision:P' or 'top:R' with "
            "0 < P, R <= 1 (e.g. precision:0.8, top:0.1)"
        )
    return rule


def choose_threshold(rule: str, labels: np.ndarray, scores: np.ndarray) -> tuple[float, str]:
    """The alert threshold and a sentence saying how it was chosen."""
    parse_threshold_rule(rule)
    if rule == "max-f1":
        threshold, f1 = best_f1_threshold(labels, scores)
        return threshold, (
            f"max-f1: the validation score maximising F1 (alert when score >= threshold); "
            f"validation F1 {f1:.3f}"
        )
    kind, _, value = rule.partition(":")
    target = float(value)
    if kind == "precision":
        threshold, recall = precision_target_threshold(labels, scores, target)
        return threshold, (
            f"precision:{target:g}: the lowest validation score whose alerts are at least "
            f"{target:.0%} positive (alert when score >= threshold); validation recall "
            f"{recall:.3f}"
        )
    threshold = float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - target))
    alerts = np.asarray(scores) >= threshold
    hits = int(np.sum(alerts & (np.asarray(labels) == 1)))
    precision = hits / max(int(alerts.sum()), 1)
    recall = hits / max(int(np.sum(np.asarray(labels) == 1)), 1)
    return threshold, (
        f"top:{target:g}: alert on the highest-scoring {target:.0%} of validation events "
        f"(alert when score >= threshold); validation precision {precision:.3f}, "
        f"recall {recall:.3f}"
    )


def severity_bands(threshold: float, validation_scores: np.ndarray) -> list[dict[str, Any]]:
    alerting = np.asarray(validation_scores, dtype=np.float64)
    alerting = alerting[alerting >= threshold]
    high = float(np.quantile(alerting, 0.5)) if alerting.size else threshold
    critical = float(np.quantile(alerting, 0.9)) if alerting.size else threshold
    high = max(high, threshold)
    critical = max(critical, high)
    return [
        {"severity": "medium", "min_score": float(threshold)},
        {"severity": "high", "min_score": high},
        {"severity": "critical", "min_score": critical},
    ]


def matrix_fingerprint(
    features: np.ndarray, labels: np.ndarray, *extra: np.ndarray, label_dtype: str = "i1"
) -> str:
    """sha256 of the training matrix and labels (counts: label_dtype "<f8"), then of any
    `extra` per-row arrays (exposure) as float64."""
    digest = hashlib.sha256()
    matrix = np.ascontiguousarray(features, dtype="<f4")
    digest.update(str(matrix.shape).encode())
    digest.update(matrix.tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=label_dtype).tobytes())
    for values in extra:
        digest.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for library in LIBRARIES:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            continue
    return versions


def column_stats(features: np.ndarray) -> tuple[list[float], list[float]]:
    """Raw-feature means and stds of the training rows (the scorer's occlusion baseline)."""
    x = np.asarray(features, dtype=np.float64)
    return x.mean(axis=0).tolist(), x.std(axis=0).tolist()


def build_card(
    *,
    name: str,
    version: str,
    created_at: datetime,
    features: tuple[str, ...],
    threshold: float,
    threshold_rule: str,
    training_window: tuple[date, date] | None,
    training_features: np.ndarray,
    training_labels: np.ndarray,
    source_sha256: str,
    metrics: dict[str, Any],
    bands: list[dict[str, Any]],
    training: dict[str, Any],
    features_sha256: str | None = None,
    baseline: tuple[list[float], list[float]] | None = None,
    reference_scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """The card every model gets. `training_window` is None for tables without a time column;
    `features_sha256` and `baseline` (occlusion values and spreads) default to the raw matrix's
    fingerprint and column means/stds — tabular models pass their own (NaN-aware ones)."""
    means, stds = baseline or column_stats(training_features)
    window = (
        None
        if training_window is None
        else {"from": training_window[0].isoformat(), "to": training_window[1].isoformat()}
    )
    return {
        "name": name,
        "version": version,
        "created_at": created_at.isoformat().replace("+00:00", "Z"),
        "features": list(features),
        "input_name": "features",
        "output_name": "score",
        "threshold": float(threshold),
        "threshold_rule": threshold_rule,
        "training_window": window,
        "data_fingerprint": {
            "features_and_labels_sha256": features_sha256
            or matrix_fingerprint(training_features, training_labels),
            "source_sha256": source_sha256,
            "rows": int(training_labels.size),
            "positives": int(np.sum(training_labels == 1)),
        },
        "metrics": metrics,
        "library_versions": library_versions(),
        "severity_bands": bands,
        "feature_means": means,
        "feature_stds": stds,
        "training": training,
        **drift_reference(training_features, reference_scores),
    }


def drift_reference(features: np.ndarray, scores: np.ndarray | None) -> dict[str, Any]:
    """The card's `drift` section: each input's training distribution and the validation
    scores', which the worker compares with what it serves (riskstream.drift)."""
    if scores is None:
        return {}
    matrix = np.asarray(features, dtype=np.float64)
    return {
        "drift": {
            "features": [reference_bins(matrix[:, j]) for j in range(matrix.shape[1])],
            "score": reference_bins(np.asarray(scores, dtype=np.float64)),
        }
    }
