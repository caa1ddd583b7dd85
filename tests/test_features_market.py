"""Market features on hand-made bars: values, window boundaries, warm-up, VIX presence,
idempotency, ring bounds."""

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
        "vix_rel_250d",
        "realized_vol_20d_rel_250d",
        "downside_vol_20d",
    )
    assert WARMUP_BARS == 250
    assert RING_BARS == 251 + REDELIVERY_BARS


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
            "vix_rel_250d": math.log(15 / 12),  # mean of 10, 12, 11, 15
            "realized_vol_20d_rel_250d": 0.0,  # both windows hold the same 3 returns
            "downside_vol_20d": math.sqrt(252 * math.log(95 / 105) ** 2 / 3),
        },
        rel=1e-6,
        abs=1e-7,
    )


def test_steady_growth_after_warmup() -> None:
    closes = [100.0 * math.exp(0.01 * k) for k in range(80)]
    vix = [20.0 * math.exp(0.02 * k) for k in range(80)]
    row = named(compute_market_features(bars(closes, vix=vix))[70])
    vix_mean = math.fsum(vix[:71]) / 71
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
            "vix_rel_250d": math.log(vix[70] / vix_mean),
            "realized_vol_20d_rel_250d": 0.0,  # no volatility at all: 0, not ln(0 / 0)
            "downside_vol_20d": 0.0,  # no down-move
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


def test_vix_rel_250d_window_holds_the_last_250_bars() -> None:
    vix = [100.0] + [10.0] * 249 + [10.0, 20.0]
    column = compute_market_features(bars([100.0] * 252, vix=vix))[
        :, FEATURE_NAMES.index("vix_rel_250d")
    ]
    assert column[0] == 0.0  # today against a mean of today alone
    assert column[1] == pytest.approx(math.log(10 / 55))  # warm-up: the bars there are
    assert column[249] == pytest.approx(math.log(10 / ((100 + 249 * 10) / 250)))  # 100 in
    assert column[250] == pytest.approx(0.0, abs=1e-7)  # the 100 has left the window
    assert column[251] == pytest.approx(math.log(20 / ((249 * 10 + 20) / 250)))


def test_vix_rel_250d_averages_the_bars_that_carry_a_vix() -> None:
    vix = [10.0, math.nan, 30.0, math.nan]
    column = compute_market_features(bars([100.0] * 4, vix=vix))[
        :, FEATURE_NAMES.index("vix_rel_250d")
    ]
    assert column[2] == pytest.approx(math.log(30 / 20))  # mean of 10 and 30
    assert column[1] == 0.0 and column[3] == 0.0  # no VIX today
    without_vix = compute_market_features(bars([100.0] * 4))
    assert not without_vix[:, FEATURE_NAMES.index("vix_rel_250d")].any()


def test_realized_vol_20d_rel_250d_window_holds_the_last_250_returns() -> None:
    # one large first return (+0.1), then alternating +-0.01: visible in the 250-return window
    # up to row 250 (returns 1..250) and gone at row 251
    returns = [0.1] + [0.01 * (-1) ** k for k in range(260)]
    closes = (100 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))).tolist()
    column = compute_market_features(bars(closes))[
        :, FEATURE_NAMES.index("realized_vol_20d_rel_250d")
    ]

    def expected(row: int) -> float:
        window = returns[:row]  # returns[j - 1] is the return of row j
        return math.log(statistics.stdev(window[-20:]) / statistics.stdev(window[-250:]))

    assert column[20] == pytest.approx(0.0, abs=1e-7)  # 20 returns: the same two windows
    assert column[21] == pytest.approx(expected(21), rel=1e-5)  # the 0.1 left the 20-bar one
    assert column[250] == pytest.approx(expected(250), rel=1e-5)
    assert column[250] < -0.1  # the 0.1 still inflates the year's volatility
    # both windows now alternate +-0.01, with sample variances n / (n - 1) * 0.01^2
    assert column[251] == pytest.approx(0.5 * math.log((20 / 19) / (250 / 249)), rel=1e-4)
    assert column[251] == pytest.approx(expected(251), rel=1e-4)


def test_downside_vol_20d_counts_the_falls_of_the_last_20_returns() -> None:
    closes = [100.0, 110.0, 99.0, 99.0, 108.9]  # returns ln 1.1, ln 0.9, 0, ln 1.1
    row = named(compute_market_features(bars(closes))[4])
    assert row["downside_vol_20d"] == pytest.approx(
        math.sqrt(252 * math.log(0.9) ** 2 / 4), rel=1e-6
    )
    # a fall at return 1, then 20 rises: in the window at row 20, out of it at row 21
    closes = [100.0, 90.0] + [90.0 * 1.01**k for k in range(1, 21)]
    column = compute_market_features(bars(closes))[:, FEATURE_NAMES.index("downside_vol_20d")]
    assert column[0] == 0.0
    assert column[1] == pytest.approx(math.sqrt(252) * math.log(10 / 9), rel=1e-6)
    assert column[20] == pytest.approx(math.sqrt(252 / 20) * math.log(10 / 9), rel=1e-6)
    assert column[21] == 0.0


