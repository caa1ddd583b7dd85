"""Market features on hand-made bars: values, warm-up, VIX presence, idempotency, ring bounds."""

from __future__ import annotations

import datetime as dt
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from riskstream.features.market import (
    FEATURE_NAMES,
    REDELIVERY_BARS,
    RING_BARS,
    WARMUP_BARS,
    InstrumentState,
    compute_market_features,
    market_step,
)
from riskstream.history import MarketHistory, load_market, market_timestamp

FIRST_DAY = dt.date(2020, 1, 1)


def bars(
    closes: list[float],
    volumes: list[float] | None = None,
    vix: list[float] | None = None,
    spread: float = 0.02,
) -> MarketHistory:
    closes_array = np.array(closes, dtype=np.float64)
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(len(closes))]
    return MarketHistory(
        instrument="TEST",
        timestamp=np.array([market_timestamp(day) for day in days]),
        open=closes_array.copy(),
        high=closes_array * (1 + spread),
        low=closes_array * (1 - spread),
        close=closes_array,
        volume=np.array(volumes if volumes is not None else [1000.0] * len(closes)),
        vix=None if vix is None else np.array(vix, dtype=np.float64),
    )


def named(row: np.ndarray) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, row.tolist(), strict=True))


def test_names_and_warmup() -> None:
    assert FEATURE_NAMES == (
        "log_return_1d",
        "log_return_5d",
        "log_return_20d",
        "realized_vol_5d",
        "realized_vol_20d",
        "realized_vol_60d",
        "drawdown_60d",
        "vix",
        "vix_change_5d",
        "volume_surprise_20d",
        "intraday_range",
    )
    assert WARMUP_BARS == 60
    assert RING_BARS == 61 + REDELIVERY_BARS


def test_hand_checked_first_bars() -> None:
    closes = [100.0, 105.0, 95.0, 110.0]
    features = compute_market_features(
        bars(closes, volumes=[10.0, 20.0, 0.0, 30.0], vix=[10.0, 12.0, 11.0, 15.0])
    )
    first = named(features[0])
    assert first == pytest.approx(
        {name: 0.0 for name in FEATURE_NAMES} | {"vix": 10.0, "intraday_range": 0.04}
    )
    third, fourth = named(features[2]), named(features[3])
    assert third["drawdown_60d"] == pytest.approx(95 / 105 - 1)
    assert third["volume_surprise_20d"] == pytest.approx(math.log(1 / 16))  # zero volume
    returns = [math.log(105 / 100), math.log(95 / 105), math.log(110 / 95)]
    volatility = statistics.stdev(returns) * math.sqrt(252)
    assert fourth == pytest.approx(
        {
            "log_return_1d": math.log(110 / 95),
            "log_return_5d": 0.0,  # not enough bars yet
            "log_return_20d": 0.0,
            "realized_vol_5d": volatility,
            "realized_vol_20d": volatility,
            "realized_vol_60d": volatility,
            "drawdown_60d": 0.0,
            "vix": 15.0,
            "vix_change_5d": 0.0,
            "volume_surprise_20d": math.log(31 / 11),
            "intraday_range": 0.04,
        },
        rel=1e-6,
        abs=1e-7,
    )


def test_steady_growth_after_warmup() -> None:
    closes = [100.0 * math.exp(0.01 * k) for k in range(80)]
    vix = [20.0 * math.exp(0.02 * k) for k in range(80)]
    row = named(compute_market_features(bars(closes, vix=vix))[70])
    assert row == pytest.approx(
        {
            "log_return_1d": 0.01,
            "log_return_5d": 0.05,
            "log_return_20d": 0.20,
            "realized_vol_5d": 0.0,
            "realized_vol_20d": 0.0,
            "realized_vol_60d": 0.0,
            "drawdown_60d": 0.0,
            "vix": vix[70],
            "vix_change_5d": 0.10,
            "volume_surprise_20d": 0.0,
            "intraday_range": 0.04,
        },
        rel=1e-5,
        abs=1e-5,
    )


def test_drawdown_uses_the_60_bar_high_close() -> None:
    closes = [200.0] + [100.0] * 59 + [90.0, 80.0]
    features = compute_market_features(bars(closes))
    drawdown = FEATURE_NAMES.index("drawdown_60d")
    # row 59: the last 60 closes are rows 0..59, the 200 included; from row 60 on it is gone
    assert features[59, drawdown] == pytest.approx(100 / 200 - 1)
    assert features[60, drawdown] == pytest.approx(90 / 100 - 1)
    assert features[61, drawdown] == pytest.approx(80 / 100 - 1)


def test_each_row_after_warmup_depends_only_on_the_ring() -> None:
    rng = np.random.default_rng(3)
    closes = (100 * np.exp(np.cumsum(rng.normal(0, 0.01, 150)))).tolist()
    volumes = rng.integers(0, 5000, 150).astype(float).tolist()
    vix = (15 + rng.random(150) * 10).tolist()
    full = compute_market_features(bars(closes, volumes, vix))
    for row in (WARMUP_BARS, 100, 149):
        start = row - WARMUP_BARS
        alone = compute_market_features(
            bars(closes[start : row + 1], volumes[start : row + 1], vix[start : row + 1])
        )
        np.testing.assert_array_equal(alone[-1], full[row])


