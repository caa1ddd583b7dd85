"""Fraud features on small hand-checked cases, and against a brute-force reading of the
definitions on random histories."""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics

import numpy as np
import pytest

from riskstream.features import fraud
from riskstream.features.fraud import (
    ALLOWED_LATENESS_SECONDS,
    CUSTOMER_FEATURE_NAMES,
    FEATURE_NAMES,
    LABEL_DELAY_SECONDS,
    RATIO_MAX_EARLIER,
    SINCE_PREVIOUS_CAP_SECONDS,
    TERMINAL_FEATURE_NAMES,
    TERMINAL_LATENESS_SECONDS,
    CustomerState,
    TerminalState,
    compute_fraud_features,
    customer_step,
    fraud_vector,
    terminal_label,
    terminal_step,
)
from riskstream.history import TransactionHistory

DAY = 86_400.0
HOUR = 3_600.0
T0 = dt.datetime(2018, 4, 2, 12, tzinfo=dt.UTC).timestamp()  # a Monday, noon
DELAY = float(LABEL_DELAY_SECONDS)
CAPPED_GAP = math.log1p(SINCE_PREVIOUS_CAP_SECONDS)


def customer_named(features: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(CUSTOMER_FEATURE_NAMES, features, strict=True))


def terminal_named(features: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(TERMINAL_FEATURE_NAMES, features, strict=True))


def test_feature_names_are_the_handbook_inputs_then_the_extras() -> None:
    assert FEATURE_NAMES[:9] == (
        "tx_amount",
        "tx_during_weekend",
        "tx_during_night",
        "customer_nb_tx_1day",
        "customer_avg_amount_1day",
        "customer_nb_tx_7day",
        "customer_avg_amount_7day",
        "customer_nb_tx_30day",
        "customer_avg_amount_30day",
    )
    assert FEATURE_NAMES[9:15] == (
        "terminal_nb_tx_1day",
        "terminal_risk_1day",
        "terminal_nb_tx_7day",
        "terminal_risk_7day",
        "terminal_nb_tx_30day",
        "terminal_risk_30day",
    )
    assert 0 < len(FEATURE_NAMES) - 15 <= 6
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in FEATURE_NAMES)


def test_customer_window_excludes_exactly_t_minus_w_and_includes_t() -> None:
    state = CustomerState()
    customer_step(state, "a", T0, 10.0)
    customer_step(state, "b", T0 + 6 * DAY, 20.0)
    features = customer_named(customer_step(state, "c", T0 + 7 * DAY, 60.0))
    # (t - 1d, t]: only c; (t - 7d, t]: b and c, a sits exactly on t - 7d; 30 days: all three.
    assert features["customer_nb_tx_1day"] == 1
    assert features["customer_avg_amount_1day"] == 60.0
    assert features["customer_nb_tx_7day"] == 2
    assert features["customer_avg_amount_7day"] == 40.0
    assert features["customer_nb_tx_30day"] == 3
    assert features["customer_avg_amount_30day"] == 30.0
    # median of the earlier 10 and 20 is 15: ln(61) - ln(16)
    assert features["customer_log_amount_ratio_30day"] == pytest.approx(math.log(61 / 16))
    assert features["customer_log_seconds_since_previous"] == pytest.approx(math.log1p(DAY))


def test_first_transaction_has_neutral_extras() -> None:
    features = customer_named(customer_step(CustomerState(), "a", T0, 42.0))
    assert features["customer_nb_tx_30day"] == 1
    assert features["customer_avg_amount_30day"] == 42.0
    assert features["customer_log_amount_ratio_30day"] == 0.0
    assert features["customer_log_seconds_since_previous"] == pytest.approx(CAPPED_GAP)


def test_redelivered_customer_transaction_counts_once_and_repeats_its_features() -> None:
    state = CustomerState()
    customer_step(state, "a", T0, 10.0)
    first = customer_step(state, "b", T0 + HOUR, 30.0)
    later = customer_step(state, "c", T0 + 2 * HOUR, 50.0)
    assert customer_step(state, "b", T0 + HOUR, 30.0) == first
    assert customer_step(state, "c", T0 + 2 * HOUR, 50.0) == later
    assert len(state) == 3
    assert (
        customer_named(customer_step(state, "d", T0 + 3 * HOUR, 10.0))["customer_nb_tx_1day"] == 4
    )


