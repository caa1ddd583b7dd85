"""Seeded synthetic history, so demos and tests run where the shared data sets are absent.

Transactions follow the published description of the Fraud Detection Handbook's simulator
(customers and terminals on a 100 x 100 map, customers paying at terminals within a radius)
with its three fraud scenarios, plus a card-not-present burst. Markets follow a two-regime
Markov-switching model with GARCH-like volatility, crashes and a VIX-like index.

Everything is numpy: the same seed gives the same arrays, hence the same CSV rows, on the same
numpy build. Each part of a simulation draws from its own child of one `SeedSequence`, so
turning one scenario's knob does not reshuffle the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from riskstream.history import MARKET_CLOSE_SECONDS, MarketHistory, TransactionHistory

SECONDS_PER_DAY = 86_400
MAP_SIZE = 100.0  # customers and terminals live on a MAP_SIZE x MAP_SIZE square
TRADING_DAYS_PER_YEAR = 252

console = Console(stderr=True)


# --------------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------------


class Scenario(IntEnum):
    """Why a simulated transaction is labelled fraud (the last scenario applied wins)."""

    GENUINE = 0
    LARGE_AMOUNT = 1
    COMPROMISED_TERMINAL = 2
    COMPROMISED_CARD = 3
    CARD_NOT_PRESENT_BURST = 4


@dataclass(frozen=True)
class FraudScenarios:
    """Knobs of the four fraud scenarios; rates are per entity per day so they scale with size.

    The handbook compromises 2 of 10,000 terminals and 3 of 5,000 cards a day; the defaults
    are a little lower because here compromises are already running on day 0 and bursts add
    their own fraud, which keeps the default world near 0.8 % fraud from its first day.
    """

    amount_threshold: float = 220.0
    terminal_compromise_rate: float = 1.5e-4
    terminal_compromise_days: int = 28
    card_compromise_rate: float = 5e-4
    card_compromise_days: int = 14
    card_fraud_share: float = 1 / 3
    card_amount_multiplier: float = 5.0
    burst_rate: float = 2e-4
    burst_min_size: int = 3
    burst_max_size: int = 8
    burst_mean_gap_seconds: float = 90.0

    def scaled(self, factor: float) -> FraudScenarios:
        """The same scenarios, each happening `factor` times as often."""
        return replace(
            self,
            terminal_compromise_rate=self.terminal_compromise_rate * factor,
            card_compromise_rate=self.card_compromise_rate * factor,
            burst_rate=self.burst_rate * factor,
        )


@dataclass(frozen=True)
class CustomerProfiles:
    """Spending habits: where a customer lives, how much and how often they pay."""

    x: np.ndarray
    y: np.ndarray
    mean_amount: np.ndarray
    std_amount: np.ndarray
    tx_per_day: np.ndarray


@dataclass(frozen=True)
class Neighbourhoods:
    """Ragged per-customer lists of reachable terminals (CSR layout, for vectorised picks)."""

    offsets: np.ndarray  # int64 [n_customers + 1]
    terminals: np.ndarray  # int64 [offsets[-1]]

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class CompromiseEvent:
    """An entity (terminal or customer index) compromised from `day`, counted from the start
    of the history (negative: the compromise began before it and is still running)."""

    entity: int
    day: int


@dataclass(frozen=True)
class SimulatedTransactions:
    """A generated history plus its ground truth, which tests and demos can check against."""

    history: TransactionHistory
    scenario: np.ndarray  # int8 per row, a Scenario value
    compromised_terminals: tuple[CompromiseEvent, ...]
    compromised_cards: tuple[CompromiseEvent, ...]
    bursts: tuple[CompromiseEvent, ...]
    start: date
    days: int

    def scenario_counts(self) -> dict[Scenario, int]:
        counts = np.bincount(self.scenario, minlength=len(Scenario))
        return {s: int(counts[s]) for s in Scenario}


@dataclass
class _Rows:
    """Transactions before ids and sorting: indices into the customer/terminal tables."""

    customer: np.ndarray
    terminal: np.ndarray
    day: np.ndarray
    second: np.ndarray  # whole seconds since the start of `day`
    amount: np.ndarray
    scenario: np.ndarray  # int8 Scenario values


def _generators(seed: int, parts: int) -> list[np.random.Generator]:
    """Independent PCG64 streams (pinned bit generator: `default_rng` may change it)."""
    children = np.random.SeedSequence(seed).spawn(parts)
    return [np.random.Generator(np.random.PCG64(child)) for child in children]


def _customer_profiles(rng: np.random.Generator, n: int) -> CustomerProfiles:
    mean_amount = rng.uniform(5.0, 100.0, n)
    return CustomerProfiles(
        x=rng.uniform(0.0, MAP_SIZE, n),
        y=rng.uniform(0.0, MAP_SIZE, n),
        mean_amount=mean_amount,
        std_amount=mean_amount / 2.0,
        tx_per_day=rng.uniform(0.0, 4.0, n),
    )


def _neighbourhoods(
    profiles: CustomerProfiles, term_xy: np.ndarray, radius: float
) -> Neighbourhoods:
    """Terminals within `radius` of each customer; the nearest one when none is that close.

    Customers are visited in x order, in small chunks, and compared only with the terminals in
    the vertical strip their chunk can reach: a handful of milliseconds per chunk even for
    maps of 10,000 terminals.
    """
    tx_order = np.argsort(term_xy[:, 0], kind="stable")
    tx, ty = term_xy[tx_order, 0], term_xy[tx_order, 1]
    by_x = np.argsort(profiles.x, kind="stable")
    owners: list[np.ndarray] = []
    members: list[np.ndarray] = []
    for lo in range(0, len(by_x), 256):
        chunk = by_x[lo : lo + 256]
        cx, cy = profiles.x[chunk], profiles.y[chunk]
        left = np.searchsorted(tx, cx.min() - radius, side="left")
        right = np.searchsorted(tx, cx.max() + radius, side="right")
        d2 = (cx[:, None] - tx[None, left:right]) ** 2 + (cy[:, None] - ty[None, left:right]) ** 2
        rows, cols = np.nonzero(d2 <= radius * radius)
        owners.append(chunk[rows])
        members.append(tx_order[left + cols])
    owner, member = np.concatenate(owners), np.concatenate(members)
    lonely = np.setdiff1d(np.arange(len(profiles.x)), owner)
    if len(lonely):
        d2 = (profiles.x[lonely, None] - term_xy[None, :, 0]) ** 2 + (
            profiles.y[lonely, None] - term_xy[None, :, 1]
        ) ** 2
        owner = np.concatenate([owner, lonely])
        member = np.concatenate([member, d2.argmin(axis=1)])
    order = np.lexsort((member, owner))  # by customer, then terminal: a canonical layout
    sizes = np.bincount(owner, minlength=len(profiles.x))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return Neighbourhoods(offsets=offsets, terminals=member[order].astype(np.int64))


def _times_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    """Whole seconds, normal around noon (as in the handbook), redrawn until inside the day."""
    seconds = rng.normal(SECONDS_PER_DAY / 2, 20_000.0, n)
    outside = (seconds < 0) | (seconds >= SECONDS_PER_DAY)
    while outside.any():
        seconds[outside] = rng.normal(SECONDS_PER_DAY / 2, 20_000.0, int(outside.sum()))
        outside = (seconds < 0) | (seconds >= SECONDS_PER_DAY)
    return np.floor(seconds)


def _amounts(rng: np.random.Generator, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Normal amounts; a non-positive draw becomes uniform on (0, 2*mean), then cents."""
    amount = rng.normal(mean, std)
    bad = amount <= 0
    amount[bad] = rng.uniform(0.0, 2.0 * mean[bad])
    return np.maximum(np.round(amount, 2), 0.01)


