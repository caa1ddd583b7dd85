"""History files: both transaction formats (plain and gzipped), market bars with and without the
VIX, and the errors a user sees for files that are not what we expect."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import numpy as np
import pytest

from riskstream.history import (
    MarketHistory,
    TransactionHistory,
    load_market,
    load_transactions,
    market_timestamp,
    write_market,
    write_transactions,
)

HANDBOOK_ROWS = """\
TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_TIME_SECONDS,TX_FRAUD,EXTRA
2,2018-04-01 00:07:56,2,1365,146.0,476,0,x
0,2018-04-01 00:00:31,596,3156,57.16,31,0,y
1,2018-04-01 00:00:31,4961,3412,81.51,31,1,z
3,2018-04-02 23:59:59,4128,8737,64.49,172799,0,w
"""

OWN_ROWS = """\
transaction_id,timestamp,customer_id,terminal_id,amount,currency,fraud
t1,2018-08-08T10:15:03Z,c1,m1,12.5,EUR,0
t2,2018-08-08T12:15:03+02:00,c2,m1,99.99,,1
t3,2018-08-09T00:00:00.250Z,c1,m2,1e3,USD,0
"""


def write_text(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize("name", ["handbook.csv", "handbook.csv.gz"])
def test_handbook_format_loads_sorted_with_ties_in_file_order(tmp_path: Path, name: str) -> None:
    history = load_transactions(write_text(tmp_path / name, HANDBOOK_ROWS))

    assert history.transaction_id.tolist() == ["0", "1", "2", "3"]
    assert history.timestamp.tolist() == [
        epoch("2018-04-01 00:00:31"),
        epoch("2018-04-01 00:00:31"),
        epoch("2018-04-01 00:07:56"),
        epoch("2018-04-02 23:59:59"),
    ]
    assert history.customer_id.tolist() == ["596", "4961", "2", "4128"]
    assert history.terminal_id.tolist() == ["3156", "3412", "1365", "8737"]
    assert history.amount.tolist() == [57.16, 81.51, 146.0, 64.49]
    assert history.fraud is not None and history.fraud.dtype == np.int8
    assert history.fraud.tolist() == [0, 1, 0, 0]
    assert history.currency.tolist() == ["", "", "", ""]
    assert len(history) == 4


def test_gzip_is_detected_from_content_not_name(tmp_path: Path) -> None:
    disguised = tmp_path / "history.csv"
    disguised.write_bytes(gzip.compress(HANDBOOK_ROWS.encode()))
    assert len(load_transactions(disguised)) == 4


@pytest.mark.parametrize("name", ["own.csv", "own.csv.gz"])
def test_own_format_loads_offsets_fractions_and_empty_currency(tmp_path: Path, name: str) -> None:
    history = load_transactions(write_text(tmp_path / name, OWN_ROWS))

    assert history.transaction_id.tolist() == ["t1", "t2", "t3"]
    # 12:15:03+02:00 is 10:15:03Z: a tie with t1, kept in file order.
    assert history.timestamp.tolist() == [
        epoch("2018-08-08 10:15:03"),
        epoch("2018-08-08 10:15:03"),
        epoch("2018-08-09 00:00:00") + 0.25,
    ]
    assert history.currency.tolist() == ["EUR", "", "USD"]
    assert history.amount.tolist() == [12.5, 99.99, 1000.0]
    assert history.fraud is not None and history.fraud.tolist() == [0, 1, 0]


def test_own_format_without_label_column_has_no_fraud(tmp_path: Path) -> None:
    text = (
        "transaction_id,timestamp,customer_id,terminal_id,amount\nt1,2018-08-08T10:15:03Z,c,m,1\n"
    )
    history = load_transactions(write_text(tmp_path / "unlabeled.csv", text))
    assert history.fraud is None
    assert history.currency.tolist() == [""]


def test_naive_timestamps_in_own_format_are_utc(tmp_path: Path) -> None:
    text = "transaction_id,timestamp,customer_id,terminal_id,amount\nt1,2018-08-08T10:15:03,c,m,1\n"
    history = load_transactions(write_text(tmp_path / "naive.csv", text))
    assert history.timestamp.tolist() == [epoch("2018-08-08 10:15:03")]


@pytest.mark.parametrize("name", ["round.csv", "round.csv.gz"])
def test_write_transactions_round_trips(tmp_path: Path, name: str) -> None:
    original = load_transactions(write_text(tmp_path / "in.csv", OWN_ROWS))
    write_transactions(tmp_path / name, original)
    again = load_transactions(tmp_path / name)
    for column in ("transaction_id", "customer_id", "terminal_id", "currency", "fraud"):
        assert getattr(again, column).tolist() == getattr(original, column).tolist()
    np.testing.assert_allclose(again.timestamp, original.timestamp, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(again.amount, original.amount)
    header = (gzip.open if name.endswith(".gz") else open)(tmp_path / name, "rt").readline()
    assert (
        header.strip() == "transaction_id,timestamp,customer_id,terminal_id,amount,currency,fraud"
    )


def test_write_transactions_whole_seconds_and_no_labels(tmp_path: Path) -> None:
    history = TransactionHistory(
        transaction_id=np.array(["a", "b"], dtype=object),
        timestamp=np.array([epoch("2018-08-08 10:15:03"), epoch("2018-08-08 10:15:04")]),
        customer_id=np.array(["c", "c"], dtype=object),
        terminal_id=np.array(["m", "n"], dtype=object),
        amount=np.array([1.0, 2.5]),
        currency=np.array(["", "EUR"], dtype=object),
        fraud=None,
    )
    write_transactions(tmp_path / "out.csv", history)
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "transaction_id,timestamp,customer_id,terminal_id,amount,currency"
    assert lines[1] == "a,2018-08-08T10:15:03Z,c,m,1.0,"
    assert load_transactions(tmp_path / "out.csv").fraud is None


def test_between_is_inclusive_on_utc_dates(tmp_path: Path) -> None:
    history = load_transactions(write_text(tmp_path / "h.csv", HANDBOOK_ROWS))
    day1, day2 = dt.date(2018, 4, 1), dt.date(2018, 4, 2)
    assert history.between(day1, day1).tolist() == [True, True, True, False]
    assert history.between(day2, day2).tolist() == [False, False, False, True]
    assert history.between(day1, day2).all()
    assert history.between(None, None).all()
    assert not history.between(dt.date(2018, 4, 3), None).any()
    assert history.take(history.between(day2, None)).transaction_id.tolist() == ["3"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b,c\n1,2,3\n", ["lacks transaction_id, timestamp", "TX_DATETIME", "Accepted formats"]),
        ("", ["is empty", "Accepted format"]),
        (
            "transaction_id,timestamp,customer_id,terminal_id,amount\n",
            ["has a header but no transactions"],
        ),
        (
            "transaction_id,timestamp,customer_id,terminal_id,amount\nt,2018-01-01T00:00:00Z,c,m,x\n",
            ["data row 1", "amount='x'", "not a number"],
        ),
        (
            "transaction_id,timestamp,customer_id,terminal_id,amount\nt,yesterday,c,m,1\n",
            ["data row 1", "'yesterday'", "RFC 3339"],
        ),
        (
            "transaction_id,timestamp,customer_id,terminal_id,amount,fraud\n"
            "t,2018-01-01T00:00:00Z,c,m,1,0\nu,2018-01-01T00:00:00Z,c,m,1,maybe\n",
            ["data row 2", "fraud='maybe'", "0/1"],
        ),
        (
            "transaction_id,timestamp,customer_id,terminal_id,amount\nt,2018-01-01T00:00:00Z,c\n",
            ["line 2", "fewer fields"],
        ),
        (
            "transaction_id,timestamp,customer_id,terminal_id,amount\nt,2018-01-01T00:00:00Z,c,m,nan\n",
            ["non-finite amount"],
        ),
    ],
)
def test_bad_transaction_files_say_what_is_wrong(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = write_text(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError) as raised:
        load_transactions(path)
    message = str(raised.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_transactions(tmp_path / "nowhere.csv")
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(gzip.compress(HANDBOOK_ROWS.encode())[:40])
    with pytest.raises(ValueError, match="could not be read"):
        load_transactions(corrupt)


# --------------------------------------------------------------------------- market

BARS = """\
date,open,high,low,close,volume,adjclose
2020-01-03,10,12,9,11,1000,11
2020-01-02,9,11,8,10,900,10
2020-01-06,11,13,10,12,0,12
"""
VIX_BARS = """\
date,open,high,low,close,volume
2020-01-02,15,16,14,15.5,0
2020-01-03,16,17,15,16.5,0
"""


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_market_loads_sorted_at_us_close_with_vix_carried_forward(
    tmp_path: Path, suffix: str
) -> None:
    bars = write_text(tmp_path / f"SPX.csv{suffix}", BARS)
    vix = write_text(tmp_path / f"VIX.csv{suffix}", VIX_BARS)
    history = load_market(bars, vix)

    assert history.instrument == "SPX"
    days = [dt.date(2020, 1, 2), dt.date(2020, 1, 3), dt.date(2020, 1, 6)]
    assert history.timestamp.tolist() == [market_timestamp(day) for day in days]
    assert market_timestamp(days[0]) == epoch("2020-01-02 21:00:00")
    assert history.close.tolist() == [10.0, 11.0, 12.0]
    assert history.open.tolist() == [9.0, 10.0, 11.0]
    assert history.high.tolist() == [11.0, 12.0, 13.0]
    assert history.low.tolist() == [8.0, 9.0, 10.0]
    assert history.volume.tolist() == [900.0, 1000.0, 0.0]
    assert history.vix is not None
    assert history.vix.tolist() == [15.5, 16.5, 16.5]  # 01-06 missing: the last known value
    assert history.between(days[1], days[2]).tolist() == [False, True, True]


def test_market_without_vix_and_instrument_naming(tmp_path: Path) -> None:
    bars = write_text(tmp_path / "GSPC.csv", BARS)
    assert load_market(bars).vix is None
    assert load_market(bars, instrument="SP500").instrument == "SP500"
    named = write_text(
        tmp_path / "whatever.csv",
        "instrument,date,open,high,low,close,volume\nACME,2020-01-02,1,1,1,1,1\n",
    )
    assert load_market(named).instrument == "ACME"


def test_vix_before_its_first_date_is_nan(tmp_path: Path) -> None:
    bars = write_text(tmp_path / "SPX.csv", BARS)
    late_vix = write_text(
        tmp_path / "VIX.csv", "date,open,high,low,close,volume\n2020-01-03,1,1,1,20,0\n"
    )
    vix = load_market(bars, late_vix).vix
    assert vix is not None
    assert np.isnan(vix[0]) and vix[1:].tolist() == [20.0, 20.0]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_market_round_trips(tmp_path: Path, suffix: str) -> None:
    original = load_market(
        write_text(tmp_path / "SPX.csv", BARS), write_text(tmp_path / "VIX.csv", VIX_BARS)
    )
    write_market(tmp_path / f"out{suffix}", original, tmp_path / f"outvix{suffix}")
    again = load_market(tmp_path / f"out{suffix}", tmp_path / f"outvix{suffix}")
    assert again.instrument == "SPX"
    for column in ("timestamp", "open", "high", "low", "close", "volume", "vix"):
        np.testing.assert_array_equal(getattr(again, column), getattr(original, column))
    with pytest.raises(ValueError, match="pass vix_path"):
        write_market(tmp_path / "novix.csv", original)


def test_real_market_files_align(market_csvs: tuple[Path, Path]) -> None:
    sp500, vix = market_csvs
    history = load_market(sp500, vix)
    assert isinstance(history, MarketHistory)
    assert history.instrument == "GSPC"
    assert len(history) == 5029
    assert history.vix is not None and np.isfinite(history.vix).all()
    assert np.all(np.diff(history.timestamp) > 0)
    assert history.timestamp[0] == market_timestamp(dt.date(2005, 4, 12))
    assert history.vix[0] == pytest.approx(11.3, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("date,open,high,low,close\n2020-01-02,1,1,1,1\n", ["lacks the columns volume"]),
        ("date,open,high,low,close,volume\n2020-13-45,1,1,1,1,1\n", ["data row 1", "YYYY-MM-DD"]),
        ("date,open,high,low,close,volume\n2020-01-02,1,1,1,null,1\n", ["close='null'"]),
        (
            "date,open,high,low,close,volume\n2020-01-02,1,1,1,1,1\n2020-01-02,1,1,1,1,1\n",
            ["more than one bar for 2020-01-02"],
        ),
        (
            "instrument,date,open,high,low,close,volume\nA,2020-01-02,1,1,1,1,1\n"
            "B,2020-01-03,1,1,1,1,1\n",
            ["several instruments"],
        ),
        ("date,open,high,low,close,volume\n", ["has a header but no bars"]),
    ],
)
def test_bad_market_files_say_what_is_wrong(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write_text(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError) as raised:
        load_market(path)
    assert str(path) in str(raised.value)
    for fragment in expected:
        assert fragment in str(raised.value)