def test_redelivery_ignores_out_of_order_transactions_that_arrived_after_it() -> None:
    state = CustomerState()
    customer_step(state, "a", T0, 10.0)
    first = customer_step(state, "b", T0 + 2 * HOUR, 30.0)
    customer_step(state, "late", T0 + HOUR, 1000.0)  # arrives after b, happened before it
    assert customer_step(state, "b", T0 + 2 * HOUR, 30.0) == pytest.approx(first, rel=1e-12)
    # a transaction arriving now does see the late one
    assert customer_named(customer_step(state, "c", T0 + 3 * HOUR, 1.0))["customer_nb_tx_1day"] == 4


def test_out_of_order_transaction_counts_only_what_happened_before_it() -> None:
    state = CustomerState()
    customer_step(state, "a", T0, 10.0)
    customer_step(state, "c", T0 + 10 * HOUR, 90.0)
    late = customer_named(customer_step(state, "b", T0 + 5 * HOUR, 20.0))
    assert late["customer_nb_tx_1day"] == 2  # a and b, not c which is later than b
    assert late["customer_avg_amount_1day"] == 15.0
    assert late["customer_log_seconds_since_previous"] == pytest.approx(math.log1p(5 * HOUR))
    after = customer_named(customer_step(state, "d", T0 + 11 * HOUR, 40.0))
    assert after["customer_nb_tx_1day"] == 4
    assert after["customer_avg_amount_1day"] == 40.0
    assert list(state.times) == sorted(state.times)


def test_transaction_later_than_the_horizon_is_scored_but_not_stored() -> None:
    state = CustomerState(lateness=HOUR)
    customer_step(state, "a", T0, 10.0)
    customer_step(state, "new", T0 + 40 * DAY, 20.0)
    assert len(state) == 1  # a fell out of every window and was pruned
    stale = customer_named(customer_step(state, "stale", T0 + 5 * DAY, 30.0))
    assert stale["customer_nb_tx_30day"] == 1
    assert stale["customer_avg_amount_30day"] == pytest.approx(30.0)
    assert len(state) == 1


def test_terminal_label_delay_boundary() -> None:
    state = TerminalState()
    terminal_step(state, "a", T0)
    terminal_label(state, "a", T0, True)
    just_before = terminal_named(terminal_step(state, "b", T0 + DELAY - 1))
    assert just_before["terminal_nb_tx_30day"] == 0  # a is later than t - d
    at = terminal_named(terminal_step(state, "c", T0 + DELAY))
    assert at["terminal_nb_tx_1day"] == 1  # a sits exactly on t - d: counted
    assert at["terminal_risk_1day"] == 1.0
    day_later = terminal_named(terminal_step(state, "d", T0 + DELAY + DAY))
    assert day_later["terminal_nb_tx_1day"] == 0  # a sits exactly on t - d - 1 day: excluded
    assert day_later["terminal_risk_1day"] == 0.0
    assert day_later["terminal_nb_tx_7day"] == 1
    assert day_later["terminal_risk_7day"] == 1.0
    week_later = terminal_named(terminal_step(state, "e", T0 + 2 * DELAY))
    # (t - d - 1d, t - d] = (T0 + 6d, T0 + 7d]: b (legit) and c; a is only in the 7/30-day ones
    assert week_later["terminal_nb_tx_1day"] == 2
    assert week_later["terminal_risk_1day"] == 0.0
    assert week_later["terminal_nb_tx_30day"] == 3  # d is later than t - d
    assert week_later["terminal_risk_30day"] == pytest.approx(1 / 3)


def test_early_label_is_ignored_until_its_transaction_enters_the_window() -> None:
    state = TerminalState()
    terminal_step(state, "a", T0)
    terminal_label(state, "a", T0, True)  # known after an hour instead of a week
    soon = terminal_named(terminal_step(state, "b", T0 + HOUR))
    assert soon == dict.fromkeys(TERMINAL_FEATURE_NAMES, 0.0)
    later = terminal_named(terminal_step(state, "c", T0 + DELAY + HOUR))
    assert later["terminal_nb_tx_1day"] == 2  # a, and b exactly on t - d
    assert later["terminal_risk_1day"] == 0.5


def test_terminal_duplicates_and_repeated_labels_are_idempotent() -> None:
    state = TerminalState()
    terminal_step(state, "a", T0)
    terminal_step(state, "a", T0)
    terminal_step(state, "b", T0 + HOUR)
    for _ in range(3):
        terminal_label(state, "a", T0, True)
    assert len(state) == 2
    features = terminal_named(terminal_step(state, "z", T0 + DELAY + 2 * HOUR))
    assert features["terminal_nb_tx_1day"] == 2
    assert features["terminal_risk_1day"] == 0.5
    terminal_label(state, "a", T0, False)  # a corrected label replaces the earlier one
    assert (
        terminal_named(terminal_step(state, "z", T0 + DELAY + 2 * HOUR))["terminal_risk_1day"]
        == 0.0
    )


