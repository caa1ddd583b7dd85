"""Market-stress features from daily OHLCV bars and the VIX, one bar at a time.

The stream keeps one InstrumentState per instrument (a bounded ring of recent bars) and calls
market_step per bar; compute_market_features drives the same function over a whole history.

Features (bar t, closes c, daily log returns r_j = ln(c_j / c_{j-1})):
  - log_return_{1,5,20}d: ln(c_t / c_{t-k});
  - realized_vol_{5,20,60}d: sample standard deviation (ddof 1) of the last k daily log
    returns, times sqrt(252) (annualised);
  - drawdown_60d: c_t / (highest close of the last 60 bars, t included) - 1, in [-1, 0];
  - vix: the VIX close; vix_change_5d: ln(vix_t / vix_{t-5});
  - volume_surprise_20d: ln((volume_t + 1) / (mean volume of the 20 bars before t + 1)); the +1
    keeps zero volume (indices such as the VIX report none) finite, 0 when both are zero;
  - intraday_range: (high - low) / close;
  - vix_rel_250d: ln(vix_t / mean VIX close of the last 250 bars, t included), over the bars that
    carry a VIX; 0 without a VIX on bar t;
  - realized_vol_20d_rel_250d: ln(realized_vol_20d / realized_vol_250d), the 250d one over the last
    250 returns; 0 when either is (numerically) 0;
  - downside_vol_20d: sqrt(252 / k * sum of min(r_j, 0)^2) over the last k = 20 returns.
The last three were picked among a few candidates on validation years before 2020 (README, model
quality): the two "_rel_250d" ones measure volatility against the past year, since a level that
means stress after a calm year is ordinary after a turbulent one; downside_vol_20d keeps the
down-moves alone (negative realised semivariance forecasts volatility better than the total, and
the label is a fall).
In the first bars of a history, log_return_kd is 0 until bar t-k exists and the other windows use
the bars there are; the first WARMUP_BARS rows of a history are warm-up and training skips them.
Without a VIX (no file, or no ``vix`` indicator on the event) the three VIX features are 0: a
model trained without the VIX sees a constant, and one trained with it should only be fed
instruments that carry it.

Idempotent per bar timestamp: a bar whose timestamp the ring already holds is not inserted again
and gets the features of the stored bar (the first delivery wins), identical to the first
delivery's while it is at most REDELIVERY_BARS bars behind the newest. A bar that arrives out of
order is inserted at its place; its features use the bars before it.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from bisect import bisect_left
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from riskstream.history import MarketHistory

__all__ = [
    "FEATURE_NAMES",
    "REDELIVERY_BARS",
    "RING_BARS",
    "WARMUP_BARS",
    "InstrumentState",
    "compute_market_features",
    "market_step",
]

RETURN_BARS = (1, 5, 20)
VOLATILITY_BARS = (5, 20, 60)
DRAWDOWN_BARS = 60
VIX_CHANGE_BARS = 5
VOLUME_MEAN_BARS = 20
LONG_BARS = 250
"""About a trading year: the window of the volatility and VIX levels the "_rel_250d" features
compare today's with."""
DOWNSIDE_BARS = 20
MIN_VOLATILITY = 1e-9
"""Annualised volatilities below this are rounding errors of flat or constant-growth prices."""
TRADING_DAYS_PER_YEAR = 252

FEATURE_NAMES: tuple[str, ...] = (
    *(f"log_return_{bars}d" for bars in RETURN_BARS),
    *(f"realized_vol_{bars}d" for bars in VOLATILITY_BARS),
    f"drawdown_{DRAWDOWN_BARS}d",
    "vix",
    f"vix_change_{VIX_CHANGE_BARS}d",
    f"volume_surprise_{VOLUME_MEAN_BARS}d",
    "intraday_range",
    f"vix_rel_{LONG_BARS}d",
    f"realized_vol_20d_rel_{LONG_BARS}d",
    f"downside_vol_{DOWNSIDE_BARS}d",
)
WARMUP_BARS = max(
    *RETURN_BARS,
    *VOLATILITY_BARS,
    DRAWDOWN_BARS - 1,
    VIX_CHANGE_BARS,
    VOLUME_MEAN_BARS,
    LONG_BARS,  # realized_vol_250d: 250 returns
    DOWNSIDE_BARS,
)
"""Rows 0 .. WARMUP_BARS - 1 of a history lack bars for some feature; row WARMUP_BARS (the 251st
bar) is the first with every feature complete (250 returns need 251 closes)."""
REDELIVERY_BARS = 5
"""A bar redelivered up to this many bars late still finds its full warm-up in the ring, so it
gets exactly the features of its first delivery."""
RING_BARS = WARMUP_BARS + 1 + REDELIVERY_BARS

