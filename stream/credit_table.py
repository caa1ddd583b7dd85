"""A seeded synthetic borrower table shaped like Give Me Some Credit, for `riskstream simulate
credit`: the tabular path (train tabular, evaluate, replay --model, the worker's requests topic)
can then be shown and tested without outside data.

What makes the real table hard is kept on purpose: heavy tails (revolving utilisation and the
debt ratio reach the thousands), the 96/98 sentinels in the three past-due counts, monthly
income missing for about a fifth of borrowers and dependants for a few per cent, a default rate
near 6.7 %. One categorical column (housing) is added, which the real table lacks, so that the
categorical encoding and its unseen bucket are exercised too. The label follows a planted
logistic rule, so a model has something to learn and a test can tell whether it did.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABEL = "SeriousDlqin2yrs"
ID = "borrower_id"
HOUSING = ("own", "mortgage", "rent", "other")
SENTINELS = (96, 98)  # the real table's codes in the past-due counts ("refused", "unknown")
NUMERIC = (
    "RevolvingUtilizationOfUnsecuredLines",
    "age",
    "NumberOfTime30-59DaysPastDueNotWorse",
    "DebtRatio",
    "MonthlyIncome",
    "NumberOfOpenCreditLinesAndLoans",
    "NumberOfTimes90DaysLate",
    "NumberRealEstateLoansOrLines",
    "NumberOfTime60-89DaysPastDueNotWorse",
    "NumberOfDependents",
)
HEADER = (ID, LABEL, *NUMERIC, "housing")


@dataclass(frozen=True)
class CreditTable:
    """One row per borrower; NaN in `numbers` is a missing value (written as NA)."""

    ids: np.ndarray  # str
    labels: np.ndarray  # int8 0/1
    numbers: dict[str, np.ndarray]  # float64, by column
    housing: np.ndarray  # str

    def __len__(self) -> int:
        return int(self.labels.size)

    def rows(self) -> Iterator[list[str]]:
        for i in range(len(self)):
            values = [_number_text(self.numbers[name][i]) for name in NUMERIC]
            yield [str(self.ids[i]), str(int(self.labels[i])), *values, str(self.housing[i])]


def simulate_credit(rows: int, seed: int) -> CreditTable:
    """`rows` borrowers drawn from `seed` (the same seed, the same table)."""
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(52, 14.5, rows).round(), 21, 103)
    utilisation = _heavy_tail(rng, rows, typical=0.15, spread=1.4, tail_share=0.002, tail=2500)
    debt_ratio = _heavy_tail(rng, rows, typical=0.35, spread=0.9, tail_share=0.2, tail=1800)
    income = np.round(rng.lognormal(8.55, 0.65, rows), -1)
    income[rng.random(rows) < 0.2] = np.nan
    dependants = rng.poisson(0.75, rows).astype(float)
    dependants[rng.random(rows) < 0.026] = np.nan
    open_lines = rng.poisson(8.5, rows).astype(float)
    real_estate = rng.poisson(1.0, rows).astype(float)
    strain = np.clip(utilisation, 0, 1.5) + 0.3 * rng.standard_normal(rows)
    late30 = rng.poisson(0.12 + 0.5 * np.clip(strain, 0, None)).astype(float)
    late60 = rng.poisson(0.04 + 0.2 * np.clip(strain, 0, None)).astype(float)
    late90 = rng.poisson(0.05 + 0.3 * np.clip(strain, 0, None)).astype(float)
    sentinel = rng.random(rows) < 0.0018
    coded = rng.choice(SENTINELS, rows).astype(float)
    for counts in (late30, late60, late90):
        counts[sentinel] = coded[sentinel]
    housing = rng.choice(HOUSING, rows, p=(0.3, 0.38, 0.27, 0.05))
    logit = (
        -4.5
        + 1.9 * np.clip(utilisation, 0, 1.5)
        + 0.75 * np.log1p(np.where(sentinel, 3, late30))
        + 1.2 * np.log1p(np.where(sentinel, 3, late90))
        + 0.7 * np.log1p(np.where(sentinel, 2, late60))
        - 0.028 * (age - 50)
        - 0.25 * np.log(np.nan_to_num(income, nan=5000.0) / 5000.0 + 0.05)
        + 0.35 * np.isnan(income)
        + 0.25 * (housing == "rent")
        + 0.1 * np.nan_to_num(dependants, nan=0.0)
        + 0.4 * (debt_ratio > 1.5)
    )
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    numbers = dict(
        zip(
            NUMERIC,
            (
                utilisation,
                age,
                late30,
                debt_ratio,
                income,
                open_lines,
                late90,
                real_estate,
                late60,
                dependants,
            ),
            strict=True,
        )
    )
    ids = np.array([f"B{i:07d}" for i in range(1, rows + 1)], dtype=object)
    return CreditTable(ids, labels, numbers, housing.astype(object))


def write_credit(path: Path, table: CreditTable) -> None:
    """CSV, gzipped when the name ends in .gz (the gzip header carries no time: same bytes)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(table.rows())
    data = text.getvalue().encode()
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def _heavy_tail(
    rng: np.random.Generator,
    rows: int,
    typical: float,
    spread: float,
    tail_share: float,
    tail: float,
) -> np.ndarray:
    """Mostly log-normal around `typical`, with `tail_share` of rows far out (up to `tail`):
    the real table's utilisation and debt ratio have both."""
    values = rng.lognormal(np.log(typical), spread, rows)
    far = rng.random(rows) < tail_share
    values[far] = rng.uniform(2, tail, int(far.sum()))
    return np.round(values, 6)


def _number_text(value: float) -> str:
    if np.isnan(value):
        return "NA"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