def test_label_for_an_unseen_transaction_is_counted_once() -> None:
    state = TerminalState()
    terminal_label(state, "ghost", T0, True)  # its transaction never reached this terminal
    terminal_label(state, "ghost", T0, True)
    terminal_step(state, "ghost", T0)  # ... or arrives after its label: a duplicate
    features = terminal_named(terminal_step(state, "b", T0 + DELAY))
    assert features["terminal_nb_tx_1day"] == 1
    assert features["terminal_risk_1day"] == 1.0


def test_states_round_trip_through_bytes() -> None:
    customer, terminal = CustomerState(), TerminalState()
    assert CustomerState.from_bytes(customer.to_bytes()) == customer
    assert TerminalState.from_bytes(terminal.to_bytes()) == terminal
    for index, hours in enumerate([0, 5, 3, 30, 29]):
        customer_step(customer, f"t{index}", T0 + hours * HOUR, 10.0 + index)
        terminal_step(terminal, f"t{index}", T0 + hours * HOUR)
    terminal_label(terminal, "t2", T0 + 3 * HOUR, True)
    restored_customer = CustomerState.from_bytes(customer.to_bytes())
    restored_terminal = TerminalState.from_bytes(terminal.to_bytes())
    assert restored_customer == customer and restored_terminal == terminal
    assert len(customer.to_bytes()) == 25 + 5 * 24
    assert len(terminal.to_bytes()) == 17 + 5 * 13 + 1 * 8  # one fraud
    # the restored states behave identically, redeliveries included
    redelivered = customer_step(restored_customer, "t2", T0 + 3 * HOUR, 12.0)
    assert redelivered == customer_step(customer, "t2", T0 + 3 * HOUR, 12.0)
    probe = T0 + DELAY + 3 * HOUR
    assert terminal_step(restored_terminal, "p", probe) == terminal_step(terminal, "p", probe)


def test_from_bytes_rejects_damaged_state() -> None:
    state = CustomerState()
    customer_step(state, "a", T0, 1.0)
    data = state.to_bytes()
    with pytest.raises(ValueError, match="truncated"):
        CustomerState.from_bytes(data[:-1])
    with pytest.raises(ValueError, match="format version"):
        CustomerState.from_bytes(b"\x09" + data[1:])
    with pytest.raises(ValueError, match="shorter than its header"):
        TerminalState.from_bytes(b"\x01")