def _genuine_rows(
    rng: np.random.Generator, profiles: CustomerProfiles, hoods: Neighbourhoods, days: int
) -> _Rows:
    n_customers = len(profiles.x)
    counts = rng.poisson(np.broadcast_to(profiles.tx_per_day, (days, n_customers)))
    cell = np.repeat(np.arange(days * n_customers, dtype=np.int64), counts.ravel())
    day, customer = np.divmod(cell, n_customers)
    second = _times_of_day(rng, len(cell))
    amount = _amounts(rng, profiles.mean_amount[customer], profiles.std_amount[customer])
    pick = (rng.random(len(cell)) * hoods.sizes[customer]).astype(np.int64)
    terminal = hoods.terminals[hoods.offsets[customer] + pick]
    return _Rows(customer, terminal, day, second, amount, np.zeros(len(cell), np.int8))


def _compromise_events(
    rng: np.random.Generator, population: int, rate: float, days: int, lead_in: int = 0
) -> tuple[CompromiseEvent, ...]:
    """Each day a Poisson(rate * population) number of distinct entities gets compromised.

    Days start at `-lead_in`, so compromises that began before the history are still running
    on day 0 and the fraud rate is steady from the first day instead of ramping up.
    """
    per_day = rng.poisson(rate * population, days + lead_in)
    events: list[CompromiseEvent] = []
    for offset, k in enumerate(per_day):
        chosen = rng.choice(population, size=min(int(k), population), replace=False)
        events.extend(CompromiseEvent(int(entity), offset - lead_in) for entity in np.sort(chosen))
    return tuple(events)