_ANNUALISE = math.sqrt(TRADING_DAYS_PER_YEAR)
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<BI")  # version, bars


class InstrumentState:
    """The instrument's last RING_BARS bars (timestamp, high, low, close, volume, VIX; NaN for a
    missing VIX), sorted by timestamp: about 12 KiB when full.

    The byte layout (format version 1) does not depend on RING_BARS: a state written when the ring
    held 66 bars still loads, and its year-long windows fill up as bars arrive."""

    __slots__ = ("closes", "highs", "lows", "times", "vixes", "volumes")

    def __init__(self) -> None:
        self.times = array("d")
        self.highs = array("d")
        self.lows = array("d")
        self.closes = array("d")
        self.volumes = array("d")
        self.vixes = array("d")

    def __len__(self) -> int:
        return len(self.times)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstrumentState) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def _columns(self) -> tuple[array, ...]:
        return (self.times, self.highs, self.lows, self.closes, self.volumes, self.vixes)

    def to_bytes(self) -> bytes:
        columns = self._columns()
        if sys.byteorder != "little":
            columns = tuple(_swapped(column) for column in columns)
        return _HEADER.pack(_FORMAT_VERSION, len(self)) + b"".join(c.tobytes() for c in columns)

    @classmethod
    def from_bytes(cls, data: bytes) -> InstrumentState:
        if len(data) < _HEADER.size:
            raise ValueError(f"instrument state is {len(data)} bytes, shorter than its header.")
        version, count = _HEADER.unpack_from(data)
        if version != _FORMAT_VERSION:
            raise ValueError(
                f"instrument state has format version {version}; this code reads {_FORMAT_VERSION}."
            )
        state = cls()
        columns = state._columns()
        body = memoryview(data)[_HEADER.size :]
        if len(body) != count * 8 * len(columns):
            raise ValueError(f"instrument state body is {len(body)} bytes: truncated?")
        for position, column in enumerate(columns):
            column.frombytes(body[position * count * 8 : (position + 1) * count * 8])
            if sys.byteorder != "little":
                column.byteswap()
        return state


def market_step(
    state: InstrumentState,
    ts: float,
    open: float,
    high: float,
    low: float,
    close: float,
    volume: float,
    vix: float | None,
) -> list[float]:
    """Add the bar (once per timestamp) and return its features in FEATURE_NAMES order.

    ``open`` is accepted for the event's shape but no feature uses it (gaps show in the 1-day
    return and the range).
    """
    del open
    vix_value = math.nan if vix is None else float(vix)
    index = bisect_left(state.times, ts)
    if index < len(state) and state.times[index] == ts:
        return _features(state, index)
    if index == 0 and len(state) >= RING_BARS:  # older than the whole ring: score it alone
        alone = InstrumentState()
        _insert(alone, 0, (ts, high, low, close, volume, vix_value))
        return _features(alone, 0)
    _insert(state, index, (ts, high, low, close, volume, vix_value))
    if len(state) > RING_BARS:
        for column in state._columns():
            del column[0]
        index -= 1
    return _features(state, index)


def compute_market_features(history: MarketHistory) -> np.ndarray:
    """float32 [n, len(FEATURE_NAMES)] for every bar of the history, in its (date) order."""
    state = InstrumentState()
    vix = [None] * len(history) if history.vix is None else history.vix.tolist()
    rows = [
        market_step(state, *bar, vix_close)
        for *bar, vix_close in zip(
            history.timestamp.tolist(),
            history.open.tolist(),
            history.high.tolist(),
            history.low.tolist(),
            history.close.tolist(),
            history.volume.tolist(),
            vix,
            strict=True,
        )
    ]
    return np.array(rows, dtype=np.float32).reshape(len(history), len(FEATURE_NAMES))


