"""Labelled feature rows for training and evaluation, built by the stream's own feature code.

Features are always computed over the whole file (earlier history warms the windows exactly as
it would in the stream) and only then are the rows of the requested date window selected.
This module needs numpy and the feature package only: `riskstream evaluate` imports it without
TensorFlow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

SECONDS_PER_DAY = 86400
DRAWDOWN_HORIZON_BARS = 20
DRAWDOWN_DROP = 0.05

Status = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def masked_fields(rows: object, mask: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named per-row arrays of `rows`, cut down to the rows `mask` keeps: what a `subset`
    passes to `dataclasses.replace`, so that adding a per-row field means naming it once."""
    return {name: getattr(rows, name)[mask] for name in names}


# LabeledRows' fields with one entry per row: what `subset` cuts down.
LABELED_ROW_ARRAYS = ("features", "labels", "timestamps", "event_ids", "entity_ids", "labelled")


@dataclass(frozen=True)
class LabeledRows:
    """Feature rows with their labels and the identities evaluation needs."""

    name: str
    feature_names: tuple[str, ...]
    features: np.ndarray  # float32 [n, n_features]
    labels: np.ndarray  # int8 [n]
    timestamps: np.ndarray  # float64 epoch seconds
    event_ids: np.ndarray  # object: transaction id, or "<instrument>:<YYYY-MM-DD>"
    entity_ids: np.ndarray  # object: customer id, or instrument
    labelled: np.ndarray  # bool: the label is known (a market bar needs its 20-bar future)
    start: date
    end: date
    source_sha256: str

    def __len__(self) -> int:
        return int(self.labels.size)

    @property
    def days(self) -> np.ndarray:
        """UTC day number of each row (what the handbook calls TX_TIME_DAYS, up to an offset)."""
        return np.floor(self.timestamps / SECONDS_PER_DAY).astype(np.int64)

    def subset(self, mask: np.ndarray) -> LabeledRows:
        return replace(self, **masked_fields(self, mask, LABELED_ROW_ARRAYS))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_date(timestamp: float) -> date:
    return datetime.fromtimestamp(float(timestamp), tz=UTC).date()


def day_number(day: date) -> int:
    return (day - date(1970, 1, 1)).days


def _window_mask(timestamps: np.ndarray, start: date, end: date) -> np.ndarray:
    days = np.floor(timestamps / SECONDS_PER_DAY).astype(np.int64)
    return (days >= day_number(start)) & (days <= day_number(end))


def default_fraud_training_end(last_timestamp: float, label_delay_seconds: float) -> date:
    """The last day whose labels are all known by the end of the file: last day − delay."""
    delay_days = round(label_delay_seconds / SECONDS_PER_DAY)
    return utc_date(last_timestamp) - timedelta(days=delay_days)


def fraud_warmup_days() -> int:
    """Days of history before every fraud window is full: the longest customer window, or the
    longest terminal window plus the label delay (37 days with the handbook's settings)."""
    from riskstream.features import fraud

    delay_days = round(fraud.LABEL_DELAY_SECONDS / SECONDS_PER_DAY)
    return max(max(fraud.CUSTOMER_WINDOW_DAYS), max(fraud.TERMINAL_WINDOW_DAYS) + delay_days)


def default_fraud_training_start(first_day: date, end: date) -> date:
    """Skip the warm-up: rows whose windows are still filling look unlike anything the stream
    scores later (terminal risk is 0 for everyone in the first week). Files too short to spare
    the warm-up train from their first day."""
    warm = first_day + timedelta(days=fraud_warmup_days())
    return warm if warm <= end else first_day


def fraud_rows(
    path: Path,
    start: date | None,
    end: date | None,
    *,
    training: bool,
    status: Status = _quiet,
) -> LabeledRows:
    """Fraud feature rows of the transactions dated start..end (inclusive, UTC days).

    Without `end`, training stops at the last day whose labels are known (last day − label
    delay) while evaluation runs to the end of the file. Without `start`, training starts after
    the feature warm-up and evaluation at the first day.
    """
    from riskstream.features import fraud
    from riskstream.history import load_transactions

    status(f"reading {path}")
    history = load_transactions(path)
    if len(history) == 0:
        raise ValueError(f"{path} holds no transactions")
    if history.fraud is None:
        raise ValueError(f"{path} has no fraud label column (fraud or TX_FRAUD): cannot score it")
    first_day = utc_date(history.timestamp[0])
    last_timestamp = float(history.timestamp[-1])
    if end is None:
        end = (
            default_fraud_training_end(last_timestamp, fraud.LABEL_DELAY_SECONDS)
            if training
            else utc_date(last_timestamp)
        )
    if start is None:
        start = default_fraud_training_start(first_day, end) if training else first_day
    _check_window(start, end, first_day, utc_date(last_timestamp), path)
    total = len(history)

    def features_done(done: int) -> None:
        status(f"computing fraud features: {done:,} of {total:,} transactions")

    features_done(0)
    matrix = fraud.compute_fraud_features(history, progress=features_done)
    status("hashing the source file")
    digest = file_sha256(path)
    mask = _window_mask(history.timestamp, start, end)
    return LabeledRows(
        name="fraud",
        feature_names=tuple(fraud.FEATURE_NAMES),
        features=np.asarray(matrix, dtype=np.float32)[mask],
        labels=np.asarray(history.fraud, dtype=np.int8)[mask],
        timestamps=np.asarray(history.timestamp, dtype=np.float64)[mask],
        event_ids=np.asarray(history.transaction_id, dtype=object)[mask],
        entity_ids=np.asarray(history.customer_id, dtype=object)[mask],
        labelled=np.ones(int(mask.sum()), dtype=bool),
        start=start,
        end=end,
        source_sha256=digest,
    )