def test_state_size_stays_bounded_over_a_long_stream() -> None:
    customer, terminal = CustomerState(), TerminalState()
    customer_sizes, terminal_sizes = [], []
    for hour in range(24 * 200):  # one transaction an hour for 200 days
        ts = T0 + hour * HOUR
        customer_step(customer, f"t{hour}", ts, 10.0)
        terminal_step(terminal, f"t{hour}", ts)
        terminal_label(terminal, f"t{hour}", ts, hour % 10 == 0)
        customer_sizes.append(len(customer.to_bytes()))
        terminal_sizes.append(len(terminal.to_bytes()))
    customer_cap = int((30 * DAY + ALLOWED_LATENESS_SECONDS) / HOUR) + 1
    terminal_cap = int((DELAY + 30 * DAY + TERMINAL_LATENESS_SECONDS) / HOUR) + 1
    assert len(customer) == customer_cap
    assert len(terminal) == terminal_cap
    assert len(terminal.fraud_times) in (terminal_cap // 10, terminal_cap // 10 + 1)
    assert set(customer_sizes[24 * 60 :]) == {25 + 24 * customer_cap}
    steady = terminal_sizes[24 * 60 :]
    assert max(steady) - min(steady) <= 8  # one fraud timestamp more or less
    assert max(steady) <= 17 + 13 * terminal_cap + 8 * (terminal_cap // 10 + 1)


def test_fraud_vector_flags_and_order() -> None:
    customer = tuple(float(i) for i in range(len(CUSTOMER_FEATURE_NAMES)))
    terminal = tuple(100.0 + i for i in range(len(TERMINAL_FEATURE_NAMES)))
    saturday_night = dt.datetime(2018, 4, 7, 6, 59, 59, tzinfo=dt.UTC).timestamp()
    monday_morning = dt.datetime(2018, 4, 9, 7, 0, 0, tzinfo=dt.UTC).timestamp()
    sunday_late = dt.datetime(2018, 4, 8, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    vector = fraud_vector(saturday_night, 12.5, customer, terminal)
    assert len(vector) == len(FEATURE_NAMES)
    named = dict(zip(FEATURE_NAMES, vector, strict=True))
    assert (named["tx_amount"], named["tx_during_weekend"], named["tx_during_night"]) == (
        12.5,
        1.0,
        1.0,
    )
    for index, name in enumerate(CUSTOMER_FEATURE_NAMES):
        assert named[name] == customer[index]
    for index, name in enumerate(TERMINAL_FEATURE_NAMES):
        assert named[name] == terminal[index]
    assert fraud_vector(monday_morning, 1.0, customer, terminal)[1:3] == [0.0, 0.0]
    assert fraud_vector(sunday_late, 1.0, customer, terminal)[1:3] == [1.0, 0.0]


def make_history(rows: list[tuple[str, float, str, str, float, int]]) -> TransactionHistory:
    ids, times, customers, terminals, amounts, frauds = zip(*rows, strict=True)
    return TransactionHistory(
        transaction_id=np.array(ids, dtype=object),
        timestamp=np.array(times, dtype=np.float64),
        customer_id=np.array(customers, dtype=object),
        terminal_id=np.array(terminals, dtype=object),
        amount=np.array(amounts, dtype=np.float64),
        currency=np.array([""] * len(rows), dtype=object),
        fraud=np.array(frauds, dtype=np.int8),
    )


def test_offline_labels_arrive_exactly_at_the_delay_before_that_instants_transaction() -> None:
    history = make_history(
        [
            ("a", T0, "c1", "m", 10.0, 1),
            ("b", T0 + HOUR, "c2", "m", 20.0, 0),
            ("c", T0 + DELAY, "c3", "m", 30.0, 0),  # a's label is due exactly now
            ("d", T0 + DELAY + HOUR, "c3", "m", 40.0, 0),
        ]
    )
    features = compute_fraud_features(history)
    assert features.dtype == np.float32 and features.shape == (4, len(FEATURE_NAMES))
    risk_1day = FEATURE_NAMES.index("terminal_risk_1day")
    count_1day = FEATURE_NAMES.index("terminal_nb_tx_1day")
    assert features[2, count_1day] == 1 and features[2, risk_1day] == 1.0
    assert features[3, count_1day] == 2 and features[3, risk_1day] == 0.5
    without_labels = compute_fraud_features(history, label_delay=DELAY + 1)
    assert without_labels[2, count_1day] == 0


def test_compute_returns_rows_in_the_order_of_an_unsorted_history() -> None:
    rows = [
        ("a", T0, "c", "m", 10.0, 0),
        ("b", T0 + HOUR, "c", "m", 20.0, 0),
        ("c", T0 + 2 * HOUR, "c", "m", 30.0, 0),
    ]
    ordered = compute_fraud_features(make_history(rows))
    shuffled = compute_fraud_features(make_history([rows[2], rows[0], rows[1]]))
    np.testing.assert_array_equal(shuffled, ordered[[2, 0, 1]])


def reference_features(history: TransactionHistory, delay: float) -> np.ndarray:
    """The definitions read literally, O(n²), on a history sorted by time."""
    ts, amount = history.timestamp, history.amount
    fraud = history.fraud if history.fraud is not None else np.zeros(len(ts), dtype=np.int8)
    out = []
    for i in range(len(ts)):
        t = ts[i]
        mine = [j for j in range(i + 1) if history.customer_id[j] == history.customer_id[i]]
        row = [amount[i]]
        moment = dt.datetime.fromtimestamp(t, dt.UTC)
        row += [float(moment.weekday() >= 5), float(moment.hour <= 6)]
        for days in (1, 7, 30):
            window = [j for j in mine if t - days * DAY < ts[j] <= t]
            row += [len(window), float(np.mean(amount[window]))]
        for days in (1, 7, 30):
            window = [
                j
                for j in range(len(ts))
                if history.terminal_id[j] == history.terminal_id[i]
                and t - delay - days * DAY < ts[j] <= t - delay
            ]
            row += [len(window), float(np.mean(fraud[window])) if window else 0.0]
        earlier = [j for j in mine[:-1] if ts[j] > t - 30 * DAY][-RATIO_MAX_EARLIER:]
        median = statistics.median(amount[earlier]) if earlier else None
        row.append(0.0 if median is None else math.log1p(amount[i]) - math.log1p(median))
        gap = t - ts[mine[-2]] if len(mine) > 1 else SINCE_PREVIOUS_CAP_SECONDS
        row.append(math.log1p(min(gap, SINCE_PREVIOUS_CAP_SECONDS)))
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize(
    ("seed", "customers", "days"),
    [(0, 8, 60), (1, 8, 60), (2, 3, 12)],  # the last: busy cards, the 64-amount cap applies
)
def test_matches_the_definitions_on_random_histories(seed: int, customers: int, days: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    # whole hours: plenty of exact window boundaries and same-instant ties
    times = np.sort(T0 + rng.integers(0, days * 24, n) * HOUR)
    history = TransactionHistory(
        transaction_id=np.array([f"tx{i}" for i in range(n)], dtype=object),
        timestamp=times.astype(np.float64),
        customer_id=np.array([f"c{k}" for k in rng.integers(0, customers, n)], dtype=object),
        terminal_id=np.array([f"m{k}" for k in rng.integers(0, 5, n)], dtype=object),
        amount=np.round(rng.gamma(2.0, 30.0, n), 2),
        currency=np.array([""] * n, dtype=object),
        fraud=(rng.random(n) < 0.2).astype(np.int8),
    )
    ours = compute_fraud_features(history)
    expected = reference_features(history, DELAY)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_streaming_redelivery_of_a_whole_history_changes_nothing() -> None:
    """At-least-once: replaying every event a second time yields the same features."""
    rng = np.random.default_rng(7)
    customer, terminal = CustomerState(), TerminalState()
    # hourly with up to two hours of jitter: out of order, within the allowed lateness
    jitter = rng.integers(0, 2 * 3600, 300)
    events = [(f"t{i}", T0 + i * HOUR + float(jitter[i]), 5.0 + i) for i in range(300)]
    first = [
        customer_step(customer, tx, ts, amount) + terminal_step(terminal, tx, ts)
        for tx, ts, amount in events
    ]
    again = [
        customer_step(customer, tx, ts, amount) + terminal_step(terminal, tx, ts)
        for tx, ts, amount in events
    ]
    np.testing.assert_allclose(np.array(again), np.array(first), rtol=1e-12, atol=0)
    assert len(customer) == len(terminal) == 300
    terminal_count = len(CUSTOMER_FEATURE_NAMES)  # first terminal column
    assert any(row[terminal_count] > 0 for row in first)  # the terminal windows were populated


def test_non_finite_inputs_are_refused_before_they_poison_the_state() -> None:
    customer, terminal = CustomerState(), TerminalState()
    customer_step(customer, "a", T0, 10.0)
    before = customer.to_bytes()
    with pytest.raises(ValueError, match="non-finite"):
        customer_step(customer, "b", T0 + HOUR, math.nan)
    with pytest.raises(ValueError, match="non-finite"):
        customer_step(customer, "b", math.inf, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        terminal_step(terminal, "b", math.nan)
    with pytest.raises(ValueError, match="non-finite"):
        terminal_label(terminal, "b", math.nan, True)
    assert customer.to_bytes() == before and len(terminal) == 0


def test_running_sums_stay_exact_across_a_rebase() -> None:
    state = CustomerState()
    for day in range(60):  # 1e9 a day: the dropped entries' sum passes 2**32 and is rebased
        features = customer_named(customer_step(state, f"t{day}", T0 + day * DAY, 1e9 + day))
    assert abs(state.base) < 2**32
    assert features["customer_nb_tx_30day"] == 30
    assert features["customer_avg_amount_30day"] == pytest.approx(1e9 + 44.5, abs=1e-3)
    assert features["customer_avg_amount_1day"] == pytest.approx(1e9 + 59, abs=1e-3)


def test_a_terminal_step_that_must_not_store_leaves_the_state_alone() -> None:
    state = fraud.TerminalState()
    fraud.terminal_step(state, "a", 10 * 86_400.0)
    before = state.to_bytes()
    features = fraud.terminal_step(state, "b", 20 * 86_400.0, store=False)
    assert state.to_bytes() == before
    assert features == fraud.terminal_step(
        fraud.TerminalState.from_bytes(before), "b", 20 * 86_400.0
    )


def test_a_customer_decides_lateness_by_its_horizon() -> None:
    state = fraud.CustomerState()
    fraud.customer_step(state, "now", 100 * 86_400.0, 10.0)
    assert fraud.customer_is_too_late(state, state.horizon - 1.0)
    assert not fraud.customer_is_too_late(state, state.horizon)