def test_each_row_after_warmup_depends_only_on_the_ring() -> None:
    rng = np.random.default_rng(3)
    closes = (100 * np.exp(np.cumsum(rng.normal(0, 0.01, 400)))).tolist()
    volumes = rng.integers(0, 5000, 400).astype(float).tolist()
    vix = (15 + rng.random(400) * 10).tolist()
    full = compute_market_features(bars(closes, volumes, vix))
    for row in (WARMUP_BARS, 320, 399):
        start = row - WARMUP_BARS
        alone = compute_market_features(
            bars(closes[start : row + 1], volumes[start : row + 1], vix[start : row + 1])
        )
        np.testing.assert_array_equal(alone[-1], full[row])


def test_without_vix_the_vix_features_are_zero_and_the_rest_unchanged() -> None:
    closes = [100.0 + k for k in range(30)]
    with_vix = compute_market_features(bars(closes, vix=[20.0 + k for k in range(30)]))
    without = compute_market_features(bars(closes))
    columns = [FEATURE_NAMES.index(name) for name in ("vix", "vix_change_5d", "vix_rel_250d")]
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
    for day in range(400):
        ts = market_timestamp(FIRST_DAY + dt.timedelta(days=day))
        market_step(state, ts, 100, 101, 99, 100 + day % 7, 1000, None if day % 2 else 18.0)
    assert len(state) == RING_BARS
    data = state.to_bytes()
    assert len(data) == 5 + RING_BARS * 6 * 8
    restored = InstrumentState.from_bytes(data)
    assert restored == state
    ts = market_timestamp(FIRST_DAY + dt.timedelta(days=400))
    assert market_step(restored, ts, 1, 2, 1, 2, 3, 4.0) == market_step(
        state, ts, 1, 2, 1, 2, 3, 4.0
    )
    with pytest.raises(ValueError, match="truncated"):
        InstrumentState.from_bytes(data[:-8])
    with pytest.raises(ValueError, match="format version"):
        InstrumentState.from_bytes(b"\x07" + data[1:])


def test_a_state_from_the_66_bar_ring_loads_and_grows() -> None:
    """Format version 1 does not depend on the ring's length: a state written before the ring
    grew to RING_BARS loads and keeps every new bar until it is full."""
    state = InstrumentState()
    for day in range(66):
        ts = market_timestamp(FIRST_DAY + dt.timedelta(days=day))
        market_step(state, ts, 100, 101, 99, 100 + day % 3, 1000, 18.0)
    restored = InstrumentState.from_bytes(state.to_bytes())
    for day in range(66, 66 + RING_BARS):
        ts = market_timestamp(FIRST_DAY + dt.timedelta(days=day))
        market_step(restored, ts, 100, 101, 99, 100 + day % 3, 1000, 18.0)
        assert len(restored) == min(day + 1, RING_BARS)


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
    # the year-long features against a vectorised numpy computation of their definitions
    n, long = len(history), 250
    returns = np.diff(np.log(history.close))
    vix_mean = np.convolve(history.vix, np.ones(long), "valid") / long  # rows long-1 ..
    returns_20 = np.lib.stride_tricks.sliding_window_view(returns, 20)  # row j: returns of j-19..j
    returns_250 = np.lib.stride_tricks.sliding_window_view(returns, long)
    rows = np.arange(long, n)  # past the warm-up
    expected = {
        "vix_rel_250d": np.log(history.vix[rows] / vix_mean[rows - long + 1]),
        "realized_vol_20d_rel_250d": np.log(
            returns_20[rows - 20].std(axis=1, ddof=1) / returns_250[rows - long].std(axis=1, ddof=1)
        ),
        "downside_vol_20d": np.sqrt(252 * (np.minimum(returns_20[rows - 20], 0) ** 2).mean(axis=1)),
    }
    for name, values in expected.items():
        np.testing.assert_allclose(
            features[rows, FEATURE_NAMES.index(name)], values, rtol=1e-5, atol=1e-6
        )
    # the autumn of 2008 was the most volatile stretch of the sample
    volatility = features[WARMUP_BARS:, FEATURE_NAMES.index("realized_vol_20d")]
    peak_day = history.timestamp[WARMUP_BARS + int(np.argmax(volatility))]
    assert dt.datetime.fromtimestamp(peak_day, dt.UTC).year in (2008, 2020)