def drawdown_labels(
    close: np.ndarray, horizon: int = DRAWDOWN_HORIZON_BARS, drop: float = DRAWDOWN_DROP
) -> tuple[np.ndarray, np.ndarray]:
    """1 when the lowest close of the next `horizon` bars is at least `drop` below today's
    close; the second array says which rows have a complete future (only those are labelled)."""
    close = np.asarray(close, dtype=np.float64)
    n = close.size
    labels = np.zeros(n, dtype=np.int8)
    known = np.zeros(n, dtype=bool)
    if n <= horizon:
        return labels, known
    future = np.lib.stride_tricks.sliding_window_view(close[1:], horizon)  # row i: i+1..i+horizon
    complete = n - horizon
    future_min = future[:complete].min(axis=1)
    labels[:complete] = future_min <= (1.0 - drop) * close[:complete]
    known[:complete] = True
    return labels, known


def market_rows(
    path: Path,
    vix_path: Path | None,
    start: date | None,
    end: date | None,
    *,
    require_labels: bool = True,
    status: Status = _quiet,
) -> LabeledRows:
    """Market feature rows of the bars dated start..end, after the feature warm-up.

    With `require_labels` (training), bars whose 20-bar future is incomplete are dropped: their
    label is unknown. Without (evaluation), they are kept for scoring with `labelled` False.
    """
    from riskstream.features import market
    from riskstream.history import load_market

    status(f"reading {path}" + (f" and {vix_path}" if vix_path else ""))
    history = load_market(path, vix_path=vix_path)
    n = history.close.size
    if n <= market.WARMUP_BARS:
        raise ValueError(f"{path} has {n} bars; the features need more than {market.WARMUP_BARS}")
    first_day = utc_date(history.timestamp[0])
    last_day = utc_date(history.timestamp[-1])
    start = start or first_day
    end = end or last_day
    _check_window(start, end, first_day, last_day, path)
    status(f"computing market features over {n:,} bars")
    matrix = market.compute_market_features(history)
    labels, known = drawdown_labels(history.close)
    mask = _window_mask(history.timestamp, start, end)
    mask[: market.WARMUP_BARS] = False
    if require_labels:
        mask &= known
    if not mask.any():
        raise ValueError(
            f"no bars of {start} → {end} in {path} are past the {market.WARMUP_BARS}-bar warm-up"
            + (" and have a complete 20-bar future" if require_labels else "")
        )
    selected = np.flatnonzero(mask)
    start = max(start, utc_date(history.timestamp[selected[0]]))
    end = min(end, utc_date(history.timestamp[selected[-1]]))
    digest = hashlib.sha256(file_sha256(path).encode())
    if vix_path is not None:
        digest.update(file_sha256(vix_path).encode())
    days = [utc_date(ts).isoformat() for ts in history.timestamp[mask]]
    return LabeledRows(
        name="market",
        feature_names=tuple(market.FEATURE_NAMES),
        features=np.asarray(matrix, dtype=np.float32)[mask],
        labels=labels[mask],
        timestamps=np.asarray(history.timestamp, dtype=np.float64)[mask],
        event_ids=np.array([f"{history.instrument}:{day}" for day in days], dtype=object),
        entity_ids=np.full(len(days), history.instrument, dtype=object),
        labelled=known[mask],
        start=start,
        end=end,
        source_sha256=digest.hexdigest(),
    )


def _check_window(start: date, end: date, first_day: date, last_day: date, path: Path) -> None:
    if start > end:
        raise ValueError(f"--from {start} is after --to {end}")
    if end < first_day or start > last_day:
        raise ValueError(
            f"the window {start} → {end} lies outside {path} ({first_day} → {last_day})"
        )


def time_split(timestamps: np.ndarray, validation_fraction: float) -> np.ndarray:
    """True for the rows of the last `validation_fraction` of the window's time span, cut at a
    whole UTC day when the window spans several days, so validation never precedes training."""
    first, last = float(timestamps.min()), float(timestamps.max())
    cut = last - validation_fraction * (last - first)
    days = np.floor(timestamps / SECONDS_PER_DAY)
    if days.max() - days.min() >= 2:
        cut_day = max(np.ceil(cut / SECONDS_PER_DAY), days.min() + 1)
        return days >= cut_day
    return timestamps >= cut