def _exposure(
    events: tuple[CompromiseEvent, ...], population: int, days: int, duration: int
) -> np.ndarray:
    """Boolean [entity, day]: is the entity compromised on that day (event day included)."""
    exposed = np.zeros((population, days), dtype=bool)
    for event in events:
        exposed[event.entity, max(event.day, 0) : max(event.day + duration, 0)] = True
    return exposed


def _apply_fraud(
    rng: np.random.Generator,
    rows: _Rows,
    knobs: FraudScenarios,
    terminal_exposed: np.ndarray,
    card_exposed: np.ndarray,
) -> None:
    """Label genuine rows in the handbook's order: large amount, terminal, then card."""
    rows.scenario[rows.amount > knobs.amount_threshold] = Scenario.LARGE_AMOUNT
    rows.scenario[terminal_exposed[rows.terminal, rows.day]] = Scenario.COMPROMISED_TERMINAL
    stolen = card_exposed[rows.customer, rows.day] & (
        rng.random(len(rows.amount)) < knobs.card_fraud_share
    )
    rows.amount[stolen] = np.round(rows.amount[stolen] * knobs.card_amount_multiplier, 2)
    rows.scenario[stolen] = Scenario.COMPROMISED_CARD


def _far_terminals(
    rng: np.random.Generator,
    customer_xy: np.ndarray,
    term_xy: np.ndarray,
    radius: float,
) -> np.ndarray:
    """A random terminal outside each customer's radius: somewhere the card was never used."""
    picks = rng.integers(0, len(term_xy), len(customer_xy))
    for _ in range(64):  # bounded: a radius covering the whole map leaves nowhere "far"
        near = ((term_xy[picks] - customer_xy) ** 2).sum(axis=1) <= radius * radius
        if not near.any():
            break
        picks[near] = rng.integers(0, len(term_xy), int(near.sum()))
    return picks


def _burst_rows(
    rng: np.random.Generator,
    profiles: CustomerProfiles,
    term_xy: np.ndarray,
    radius: float,
    knobs: FraudScenarios,
    days: int,
) -> tuple[_Rows, tuple[CompromiseEvent, ...]]:
    """Card-not-present bursts: a few quick payments, minutes apart, at unfamiliar terminals."""
    events = _compromise_events(rng, len(profiles.x), knobs.burst_rate, days)
    burst_customer = np.array([e.entity for e in events], dtype=np.int64)
    burst_day = np.array([e.day for e in events], dtype=np.int64)
    sizes = rng.integers(knobs.burst_min_size, knobs.burst_max_size + 1, len(events))
    member = np.repeat(np.arange(len(events)), sizes)
    gaps = rng.exponential(knobs.burst_mean_gap_seconds, len(member))
    first_of_burst = np.cumsum(sizes) - sizes
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first_of_burst], sizes)  # the first payment at the start
    span = np.zeros(len(events))
    np.maximum.at(span, member, elapsed)
    # Start so that the whole burst fits inside its day (and inside the simulated period).
    starts = rng.random(len(events)) * np.maximum(SECONDS_PER_DAY - 1 - span, 0.0)
    customer = burst_customer[member]
    customer_xy = np.column_stack([profiles.x[customer], profiles.y[customer]])
    terminal = _far_terminals(rng, customer_xy, term_xy, radius)
    amount = np.round(profiles.mean_amount[customer] * rng.uniform(0.5, 2.5, len(member)), 2)
    rows = _Rows(
        customer=customer,
        terminal=terminal,
        day=burst_day[member],
        second=np.floor(starts[member] + elapsed),
        amount=np.maximum(amount, 0.01),
        scenario=np.full(len(member), Scenario.CARD_NOT_PRESENT_BURST, np.int8),
    )
    return rows, events