def _insert(state: InstrumentState, index: int, bar: tuple[float, ...]) -> None:
    for column, value in zip(state._columns(), bar, strict=True):
        column.insert(index, value)


def _features(state: InstrumentState, index: int) -> list[float]:
    closes = state.closes
    close = closes[index]
    returns = [
        _log_ratio(closes[j], closes[j - 1])
        for j in range(max(1, index + 1 - LONG_BARS), index + 1)
    ]
    features = [_log_ratio(close, closes[index - k]) if index >= k else 0.0 for k in RETURN_BARS]
    features += [_annualised_volatility(returns[-bars:]) for bars in VOLATILITY_BARS]
    peak = max(closes[max(0, index + 1 - DRAWDOWN_BARS) : index + 1])
    features.append(close / peak - 1.0 if peak > 0 else 0.0)
    vix = state.vixes[index]
    earlier_vix = state.vixes[index - VIX_CHANGE_BARS] if index >= VIX_CHANGE_BARS else math.nan
    features.append(vix if math.isfinite(vix) else 0.0)
    features.append(_log_ratio(vix, earlier_vix))
    features.append(_volume_surprise(state.volumes, index))
    spread = state.highs[index] - state.lows[index]
    features.append(spread / close if close > 0 else 0.0)
    features.append(_relative_vix(state.vixes, index))
    features.append(_volatility_ratio(returns[-20:], returns))
    features.append(_downside_volatility(returns[-DOWNSIDE_BARS:]))
    return features


def _log_ratio(numerator: float, denominator: float) -> float:
    """ln(a / b), or 0 when either side is missing (NaN) or not positive."""
    if numerator > 0 and denominator > 0:
        return math.log(numerator / denominator)
    return 0.0


def _annualised_volatility(returns: list[float]) -> float:
    if len(returns) < 2:
        return 0.0
    mean = math.fsum(returns) / len(returns)
    variance = math.fsum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
    return math.sqrt(variance) * _ANNUALISE


def _relative_vix(vixes: array, index: int) -> float:
    """vix_rel_250d. Against the past year's mean rather than as a level: a VIX of 25 is stress
    after a calm year and ordinary after a turbulent one."""
    window = [v for v in vixes[max(0, index + 1 - LONG_BARS) : index + 1] if math.isfinite(v)]
    if not math.isfinite(vixes[index]) or not window:
        return 0.0
    return _log_ratio(vixes[index], math.fsum(window) / len(window))


def _volatility_ratio(recent: list[float], year: list[float]) -> float:
    """realized_vol_20d_rel_250d: ln(volatility of `recent` / volatility of `year`), 0 when either
    is below MIN_VOLATILITY (flat or constant-growth prices: a ratio of rounding errors)."""
    short, long = _annualised_volatility(recent), _annualised_volatility(year)
    if short < MIN_VOLATILITY or long < MIN_VOLATILITY:
        return 0.0
    return math.log(short / long)


def _downside_volatility(returns: list[float]) -> float:
    """Annualised root mean square of the negative returns (the positive ones count as 0): the
    label is a fall, and down-moves forecast volatility better than up-moves."""
    if not returns:
        return 0.0
    return math.sqrt(math.fsum(min(r, 0.0) ** 2 for r in returns) / len(returns)) * _ANNUALISE


def _volume_surprise(volumes: array, index: int) -> float:
    earlier = volumes[max(0, index - VOLUME_MEAN_BARS) : index]
    if not earlier:
        return 0.0
    mean = math.fsum(earlier) / len(earlier)
    return math.log((max(volumes[index], 0.0) + 1.0) / (max(mean, 0.0) + 1.0))


def _swapped(column: array) -> array:
    copy = array(column.typecode, column)
    copy.byteswap()
    return copy
