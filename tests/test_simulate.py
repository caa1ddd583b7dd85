"""The synthetic generators: reproducible, labelled as described, readable by riskstream.history."""

from __future__ import annotations

import gzip
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from riskstream.history import load_market, load_transactions
from riskstream.simulate import (
    FraudScenarios,
    Regime,
    Scenario,
    SimulatedMarket,
    SimulatedTransactions,
    _customer_profiles,
    _neighbourhoods,
    generate_market,
    generate_transactions,
    simulate,
    simulate_market,
    simulate_transactions,
)

DAY = 86_400
SMALL = {"n_customers": 300, "n_terminals": 600, "start": date(2025, 1, 1), "days": 30}


@pytest.fixture(scope="module")
def default_run() -> SimulatedTransactions:
    """The CLI's default world (2,000 customers, 4,000 terminals, 90 days): about 0.5 s."""
    return simulate_transactions(seed=11)


@pytest.fixture(scope="module")
def market_run() -> SimulatedMarket:
    return simulate_market(seed=5)


def _day_index(sim: SimulatedTransactions) -> np.ndarray:
    start = datetime(sim.start.year, sim.start.month, sim.start.day, tzinfo=UTC).timestamp()
    return ((sim.history.timestamp - start) // DAY).astype(np.int64)


def _transaction_columns(history: object) -> dict[str, np.ndarray]:
    names = ("transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "currency")
    return {name: getattr(history, name) for name in (*names, "fraud")}


def test_same_seed_same_transactions_and_other_seed_differs() -> None:
    first = _transaction_columns(generate_transactions(**SMALL, seed=3))
    again = _transaction_columns(generate_transactions(**SMALL, seed=3))
    other = _transaction_columns(generate_transactions(**SMALL, seed=4))
    for name, column in first.items():
        assert np.array_equal(column, again[name]), name
    assert len(first["amount"]) != len(other["amount"]) or not np.array_equal(
        first["amount"], other["amount"]
    )


def test_transactions_are_sorted_unique_and_inside_the_period(
    default_run: SimulatedTransactions,
) -> None:
    history = default_run.history
    assert 250_000 < len(history) < 500_000
    assert np.all(np.diff(history.timestamp) >= 0)
    assert len(set(history.transaction_id)) == len(history)
    days = _day_index(default_run)
    assert days.min() == 0 and days.max() == default_run.days - 1
    assert history.amount.min() > 0
    assert history.fraud is not None and history.fraud.dtype == np.int8
    assert set(np.unique(history.fraud)) == {0, 1}
    assert history.customer_id[0].startswith("C") and history.terminal_id[0].startswith("T")


def test_default_fraud_rate_is_near_the_handbook_and_every_scenario_occurs(
    default_run: SimulatedTransactions,
) -> None:
    fraud = default_run.history.fraud
    assert fraud is not None
    assert 0.005 <= fraud.mean() <= 0.012
    counts = default_run.scenario_counts()
    assert all(counts[s] > 50 for s in Scenario), counts
    assert np.array_equal(fraud == 1, default_run.scenario != Scenario.GENUINE)


def test_fraud_rate_is_steady_from_the_first_day(default_run: SimulatedTransactions) -> None:
    """Compromises start before the history, so the first weeks are not a ramp-up."""
    fraud = default_run.history.fraud
    assert fraud is not None
    early = _day_index(default_run) < 14
    assert fraud[early].mean() > 0.5 * fraud[~early].mean()


def test_every_amount_over_the_threshold_is_fraud(default_run: SimulatedTransactions) -> None:
    history = default_run.history
    assert history.fraud is not None
    large = history.amount > FraudScenarios().amount_threshold
    assert large.sum() > 100
    assert history.fraud[large].all()


def test_a_compromised_terminal_is_fraudulent_for_the_next_28_days(
    default_run: SimulatedTransactions,
) -> None:
    history, days = default_run.history, _day_index(default_run)
    assert history.fraud is not None
    duration = FraudScenarios().terminal_compromise_days
    checked = 0
    for event in default_run.compromised_terminals:
        at_terminal = history.terminal_id == f"T{event.entity:04d}"
        window = at_terminal & (days >= event.day) & (days < event.day + duration)
        assert history.fraud[window].all()
        checked += int(window.sum())
    assert checked > 500
    assert any(e.day < 0 for e in default_run.compromised_terminals)  # running at day 0


def test_a_compromised_card_pays_a_third_at_five_times_the_amount(
    default_run: SimulatedTransactions,
) -> None:
    history, days = default_run.history, _day_index(default_run)
    knobs = FraudScenarios()
    stolen_share: list[float] = []
    inflation: list[float] = []  # stolen amount / the customer's usual amount
    for event in default_run.compromised_cards:
        customer = history.customer_id == f"C{event.entity:04d}"
        window = customer & (days >= event.day) & (days < event.day + knobs.card_compromise_days)
        stolen = window & (default_run.scenario == Scenario.COMPROMISED_CARD)
        stolen_share.append(stolen.sum() / max(window.sum(), 1))
        honest = customer & (default_run.scenario == Scenario.GENUINE)
        if honest.sum() > 20:
            inflation.extend(history.amount[stolen] / history.amount[honest].mean())
    assert 0.25 < np.mean(stolen_share) < 0.42
    assert len(inflation) > 300
    assert 4.0 < np.mean(inflation) < 6.0
    card = default_run.scenario == Scenario.COMPROMISED_CARD
    assert card.sum() > 300


def test_card_not_present_bursts_are_quick_and_at_unfamiliar_terminals(
    default_run: SimulatedTransactions,
) -> None:
    history, scenario = default_run.history, default_run.scenario
    knobs = FraudScenarios()
    assert len(default_run.bursts) > 10
    days = _day_index(default_run)
    for event in default_run.bursts[:40]:
        customer = history.customer_id == f"C{event.entity:04d}"
        burst = customer & (scenario == Scenario.CARD_NOT_PRESENT_BURST) & (days == event.day)
        assert knobs.burst_min_size <= burst.sum()
        assert np.ptp(history.timestamp[burst]) < 3_600
        usual = set(history.terminal_id[customer & (scenario != Scenario.CARD_NOT_PRESENT_BURST)])
        assert not usual & set(history.terminal_id[burst])


@pytest.mark.parametrize(("customers", "terminals", "radius"), [(400, 2_000, 5.0), (300, 60, 3.0)])
def test_customers_reach_the_terminals_within_their_radius_or_else_the_nearest(
    customers: int, terminals: int, radius: float
) -> None:
    rng = np.random.Generator(np.random.PCG64(0))
    profiles = _customer_profiles(rng, customers)
    term_xy = rng.uniform(0.0, 100.0, (terminals, 2))
    hoods = _neighbourhoods(profiles, term_xy, radius)
    for c in range(customers):
        d2 = (profiles.x[c] - term_xy[:, 0]) ** 2 + (profiles.y[c] - term_xy[:, 1]) ** 2
        expected = np.flatnonzero(d2 <= radius * radius)
        if not len(expected):
            expected = np.array([d2.argmin()])
        assert np.array_equal(hoods.terminals[hoods.offsets[c] : hoods.offsets[c + 1]], expected)


def test_fraud_scale_zero_leaves_only_the_large_amount_rule() -> None:
    sim = simulate_transactions(**SMALL, seed=2, fraud=FraudScenarios().scaled(0.0))
    counts = sim.scenario_counts()
    assert counts[Scenario.COMPROMISED_TERMINAL] == 0
    assert counts[Scenario.COMPROMISED_CARD] == 0
    assert counts[Scenario.CARD_NOT_PRESENT_BURST] == 0
    assert counts[Scenario.GENUINE] > 10_000


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="days"):
        generate_transactions(10, 10, date(2025, 1, 1), 0, seed=1)
    with pytest.raises(ValueError, match="days"):
        generate_market(date(2025, 1, 1), 0, seed=1)


def test_market_bars_are_consistent_daily_closes(market_run: SimulatedMarket) -> None:
    history = market_run.history
    assert history.instrument == "SYN"
    assert np.all(history.high >= np.maximum(history.open, history.close))
    assert np.all(np.minimum(history.open, history.close) >= history.low)
    assert np.all(history.low > 0) and np.all(history.volume > 0)
    stamps = history.timestamp.astype("datetime64[s]")
    assert np.all(np.diff(history.timestamp) > 0)
    assert np.all((history.timestamp % DAY) == 21 * 3600)  # the bar's date at 21:00:00Z
    assert np.is_busday(stamps.astype("datetime64[D]")).all()


def test_market_stress_raises_vix_volume_and_volatility(market_run: SimulatedMarket) -> None:
    history = market_run.history
    assert history.vix is not None
    stressed = market_run.regime == Regime.STRESSED
    assert 0.05 < stressed.mean() < 0.35
    assert history.vix[stressed].mean() > 1.8 * history.vix[~stressed].mean()
    assert history.volume[stressed].mean() > 1.3 * history.volume[~stressed].mean()
    returns = np.diff(np.log(history.close))
    assert returns[stressed[1:]].std() > 2 * returns[~stressed[1:]].std()
    assert np.corrcoef(history.vix, market_run.conditional_volatility)[0, 1] > 0.8


def test_market_crashes_are_large_falls_followed_by_stress(market_run: SimulatedMarket) -> None:
    history, crash = market_run.history, market_run.crash
    assert crash.sum() >= 3
    returns = np.log(history.close[1:] / history.close[:-1])
    crash_days = np.flatnonzero(crash[1:-1]) + 1
    assert np.median(returns[crash_days - 1]) < -0.02
    assert np.all(market_run.regime[crash_days + 1] == Regime.STRESSED)
    drawdown = 1 - history.close / np.maximum.accumulate(history.close)
    assert drawdown.max() > 0.2


def test_market_is_reproducible() -> None:
    first = generate_market(date(2020, 1, 1), 300, seed=9)
    again = generate_market(date(2020, 1, 1), 300, seed=9)
    other = generate_market(date(2020, 1, 1), 300, seed=10)
    for name in ("timestamp", "open", "high", "low", "close", "volume", "vix"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    assert not np.array_equal(first.close, other.close)


def test_cli_transactions_writes_a_byte_identical_readable_file(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--seed", "5", "--customers", "200", "--terminals", "400", "--days", "20"]
    outs = [tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv.gz", tmp_path / "d.csv.gz"]
    for out in outs:
        result = runner.invoke(simulate, ["transactions", "--out", str(out), *args])
        assert result.exit_code == 0, result.output
        assert "fraud rate" in result.output
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert gzip.decompress(outs[2].read_bytes()) == outs[0].read_bytes()
    assert outs[2].read_bytes() == outs[3].read_bytes()

    loaded = load_transactions(outs[2])
    expected = generate_transactions(200, 400, date(2025, 1, 1), 20, seed=5)
    assert len(loaded) == len(expected) > 1_000
    assert np.array_equal(loaded.transaction_id, expected.transaction_id)
    assert np.array_equal(loaded.timestamp, expected.timestamp)
    assert np.array_equal(loaded.customer_id, expected.customer_id)
    assert np.array_equal(loaded.terminal_id, expected.terminal_id)
    assert np.allclose(loaded.amount, expected.amount, rtol=0, atol=0.005)
    assert loaded.fraud is not None and np.array_equal(loaded.fraud, expected.fraud)


def test_cli_market_writes_prices_and_vix_that_load_back(tmp_path: Path) -> None:
    out, vix_out = tmp_path / "SYN.csv", tmp_path / "SYNVIX.csv"
    args = ["market", "--out", str(out), "--vix-out", str(vix_out), "--days", "400"]
    result = CliRunner().invoke(simulate, [*args, "--start", "2015-06-01", "--seed", "2"])
    assert result.exit_code == 0, result.output

    loaded = load_market(out, vix_path=vix_out)
    expected = generate_market(date(2015, 6, 1), 400, seed=2)
    assert loaded.instrument == "SYN"
    assert np.array_equal(loaded.timestamp, expected.timestamp)
    for name in ("open", "high", "low", "close", "volume"):
        assert np.allclose(getattr(loaded, name), getattr(expected, name), rtol=1e-9), name
    assert loaded.vix is not None and expected.vix is not None
    assert np.allclose(loaded.vix, expected.vix, rtol=1e-9)


def test_cli_rejects_a_malformed_date(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        simulate, ["transactions", "--out", str(tmp_path / "x.csv"), "--start", "2025/01/01"]
    )
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.output


def test_cli_refuses_to_write_an_empty_history(tmp_path: Path) -> None:
    out = tmp_path / "empty.csv"
    args = ["transactions", "--out", str(out), "--customers", "1", "--terminals", "1"]
    result = CliRunner().invoke(simulate, [*args, "--days", "1", "--seed", "1"])
    assert result.exit_code == 2, result.output
    assert "raise --customers or --days" in result.output
    assert not out.exists()


def _rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC from ranks (Mann-Whitney), without scikit-learn."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_simulated_credit_keeps_the_real_tables_difficulties_and_a_learnable_rule(
    tmp_path: Path,
) -> None:
    import csv

    from riskstream.credit_table import HEADER, LABEL

    out = tmp_path / "credit.csv.gz"
    args = ["credit", "--out", str(out), "--rows", "30000", "--seed", "4"]
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    first = out.read_bytes()
    assert CliRunner().invoke(simulate, args).exit_code == 0
    assert out.read_bytes() == first, "same seed, same bytes"
    with gzip.open(out, "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == HEADER and len(rows) == 30_001
    columns = {name: [row[i] for row in rows[1:]] for i, name in enumerate(rows[0])}
    labels = np.array(columns[LABEL], dtype=int)
    assert 0.05 < labels.mean() < 0.085, "near Give Me Some Credit's 6.7 %"
    income = columns["MonthlyIncome"]
    assert 0.17 < income.count("NA") / len(income) < 0.23
    late90 = np.array(columns["NumberOfTimes90DaysLate"], dtype=float)
    assert {96.0, 98.0} <= set(late90.tolist()), "the sentinel codes"
    utilisation = np.array(columns["RevolvingUtilizationOfUnsecuredLines"], dtype=float)
    assert utilisation.max() > 1000 and np.median(utilisation) < 0.5, "a heavy tail"
    assert set(columns["housing"]) == {"own", "mortgage", "rent", "other"}
    assert _rank_auc(np.minimum(utilisation, 1.5), labels) > 0.65, "the planted rule"
