"""Drift: how far the inputs (and scores) a model sees in service have moved from training.

One definition for both sides: training writes each input feature's reference distribution
into the card (`reference_bins`: bin edges from the training rows, the share of rows in each
bin and the share missing), and the worker counts what it scores into the same bins over a
rolling window (`DriftWindow`) and reports the population stability index per feature and for
the score (`psi`). PSI = Σ (actual − expected) · ln(actual / expected) over the bins; the usual
reading: below 0.1 stable, 0.1–0.25 moved, above 0.25 shifted (the Prometheus rule's line).

Bins: a feature with few distinct values in training (counts, flags, category indexes) gets
one bin per value; any other gets the training deciles. Shares are floored at EPSILON so a bin
empty on one side does not make the index infinite. numpy only: the worker imports it.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EPSILON = 1e-4
MAX_DISTINCT = 12  # up to this many distinct training values: one bin per value
QUANTILES = np.linspace(0.1, 0.9, 9)


def reference_bins(values: np.ndarray) -> dict[str, Any]:
    """Edges and shares of one feature's training values (NaN: missing)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    distinct = np.unique(finite)
    if len(distinct) <= MAX_DISTINCT:
        edges = ((distinct[:-1] + distinct[1:]) / 2.0).tolist()  # one bin per value
    else:
        edges = np.unique(np.quantile(finite, QUANTILES)).tolist()
    counts, missing = bin_counts(values, edges)
    total = max(len(values), 1)
    return {"edges": edges, "expected": (counts / total).tolist(), "missing": missing / total}


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> tuple[np.ndarray, int]:
    """Rows per bin ((−inf, e0), [e0, e1), …, [e_last, inf)) and rows missing."""
    values = np.asarray(values, dtype=np.float64)
    present = np.isfinite(values)
    positions = np.searchsorted(np.asarray(edges, dtype=np.float64), values[present], "right")
    return np.bincount(positions, minlength=len(edges) + 1), int((~present).sum())


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins (shares)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


class _Tracked:
    """One distribution: its reference (training) shares and rolling counts in service."""

    def __init__(self, reference: Mapping[str, Any]) -> None:
        self.edges = list(reference["edges"])
        self.expected = np.append(reference["expected"], reference.get("missing", 0.0))
        self.counts = np.zeros(len(self.expected), dtype=np.int64)

    def count(self, values: np.ndarray) -> np.ndarray:
        counts, missing = bin_counts(values, self.edges)
        return np.append(counts, missing)


class DriftWindow:
    """Rolling counts of a model's inputs and scores in service, over the last `window` rows
    (in chunks of `chunk` rows), and their PSI against the card's reference."""

    def __init__(
        self, card: Mapping[str, Any], window: int = 10_000, chunk: int = 1_000, min_rows: int = 500
    ) -> None:
        drift = card["drift"]
        self.names = list(card["features"])
        self.features = [_Tracked(reference) for reference in drift["features"]]
        self.score = _Tracked(drift["score"])
        self.window, self.chunk, self.min_rows = window, max(1, min(chunk, window)), min_rows
        self._chunks: collections.deque[list[np.ndarray]] = collections.deque()
        self._current = [np.zeros_like(t.counts) for t in self._all()]
        self._current_rows = 0
        self._rows = 0  # rows in the finished chunks kept

    @staticmethod
    def for_card(card: Mapping[str, Any], window: int) -> DriftWindow | None:
        """A window for a model whose card holds a drift reference (older cards do not)."""
        if "drift" not in card or window <= 0:
            return None
        return DriftWindow(card, window=window, chunk=max(1, window // 10))

    def _all(self) -> list[_Tracked]:
        return [*self.features, self.score]

    def observe(self, matrix: np.ndarray, scores: np.ndarray) -> None:
        columns = [matrix[:, j] for j in range(matrix.shape[1])] + [np.asarray(scores)]
        for j, tracked in enumerate(self._all()):
            self._current[j] += tracked.count(columns[j])
        self._current_rows += len(scores)
        if self._current_rows >= self.chunk:
            self._chunks.append(self._current)
            self._rows += self._current_rows
            self._current = [np.zeros_like(t.counts) for t in self._all()]
            self._current_rows = 0
            while self._chunks and self._rows - int(self._chunks[0][-1].sum()) >= self.window:
                self._rows -= int(self._chunks.popleft()[-1].sum())  # score counts: its rows

    def indexes(self) -> tuple[dict[str, float], float] | None:
        """PSI per feature and of the score over the window; None until min_rows were seen."""
        totals = [c.copy() for c in self._current]
        for chunk in self._chunks:
            for j, counts in enumerate(chunk):
                totals[j] += counts
        rows = int(totals[-1].sum())
        if rows < self.min_rows:
            return None
        shares = [t / max(int(t.sum()), 1) for t in totals]
        tracked = self._all()
        features = {name: psi(tracked[j].expected, shares[j]) for j, name in enumerate(self.names)}
        return features, psi(self.score.expected, shares[-1])