def test_without_vix_the_vix_features_are_zero_and_the_rest_unchanged() -> None:
    closes = [100.0 + k for k in range(30)]
    with_vix = compute_market_features(bars(closes, vix=[20.0 + k for k in range(30)]))
    without = compute_market_features(bars(closes))
    columns = [FEATURE_NAMES.index("vix"), FEATURE_NAMES.index("vix_change_5d")]
    assert not without[:, columns].any()
    assert with_vix[:, columns].any()
    np.testing.assert_array_equal(
        np.delete(without, columns, axis=1), np.delete(with_vix, columns, axis=1)
    )
    missing = compute_market_features(bars(closes, vix=[math.nan] * 3 + [20.0] * 27))
    assert not missing[:3, columns].any() and missing[3, columns[0]] == 20.0


def test_same_timestamp_twice_is_not_inserted_twice() -> None:
    state = InstrumentState()
    ts = [market_timestamp(FIRST_DAY + dt.timedelta(days=i)) for i in range(3)]
    market_step(state, ts[0], 100, 101, 99, 100, 10, 20.0)
    first = market_step(state, ts[1], 100, 103, 99, 102, 12, 21.0)
    again = market_step(state, ts[1], 1, 1, 1, 1, 1, 1.0)  # a redelivery: the first one wins
    assert again == first and len(state) == 2
    market_step(state, ts[2], 102, 104, 101, 103, 11, 22.0)
    assert market_step(state, ts[1], 100, 103, 99, 102, 12, 21.0) == first
    assert len(state) == 3


def test_redelivery_of_a_recent_bar_repeats_its_features_once_the_ring_is_full() -> None:
    rng = np.random.default_rng(5)
    state = InstrumentState()
    delivered = []
    for day in range(RING_BARS + 20):
        ts = market_timestamp(FIRST_DAY + dt.timedelta(days=day))
        bar = (100 + rng.random(), 102.0, 98.0, 100 + rng.random(), 1000 * rng.random(), 20.0)
        delivered.append((ts, bar, market_step(state, ts, *bar)))
    assert len(state) == RING_BARS
    for ts, bar, first in delivered[-REDELIVERY_BARS - 1 :]:
        assert market_step(state, ts, *bar) == first
    assert len(state) == RING_BARS


def test_out_of_order_bar_is_placed_by_its_timestamp() -> None:
    closes = [100.0, 104.0, 101.0, 107.0, 103.0]
    expected = compute_market_features(bars(closes, vix=[20.0] * 5))
    history = bars(closes, vix=[20.0] * 5)
    state = InstrumentState()
    results = {}
    for index in (0, 1, 3, 2, 4):
        results[index] = market_step(
            state,
            float(history.timestamp[index]),
            float(history.open[index]),
            float(history.high[index]),
            float(history.low[index]),
            float(history.close[index]),
            float(history.volume[index]),
            20.0,
        )
    for index in (0, 1, 2, 4):  # bar 3 came before bar 2 and could not see it
        np.testing.assert_allclose(results[index], expected[index], rtol=1e-6, atol=1e-7)
    assert list(state.times) == sorted(state.times)


def test_ring_is_bounded_and_round_trips() -> None:
    state = InstrumentState()
    for day in range(200):
        ts = market_timestamp(FIRST_DAY + dt.timedelta(days=day))
        market_step(state, ts, 100, 101, 99, 100 + day % 7, 1000, None if day % 2 else 18.0)
    assert len(state) == RING_BARS
    data = state.to_bytes()
    assert len(data) == 5 + RING_BARS * 6 * 8
    restored = InstrumentState.from_bytes(data)
    assert restored == state
    ts = market_timestamp(FIRST_DAY + dt.timedelta(days=200))
    assert market_step(restored, ts, 1, 2, 1, 2, 3, 4.0) == market_step(
        state, ts, 1, 2, 1, 2, 3, 4.0
    )
    with pytest.raises(ValueError, match="truncated"):
        InstrumentState.from_bytes(data[:-8])
    with pytest.raises(ValueError, match="format version"):
        InstrumentState.from_bytes(b"\x07" + data[1:])


def test_bar_older_than_the_ring_leaves_the_state_alone() -> None:
    state = InstrumentState()
    for day in range(1, RING_BARS + 1):
        ts = market_timestamp(FIRST_DAY + dt.timedelta(days=day))
        market_step(state, ts, 100, 101, 99, 100, 1000, 20.0)
    before = state.to_bytes()
    features = market_step(state, market_timestamp(FIRST_DAY), 50, 51, 49, 50, 10, 30.0)
    assert state.to_bytes() == before
    assert features[FEATURE_NAMES.index("vix")] == 30.0


def test_real_sp500_and_vix(market_csvs: tuple[Path, Path]) -> None:
    history = load_market(*market_csvs)
    features = compute_market_features(history)
    assert features.shape == (len(history), len(FEATURE_NAMES)) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert (features[:, FEATURE_NAMES.index("drawdown_60d")] <= 0).all()
    assert history.vix is not None
    np.testing.assert_allclose(features[:, FEATURE_NAMES.index("vix")], history.vix, rtol=1e-6)
    # the autumn of 2008 was the most volatile stretch of the sample
    volatility = features[WARMUP_BARS:, FEATURE_NAMES.index("realized_vol_20d")]
    peak_day = history.timestamp[WARMUP_BARS + int(np.argmax(volatility))]
    assert dt.datetime.fromtimestamp(peak_day, dt.UTC).year in (2008, 2020)