def _concat(parts: list[_Rows]) -> _Rows:
    return _Rows(
        *(np.concatenate([getattr(p, name) for p in parts]) for name in _Rows.__dataclass_fields__)
    )


def _labels(prefix: str, n: int) -> np.ndarray:
    """Readable, fixed-width ids ("C0042"), as an object array for cheap fancy indexing."""
    width = len(str(max(n - 1, 0)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def _epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def simulate_transactions(
    n_customers: int = 2_000,
    n_terminals: int = 4_000,
    start: date = date(2025, 1, 1),
    days: int = 90,
    seed: int = 1,
    fraud: FraudScenarios | None = None,
    radius: float = 5.0,
    currency: str = "EUR",
) -> SimulatedTransactions:
    """Generate labelled card transactions together with the scenario ground truth."""
    _require_positive(n_customers=n_customers, n_terminals=n_terminals, days=days)
    knobs = fraud or FraudScenarios()
    rng_profiles, rng_terminals, rng_genuine, rng_terms, rng_cards, rng_burst, rng_label = (
        _generators(seed, 7)
    )
    profiles = _customer_profiles(rng_profiles, n_customers)
    term_xy = rng_terminals.uniform(0.0, MAP_SIZE, (n_terminals, 2))
    hoods = _neighbourhoods(profiles, term_xy, radius)

    genuine = _genuine_rows(rng_genuine, profiles, hoods, days)
    bad_terminals = _compromise_events(
        rng_terms,
        n_terminals,
        knobs.terminal_compromise_rate,
        days,
        lead_in=knobs.terminal_compromise_days - 1,
    )
    bad_cards = _compromise_events(
        rng_cards,
        n_customers,
        knobs.card_compromise_rate,
        days,
        lead_in=knobs.card_compromise_days - 1,
    )
    _apply_fraud(
        rng_label,
        genuine,
        knobs,
        _exposure(bad_terminals, n_terminals, days, knobs.terminal_compromise_days),
        _exposure(bad_cards, n_customers, days, knobs.card_compromise_days),
    )
    bursts, burst_events = _burst_rows(rng_burst, profiles, term_xy, radius, knobs, days)
    rows = _concat([genuine, bursts])

    timestamp = _epoch(start) + rows.day * float(SECONDS_PER_DAY) + rows.second
    order = np.argsort(timestamp, kind="stable")
    n = len(order)
    history = TransactionHistory(
        transaction_id=np.arange(n).astype(str).astype(object),
        timestamp=timestamp[order].astype(np.float64),
        customer_id=_labels("C", n_customers)[rows.customer[order]],
        terminal_id=_labels("T", n_terminals)[rows.terminal[order]],
        amount=rows.amount[order].astype(np.float64),
        currency=np.full(n, currency, dtype=object),
        fraud=(rows.scenario[order] != Scenario.GENUINE).astype(np.int8),
    )
    return SimulatedTransactions(
        history=history,
        scenario=rows.scenario[order],
        compromised_terminals=bad_terminals,
        compromised_cards=bad_cards,
        bursts=burst_events,
        start=start,
        days=days,
    )


def generate_transactions(
    n_customers: int = 2_000,
    n_terminals: int = 4_000,
    start: date = date(2025, 1, 1),
    days: int = 90,
    seed: int = 1,
    fraud: FraudScenarios | None = None,
    radius: float = 5.0,
    currency: str = "EUR",
) -> TransactionHistory:
    """Labelled card transactions, sorted by time; see `simulate_transactions` for the truth."""
    return simulate_transactions(
        n_customers, n_terminals, start, days, seed, fraud, radius, currency
    ).history


# --------------------------------------------------------------------------------------------
# Market
# --------------------------------------------------------------------------------------------


class Regime(IntEnum):
    CALM = 0
    STRESSED = 1


@dataclass(frozen=True)
class MarketModel:
    """Two Markov-switching regimes, each pulling a GARCH(1,1) variance to its own level.

    Annualised figures. The defaults were tuned against the S&P 500 labels in the shared data
    README: about one day in seven stressed (mean spell about 22 trading days), volatility near
    12 % calm and 35 % stressed (about 18 % overall), 15-20 % of days followed by a 5 %
    drawdown within 20 days and 7-9 % by 20-day realised volatility above 30 %.
    """

    calm_to_stress: float = 0.006
    stress_to_calm: float = 0.045
    calm_volatility: float = 0.12
    stress_volatility: float = 0.35
    calm_drift: float = 0.12
    stress_drift: float = -0.20
    garch_alpha: float = 0.10
    garch_beta: float = 0.80
    tail_dof: float = 5.0
    crash_probability_calm: float = 0.0015
    crash_probability_stress: float = 0.01
    crash_mean: float = 0.05
    crash_std: float = 0.02
    start_price: float = 1_000.0
    base_volume: float = 3.0e9
    volatility_premium: float = 1.15


@dataclass(frozen=True)
class SimulatedMarket:
    """A generated daily history (with its VIX-like index) and the hidden regime path."""

    history: MarketHistory
    regime: np.ndarray  # int8 per bar, a Regime value
    crash: np.ndarray  # bool per bar
    conditional_volatility: np.ndarray  # annualised, the model's vol for each bar


@dataclass(frozen=True)
class _Path:
    regime: np.ndarray
    crash: np.ndarray
    log_return: np.ndarray
    daily_vol: np.ndarray
    next_daily_vol: np.ndarray


def _trading_days(start: date, days: int) -> np.ndarray:
    """`days` weekdays from `start` (rolled forward to a weekday); holidays are ignored."""
    first = np.busday_offset(np.datetime64(start, "D"), 0, roll="forward")
    return np.busday_offset(first, np.arange(days))


def _student_t_unit(rng: np.random.Generator, dof: float, n: int) -> np.ndarray:
    """Fat-tailed shocks rescaled to unit variance."""
    return rng.standard_t(dof, n) * np.sqrt((dof - 2.0) / dof)


def _regime_path(rng: np.random.Generator, model: MarketModel, days: int) -> _Path:
    """The sequential part (regime switching and variance recursion) in one tight loop."""
    alpha, beta = model.garch_alpha, model.garch_beta
    target_var = (
        np.array([model.calm_volatility, model.stress_volatility]) ** 2 / TRADING_DAYS_PER_YEAR
    )
    omega = target_var * (1.0 - alpha - beta)
    drift = np.array([model.calm_drift, model.stress_drift]) / TRADING_DAYS_PER_YEAR
    leave = np.array([model.calm_to_stress, model.stress_to_calm])
    crash_p = np.array([model.crash_probability_calm, model.crash_probability_stress])
    switch_u, crash_u = rng.random(days), rng.random(days)
    shocks = _student_t_unit(rng, model.tail_dof, days)
    crash_size = np.abs(rng.normal(model.crash_mean, model.crash_std, days))

    regime = np.zeros(days, np.int8)
    crash = np.zeros(days, bool)
    log_return = np.zeros(days)
    variance = np.zeros(days + 1)
    state, var, prev_shock, crashed = int(Regime.CALM), target_var[Regime.CALM], 0.0, False
    for t in range(days):
        if crashed:
            state = int(Regime.STRESSED)
        elif switch_u[t] < leave[state]:
            state = 1 - state
        if t:
            var = omega[state] + alpha * prev_shock**2 + beta * var
        crashed = bool(crash_u[t] < crash_p[state])
        shock = np.sqrt(var) * shocks[t] - (crash_size[t] if crashed else 0.0)
        regime[t], crash[t], variance[t] = state, crashed, var
        log_return[t] = drift[state] - 0.5 * var + shock
        prev_shock = shock
    variance[days] = omega[state] + alpha * prev_shock**2 + beta * var
    vol = np.sqrt(variance)
    return _Path(regime, crash, log_return, vol[:-1], vol[1:])


def _ohlcv(
    rng: np.random.Generator, model: MarketModel, path: _Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bars around the close path: an overnight gap, an intraday move, wicks scaled by vol."""
    days = len(path.log_return)
    close = model.start_price * np.exp(np.cumsum(path.log_return))
    previous_close = np.concatenate([[model.start_price], close[:-1]])
    gap = rng.normal(0.0, 0.3, days) * path.daily_vol
    open_ = previous_close * np.exp(gap)
    upper_wick = np.abs(rng.normal(0.0, 0.5, days)) * path.daily_vol
    lower_wick = np.abs(rng.normal(0.0, 0.5, days)) * path.daily_vol
    high = np.maximum(open_, close) * np.exp(upper_wick)
    low = np.minimum(open_, close) * np.exp(-lower_wick)
    calm_daily = model.calm_volatility / np.sqrt(TRADING_DAYS_PER_YEAR)
    surprise = np.minimum(np.abs(path.log_return) / calm_daily, 8.0)
    log_volume = (
        np.log(model.base_volume)
        + 0.45 * path.regime
        + 0.12 * surprise
        + rng.normal(0.0, 0.15, days)
    )
    # Rounding is monotone, so high >= max(open, close) >= min(open, close) >= low survives it.
    bars = [np.round(a, 2) for a in (open_, high, low, close)]
    return bars[0], bars[1], np.maximum(bars[2], 0.01), bars[3], np.round(np.exp(log_volume))


def _vix(rng: np.random.Generator, model: MarketModel, path: _Path) -> np.ndarray:
    """Implied-vol-like index: the model's next-day vol, annualised, plus a premium and noise.

    The premium is larger in stress (fear is priced above realised risk) and an AR(1) noise
    keeps the index from being an exact function of the returns.
    """
    days = len(path.regime)
    premium = model.volatility_premium * np.where(path.regime == Regime.STRESSED, 1.1, 1.0)
    innovations = rng.normal(0.0, 0.05, days)
    noise = np.zeros(days)
    for t in range(1, days):
        noise[t] = 0.9 * noise[t - 1] + innovations[t]
    annual = path.next_daily_vol * np.sqrt(TRADING_DAYS_PER_YEAR) * 100.0
    return np.round(np.maximum(annual * premium * np.exp(noise), 5.0), 2)


def simulate_market(
    start: date = date(2005, 1, 3),
    days: int = 5_000,
    seed: int = 1,
    instrument: str = "SYN",
    model: MarketModel | None = None,
) -> SimulatedMarket:
    """Generate daily OHLCV bars and a VIX-like index, with the hidden regime path."""
    _require_positive(days=days)
    params = model or MarketModel()
    rng_path, rng_bars, rng_vix = _generators(seed, 3)
    path = _regime_path(rng_path, params, days)
    open_, high, low, close, volume = _ohlcv(rng_bars, params, path)
    timestamp = (
        _trading_days(start, days).astype("datetime64[s]").astype(np.int64).astype(np.float64)
        + MARKET_CLOSE_SECONDS
    )
    history = MarketHistory(
        instrument=instrument,
        timestamp=timestamp,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        vix=_vix(rng_vix, params, path),
    )
    return SimulatedMarket(
        history=history,
        regime=path.regime,
        crash=path.crash,
        conditional_volatility=path.daily_vol * np.sqrt(TRADING_DAYS_PER_YEAR),
    )


def generate_market(
    start: date = date(2005, 1, 3),
    days: int = 5_000,
    seed: int = 1,
    instrument: str = "SYN",
    model: MarketModel | None = None,
) -> MarketHistory:
    """Daily OHLCV bars with the VIX-like index in `MarketHistory.vix`."""
    return simulate_market(start, days, seed, instrument, model).history


def _require_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _max_drawdown(close: np.ndarray) -> float:
    return float(np.max(1.0 - close / np.maximum.accumulate(close)))


def _report(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _transactions_summary(sim: SimulatedTransactions, out: Path, seconds: dict[str, float]) -> None:
    history = sim.history
    assert history.fraud is not None
    counts = sim.scenario_counts()
    last_day = date.fromordinal(sim.start.toordinal() + sim.days - 1)
    _report(
        f"wrote {out}",
        [
            ("rows", f"{len(history):,}"),
            ("period", f"{sim.start.isoformat()} → {last_day.isoformat()} ({sim.days} days)"),
            (
                "customers / terminals",
                f"{len(set(history.customer_id)):,} / {len(set(history.terminal_id)):,} active",
            ),
            ("fraud rate", f"{history.fraud.mean():.3%} ({int(history.fraud.sum()):,} frauds)"),
            *(
                (f"  {s.name.lower().replace('_', ' ')}", f"{counts[s]:,}")
                for s in Scenario
                if s != Scenario.GENUINE
            ),
            ("generated in", f"{seconds['generate']:.2f} s"),
            ("written in", f"{seconds['write']:.2f} s"),
        ],
    )


def _mean_text(values: np.ndarray) -> str:
    return f"{values.mean():.1f}" if len(values) else "-"


def _market_summary(sim: SimulatedMarket, outs: list[Path], seconds: dict[str, float]) -> None:
    history = sim.history
    assert history.vix is not None
    stressed = sim.regime == Regime.STRESSED
    vix_note = "" if len(outs) > 1 else " (not written: add --vix-out)"
    first, last = (
        datetime.fromtimestamp(history.timestamp[i], UTC).date().isoformat() for i in (0, -1)
    )
    _report(
        "wrote " + " and ".join(str(p) for p in outs),
        [
            ("instrument", history.instrument),
            ("bars", f"{len(history.close):,} trading days, {first} → {last}"),
            ("stressed days", f"{stressed.mean():.1%}"),
            ("crashes", f"{int(sim.crash.sum())}"),
            ("max drawdown", f"{_max_drawdown(history.close):.1%}"),
            (
                "VIX mean calm / stressed",
                f"{_mean_text(history.vix[~stressed])} / {_mean_text(history.vix[stressed])}"
                + vix_note,
            ),
            ("generated in", f"{seconds['generate']:.2f} s"),
            ("written in", f"{seconds['write']:.2f} s"),
        ],
    )


def _parse_date(ctx: click.Context, param: click.Parameter, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"expected YYYY-MM-DD, got {value!r}") from None


@contextmanager
def _writing(target: Path | str) -> Iterator[None]:
    """Turn a failed write (missing permission, full disk, bad folder) into a clear CLI error."""
    try:
        yield
    except OSError as exc:
        raise click.ClickException(
            f"could not write {target}: {exc.strerror or exc}. Choose another --out path."
        ) from None


F = TypeVar("F", bound=Callable[..., Any])


def _out_option(help: str) -> Callable[[F], F]:
    """--out: the CSV file to write (every simulation writes one)."""
    return click.option(
        "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help=help
    )


_SEED = click.option(
    "--seed", default=1, show_default=True, type=int, help="Random seed: same seed, same file."
)


@click.group("simulate")
def simulate() -> None:
    """Write seeded synthetic labelled history (CSV) for demos, tests and training.

    The same seed and options always give a byte-identical CSV (on the same numpy build; for a
    .gz path, the CSV inside it). A path ending in .gz is gzip-compressed.
    """


@simulate.command(
    "transactions", short_help="Labelled card transactions (handbook-style fraud scenarios)."
)
@_out_option(
    "CSV to write (transaction_id,timestamp,customer_id,terminal_id,amount,currency,fraud)."
)
@_SEED
@click.option(
    "--customers", default=2_000, show_default=True, type=click.IntRange(1), help="Card holders."
)
@click.option(
    "--terminals",
    default=4_000,
    show_default=True,
    type=click.IntRange(1),
    help="Payment terminals on the map.",
)
@click.option(
    "--start",
    default="2025-01-01",
    show_default=True,
    callback=_parse_date,
    metavar="YYYY-MM-DD",
    help="First day (YYYY-MM-DD, UTC).",
)
@click.option(
    "--days", default=90, show_default=True, type=click.IntRange(1), help="Calendar days to cover."
)
@click.option(
    "--fraud-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.0),
    help="Multiply how often terminals and cards are compromised and bursts happen "
    "(0 leaves only the large-amount rule).",
)
def transactions_command(
    out: Path,
    seed: int,
    customers: int,
    terminals: int,
    start: date,
    days: int,
    fraud_scale: float,
) -> None:
    """Card transactions in the Fraud Detection Handbook's style, labelled with four frauds.

    Customers pay at terminals near them. Fraud: amounts over 220; compromised terminals (all
    their payments for 28 days); compromised cards (for 14 days a third of the payments, at 5x
    the amount); card-not-present bursts (a few payments minutes apart at unfamiliar terminals).
    About 2 payments per customer per day and about 0.8 % fraud, steady from the first day.
    """
    from riskstream.history import write_transactions

    began = time.perf_counter()
    with console.status("generating transactions…"):
        sim = simulate_transactions(
            customers, terminals, start, days, seed, FraudScenarios().scaled(fraud_scale)
        )
    if not len(sim.history):
        raise click.UsageError("no transactions were generated: raise --customers or --days.")
    generated = time.perf_counter()
    with console.status(f"writing {len(sim.history):,} rows to {out}…"), _writing(out):
        write_transactions(out, sim.history)
    seconds = {"generate": generated - began, "write": time.perf_counter() - generated}
    _transactions_summary(sim, out, seconds)


@simulate.command(
    "market", short_help="Daily OHLCV bars and a VIX-like index from a regime-switching model."
)
@_out_option("Daily OHLCV CSV to write (date,open,high,low,close,volume).")
@click.option(
    "--vix-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the VIX-like index as a second CSV in the same shape (its close is the "
    "index); train and evaluate read it with the market file.",
)
@_SEED
@click.option(
    "--start",
    default="2005-01-03",
    show_default=True,
    callback=_parse_date,
    metavar="YYYY-MM-DD",
    help="First trading day (YYYY-MM-DD; a weekend rolls forward to Monday).",
)
@click.option(
    "--days",
    default=5_000,
    show_default=True,
    type=click.IntRange(1),
    help="Trading days (weekdays) to generate; 5,000 is about 20 years.",
)
@click.option(
    "--instrument", default="SYN", show_default=True, help="Instrument name in the events."
)
def market_command(
    out: Path,
    vix_out: Path | None,
    seed: int,
    start: date,
    days: int,
    instrument: str,
) -> None:
    """Daily index bars from a calm/stressed regime-switching model, with a VIX-like index.

    Volatility follows a GARCH-like recursion pulled toward the current regime's level; crashes
    happen (more often in stress) and tip the market into stress; volume and the VIX rise in
    stress.
    """
    from riskstream.history import write_market

    began = time.perf_counter()
    sim = simulate_market(start, days, seed, instrument)
    generated = time.perf_counter()
    # Without --vix-out the index is left out on purpose; write_market refuses to drop it.
    history = sim.history if vix_out is not None else replace(sim.history, vix=None)
    with _writing(out if vix_out is None else f"{out} or {vix_out}"):
        write_market(out, history, vix_path=vix_out)
    seconds = {"generate": generated - began, "write": time.perf_counter() - generated}
    _market_summary(sim, [p for p in (out, vix_out) if p is not None], seconds)


@simulate.command(
    "credit", short_help="A borrower table like Give Me Some Credit, for tabular models."
)
@_out_option(
    "CSV to write: borrower_id, SeriousDlqin2yrs (the label), ten numeric indicators, "
    "housing (categorical)."
)
@_SEED
@click.option(
    "--rows", default=20_000, show_default=True, type=click.IntRange(1), help="Borrowers."
)
def credit_command(out: Path, seed: int, rows: int) -> None:
    """Borrowers with Give Me Some Credit's columns and difficulties, labelled by a planted rule.

    Heavy tails (utilisation and debt ratio into the thousands), 96/98 sentinels in the
    past-due counts, monthly income missing for about a fifth, a default rate near 6.7 %, and a
    housing category. Train a model on it with
    `riskstream train tabular --data FILE --label SeriousDlqin2yrs --name credit`.
    """
    from riskstream.credit_table import LABEL, simulate_credit, write_credit

    began = time.perf_counter()
    table = simulate_credit(rows, seed)
    generated = time.perf_counter()
    with console.status(f"writing {rows:,} rows to {out}…"), _writing(out):
        write_credit(out, table)
    income = table.numbers["MonthlyIncome"]
    _report(
        f"wrote {out}",
        [
            ("rows", f"{len(table):,}"),
            ("default rate", f"{table.labels.mean():.2%} ({LABEL} = 1)"),
            ("income missing", f"{np.isnan(income).mean():.1%}"),
            ("generated in", f"{generated - began:.2f} s"),
            ("written in", f"{time.perf_counter() - generated:.2f} s"),
        ],
    )
