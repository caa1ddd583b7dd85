"""Labeled history on disk: transactions and daily market bars, loaded into column arrays.

Training, evaluation, replay and simulation all read and write history through this module, so
one parser decides what a timestamp, an amount or a label means. The format of a file is detected
from its header and gzip from its magic bytes (not the file name), so a renamed file still loads.
numpy and the csv module only: the worker image has no pandas.

Transaction formats (detected from the header, extra columns ignored):
  - ours: ``transaction_id,timestamp,customer_id,terminal_id,amount[,currency][,fraud]``,
    timestamps RFC 3339 (a timestamp without a zone is read as UTC);
  - the Fraud Detection Handbook's: ``TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,
    TX_AMOUNT[,TX_FRAUD]``, ``TX_DATETIME`` as ``YYYY-MM-DD HH:MM:SS`` read as UTC.

Market bars: ``date,open,high,low,close,volume`` (optional ``instrument``, extra columns ignored);
each bar's event timestamp is its date at 21:00:00Z (the US close), here and in the stream. The
optional VIX file has the same shape; its ``close`` becomes the ``vix`` indicator, aligned by date
and carried forward over days the VIX file lacks (never backwards: no look-ahead).
"""

from __future__ import annotations

import csv
import datetime as dt
import gc
import gzip
import io
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TextIO

import numpy as np

__all__ = [
    "MARKET_CLOSE_SECONDS",
    "MarketHistory",
    "TransactionHistory",
    "format_timestamps",
    "load_market",
    "load_transactions",
    "market_timestamp",
    "write_market",
    "write_transactions",
]

SECONDS_PER_DAY = 86_400
MARKET_CLOSE_SECONDS = 21 * 3600  # a daily bar's event time: its date at 21:00:00Z

OWN_REQUIRED = ("transaction_id", "timestamp", "customer_id", "terminal_id", "amount")
OWN_HEADER = (*OWN_REQUIRED, "currency", "fraud")
HANDBOOK_REQUIRED = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT")
HANDBOOK_LABEL = "TX_FRAUD"
MARKET_REQUIRED = ("date", "open", "high", "low", "close", "volume")
ACCEPTED_TRANSACTION_FORMATS = (
    f"our own ({','.join(OWN_HEADER)}; currency and fraud optional) or the Fraud Detection "
    f"Handbook's ({', '.join((*HANDBOOK_REQUIRED, HANDBOOK_LABEL))}; TX_FRAUD optional), "
    "plain or gzipped CSV"
)
ACCEPTED_MARKET_FORMAT = (
    f"a daily OHLCV CSV with columns {','.join(MARKET_REQUIRED)} "
    "(optional instrument, extra columns ignored), plain or gzipped"
)


@dataclass(frozen=True)
class TransactionHistory:
    """Card transactions sorted by (timestamp, original row order), one array per column."""

    transaction_id: np.ndarray  # object (str)
    timestamp: np.ndarray  # float64 epoch seconds, UTC
    customer_id: np.ndarray  # object (str)
    terminal_id: np.ndarray  # object (str)
    amount: np.ndarray  # float64
    currency: np.ndarray  # object (str, "" when unknown)
    fraud: np.ndarray | None  # int8 0/1; None when the file has no label column

    def __len__(self) -> int:
        return len(self.timestamp)

    def between(self, start: dt.date | None, end: dt.date | None) -> np.ndarray:
        """Rows whose UTC date lies in [start, end], both inclusive; None leaves a side open."""
        return _date_mask(self.timestamp, start, end)

    def take(self, index: np.ndarray) -> TransactionHistory:
        """The rows selected by a boolean mask or an index array, as a new history."""
        return TransactionHistory(
            transaction_id=self.transaction_id[index],
            timestamp=self.timestamp[index],
            customer_id=self.customer_id[index],
            terminal_id=self.terminal_id[index],
            amount=self.amount[index],
            currency=self.currency[index],
            fraud=None if self.fraud is None else self.fraud[index],
        )


@dataclass(frozen=True)
class MarketHistory:
    """Daily bars of one instrument sorted by date; timestamps are each date at 21:00:00Z."""

    instrument: str
    timestamp: np.ndarray  # float64 epoch seconds
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    vix: np.ndarray | None  # VIX close aligned by date; None without a VIX file

    def __len__(self) -> int:
        return len(self.timestamp)

    def between(self, start: dt.date | None, end: dt.date | None) -> np.ndarray:
        """Bars whose date lies in [start, end], both inclusive; None leaves a side open."""
        return _date_mask(self.timestamp, start, end)


def market_timestamp(day: dt.date) -> float:
    """The event timestamp of a daily bar: its date at 21:00:00Z."""
    return float(_epoch_day(day) * SECONDS_PER_DAY + MARKET_CLOSE_SECONDS)


# --------------------------------------------------------------------------- transactions


def load_transactions(path: str | Path) -> TransactionHistory:
    """Read a transaction history in our format or the handbook's, plain or gzipped."""
    path = Path(path)
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = _read_header(reader, path, ACCEPTED_TRANSACTION_FORMATS)
        names = _transaction_columns(header, path)
        indices = [header.index(name) if name else -1 for name in names]
        columns = _read_columns(reader, indices, path)
    ids, stamps, customers, terminals, amounts, currencies, labels = columns
    if not ids:
        raise ValueError(f"{path} has a header but no transactions.")
    assert stamps is not None and customers is not None and terminals is not None
    assert amounts is not None
    timestamp = _parse_timestamps(stamps, path)
    amount = _parse_floats(amounts, path, str(names[4]))
    fraud = None if labels is None else _parse_labels(labels, path, str(names[6]))
    order = np.argsort(timestamp, kind="stable")
    return TransactionHistory(
        transaction_id=np.array(ids, dtype=object)[order],
        timestamp=timestamp[order],
        customer_id=np.array(customers, dtype=object)[order],
        terminal_id=np.array(terminals, dtype=object)[order],
        amount=amount[order],
        currency=np.array(currencies or [""] * len(ids), dtype=object)[order],
        fraud=None if fraud is None else fraud[order],
    )


def write_transactions(path: str | Path, history: TransactionHistory) -> None:
    """Write a history in our own format (gzipped when the name ends in .gz).

    The ``fraud`` column is written only when the history has labels, so a label-free history
    loads back with ``fraud=None``.
    """
    path = Path(path)
    header = OWN_HEADER if history.fraud is not None else OWN_HEADER[:-1]
    stamps = format_timestamps(history.timestamp)
    columns: list[Sequence[str]] = [
        history.transaction_id.tolist(),
        stamps,
        history.customer_id.tolist(),
        history.terminal_id.tolist(),
        [repr(float(value)) for value in history.amount.tolist()],
        ["" if value is None else str(value) for value in history.currency.tolist()],
    ]
    if history.fraud is not None:
        columns.append([str(int(value)) for value in history.fraud.tolist()])
    with _create_text(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(zip(*columns, strict=True))


def format_timestamps(timestamp: np.ndarray) -> list[str]:
    """RFC 3339 UTC strings; whole seconds when every timestamp is whole, else microseconds."""
    seconds = np.asarray(timestamp, dtype=np.float64)
    if np.all(seconds == np.floor(seconds)):
        moments = seconds.astype(np.int64).astype("datetime64[s]")
    else:
        moments = np.round(seconds * 1e6).astype(np.int64).astype("datetime64[us]")
    return [text + "Z" for text in np.datetime_as_string(moments).tolist()]


def _transaction_columns(header: list[str], path: Path) -> list[str | None]:
    """Column names to read, in TransactionHistory order (None: absent optional column)."""
    present = set(header)
    if all(name in present for name in OWN_REQUIRED):
        optional = [name if name in present else None for name in ("currency", "fraud")]
        return [*OWN_REQUIRED, *optional]
    if all(name in present for name in HANDBOOK_REQUIRED):
        return [*HANDBOOK_REQUIRED, None, HANDBOOK_LABEL if HANDBOOK_LABEL in present else None]
    missing_own = [name for name in OWN_REQUIRED if name not in present]
    missing_handbook = [name for name in HANDBOOK_REQUIRED if name not in present]
    raise ValueError(
        f"{path} is not a transaction history: it lacks {', '.join(missing_own)} for our "
        f"format and {', '.join(missing_handbook)} for the handbook format. Accepted formats: "
        f"{ACCEPTED_TRANSACTION_FORMATS}."
    )


def _parse_timestamps(texts: list[str], path: Path) -> np.ndarray:
    """Epoch seconds from RFC 3339 / ISO 8601 text; zone-less text is UTC.

    numpy parses the common shapes (``...Z`` and zone-less) in C, about 20x faster than Python;
    anything it does not take silently (numeric offsets, bad cells) goes through
    datetime.fromisoformat row by row, which also names the first bad row.
    """
    try:
        return _numpy_epoch_seconds(texts)
    except (ValueError, UserWarning):
        return np.array(
            [_python_epoch_seconds(text, path, row) for row, text in enumerate(texts)],
            dtype=np.float64,
        )


def _numpy_epoch_seconds(texts: list[str]) -> np.ndarray:
    cells = np.array(texts, dtype=str)
    if texts[0].endswith(("Z", "z")):
        cells = np.strings.rstrip(cells, "Zz")
    with warnings.catch_warnings():
        # numpy warns, then converts, on numeric offsets: a deprecated path we do not rely on.
        warnings.simplefilter("error", UserWarning)
        moments = cells.astype("datetime64[us]")
    if np.isnat(moments).any():
        raise ValueError("empty or NaT timestamp")
    return moments.astype(np.int64) / 1e6


def _python_epoch_seconds(text: str, path: Path, row: int) -> float:
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{path}: data row {row + 1} has an invalid timestamp {text!r}; expected RFC 3339 "
            "such as 2018-08-08T10:15:03Z."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _parse_floats(texts: list[str], path: Path, column: str) -> np.ndarray:
    try:
        values = np.fromiter(map(float, texts), dtype=np.float64, count=len(texts))
    except ValueError:
        row = next(i for i, text in enumerate(texts) if not _is_float(text))
        raise ValueError(
            f"{path}: data row {row + 1} has {column}={texts[row]!r}, which is not a number."
        ) from None
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"{path}: data row {row + 1} has a non-finite {column}={texts[row]!r}.")
    return values


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_LABEL_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


def _parse_labels(texts: list[str], path: Path, column: str) -> np.ndarray:
    """0/1 labels; the common all-"0"/"1" column is converted in bulk from its bytes."""
    if set(texts) <= {"0", "1"}:
        return np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint8).astype(np.int8) - 48
    try:
        return np.fromiter(
            (_LABEL_VALUES[text.strip().lower()] for text in texts), dtype=np.int8, count=len(texts)
        )
    except KeyError:
        row = next(i for i, text in enumerate(texts) if text.strip().lower() not in _LABEL_VALUES)
        raise ValueError(
            f"{path}: data row {row + 1} has {column}={texts[row]!r}; labels must be 0/1 "
            "(or true/false)."
        ) from None


# --------------------------------------------------------------------------- market


def load_market(
    path: str | Path, vix_path: str | Path | None = None, instrument: str | None = None
) -> MarketHistory:
    """Read daily bars (and optionally the VIX) into a MarketHistory sorted by date.

    The instrument name is, in order: the argument, the file's ``instrument`` column, the file
    name without extensions (``GSPC.csv.gz`` -> ``GSPC``).
    """
    path = Path(path)
    days, bars, distinct = _read_bars(path, with_instrument=True)
    if len(distinct) > 1 and instrument is None:
        raise ValueError(
            f"{path} holds several instruments ({', '.join(distinct[:5])}); give one file per "
            "instrument."
        )
    name = instrument or (distinct[0] if distinct else _stem(path))
    vix = None
    if vix_path is not None:
        vix_days, vix_bars, _ = _read_bars(Path(vix_path), with_instrument=False)
        vix = _align_forward(days, vix_days, vix_bars[3])
    return MarketHistory(
        instrument=name,
        timestamp=days.astype(np.float64) * SECONDS_PER_DAY + MARKET_CLOSE_SECONDS,
        open=bars[0],
        high=bars[1],
        low=bars[2],
        close=bars[3],
        volume=bars[4],
        vix=vix,
    )


def write_market(
    path: str | Path, history: MarketHistory, vix_path: str | Path | None = None
) -> None:
    """Write bars as ``date,instrument,open,high,low,close,volume`` (gzipped for .gz names).

    The VIX, when the history has it, goes to ``vix_path`` as a bar file whose OHLC are all the
    VIX close (volume 0); days without a VIX value are left out. Refusing to drop it silently:
    a history with a VIX needs a ``vix_path``.
    """
    if history.vix is not None and vix_path is None:
        raise ValueError(
            "this market history has VIX values: pass vix_path so they are written too."
        )
    dates = _format_dates(history.timestamp)
    columns = [history.open, history.high, history.low, history.close, history.volume]
    with _create_text(Path(path)) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("date", "instrument", *MARKET_REQUIRED[1:]))
        for row, day in enumerate(dates):
            writer.writerow((day, history.instrument, *(repr(float(c[row])) for c in columns)))
    if vix_path is None or history.vix is None:
        return
    with _create_text(Path(vix_path)) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MARKET_REQUIRED)
        for day, value in zip(dates, history.vix.tolist(), strict=True):
            if math.isfinite(value):
                writer.writerow((day, *([repr(float(value))] * 4), "0"))


def _read_bars(
    path: Path, *, with_instrument: bool
) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Epoch days (sorted), the five OHLCV columns and the distinct instrument names."""
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = [name.lower() for name in _read_header(reader, path, ACCEPTED_MARKET_FORMAT)]
        missing = [name for name in MARKET_REQUIRED if name not in header]
        if missing:
            raise ValueError(
                f"{path} is not a market history: it lacks the columns {', '.join(missing)}. "
                f"Accepted format: {ACCEPTED_MARKET_FORMAT}."
            )
        wanted = [header.index(name) for name in MARKET_REQUIRED]
        wanted.append(
            header.index("instrument") if with_instrument and "instrument" in header else -1
        )
        columns = _read_columns(reader, wanted, path)
    day_texts, *value_texts, instrument_texts = columns
    if not day_texts:
        raise ValueError(f"{path} has a header but no bars.")
    days = _parse_days(day_texts, path)
    values = [
        _parse_floats(texts or [], path, name)
        for texts, name in zip(value_texts, MARKET_REQUIRED[1:], strict=True)
    ]
    order = np.argsort(days, kind="stable")
    days = days[order]
    repeated = np.flatnonzero(np.diff(days) == 0)
    if len(repeated):
        day = dt.date(1970, 1, 1) + dt.timedelta(days=int(days[repeated[0]]))
        raise ValueError(f"{path} has more than one bar for {day.isoformat()}; keep one per date.")
    instruments = sorted({text.strip() for text in instrument_texts or []} - {""})
    return days, [column[order] for column in values], instruments


def _parse_days(texts: list[str], path: Path) -> np.ndarray:
    """Epoch day numbers from ``YYYY-MM-DD`` (a longer ISO timestamp keeps its date part)."""
    try:
        days = np.array([text.strip()[:10] for text in texts], dtype="datetime64[D]")
    except ValueError:
        row = next(i for i, text in enumerate(texts) if not _is_date(text.strip()[:10]))
        raise ValueError(
            f"{path}: data row {row + 1} has date={texts[row]!r}; expected YYYY-MM-DD."
        ) from None
    if np.isnat(days).any():
        row = int(np.flatnonzero(np.isnat(days))[0])
        raise ValueError(f"{path}: data row {row + 1} has an empty date; expected YYYY-MM-DD.")
    return days.astype(np.int64)


def _is_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _align_forward(days: np.ndarray, source_days: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values on ``days``: the source value of the same date or the last one before; NaN before
    the first source date."""
    position = np.searchsorted(source_days, days, side="right") - 1
    aligned = np.full(len(days), np.nan)
    known = position >= 0
    aligned[known] = values[position[known]]
    return aligned


def _format_dates(timestamp: np.ndarray) -> list[str]:
    days = np.floor(np.asarray(timestamp) / SECONDS_PER_DAY).astype(np.int64)
    return np.datetime_as_string(days.astype("datetime64[D]")).tolist()


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv"):
        name = name.removesuffix(suffix)
    return name or path.name


# --------------------------------------------------------------------------- shared helpers


@contextmanager
def _open_text(path: Path) -> Iterator[TextIO]:
    """Open plain or gzipped text (detected from the magic bytes), stripping a UTF-8 BOM."""
    try:
        with path.open("rb") as probe:
            magic = probe.read(2)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a CSV file.") from None
    opener: Callable[..., TextIO] = gzip.open if magic == b"\x1f\x8b" else open  # type: ignore[assignment]
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        try:
            yield handle
        except (gzip.BadGzipFile, EOFError, UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{path} could not be read as (gzipped) UTF-8 CSV: {exc}.") from None


@contextmanager
def _create_text(path: Path) -> Iterator[TextIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        # No file name and mtime 0 in the gzip header: the same history gives the same bytes.
        with (
            path.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as packed,
            io.TextIOWrapper(packed, encoding="utf-8", newline="") as handle,
        ):
            yield handle
    else:
        with path.open("w", encoding="utf-8", newline="") as handle:
            yield handle


def _read_header(reader: Iterator[list[str]], path: Path, accepted: str) -> list[str]:
    header = next(reader, None)
    if not header:
        raise ValueError(f"{path} is empty: expected a CSV header. Accepted format: {accepted}.")
    return [name.strip() for name in header]


def _read_columns(
    reader: Iterator[list[str]], indices: list[int], path: Path
) -> list[list[str] | None]:
    """The cells of the given columns (None for index -1: an absent optional column).

    Rows are picked with itemgetter and transposed in chunks, with the cyclic garbage collector
    paused: it would otherwise rescan the growing lists many times (about 1.5x slower on the
    1.3 M-row handbook file). Blank lines are skipped; a short row is an error naming its line.
    """
    present = [index for index in indices if index >= 0]
    picked: list[list[str]] = [[] for _ in present]
    # Repeating the first index keeps itemgetter returning tuples even for a single column.
    rows = map(itemgetter(*present, present[0]), filter(None, reader))
    with _collector_paused():
        try:
            while chunk := list(islice(rows, 65_536)):
                for column, cells in zip(picked, zip(*chunk, strict=True), strict=False):
                    column.extend(cells)
        except IndexError:
            line = getattr(reader, "line_num", "?")
            raise ValueError(
                f"{path}: line {line} has fewer fields than the header "
                f"(at least {max(present) + 1} needed)."
            ) from None
    filled = iter(picked)
    return [next(filled) if index >= 0 else None for index in indices]


@contextmanager
def _collector_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _date_mask(timestamp: np.ndarray, start: dt.date | None, end: dt.date | None) -> np.ndarray:
    mask = np.ones(len(timestamp), dtype=bool)
    if start is not None:
        mask &= timestamp >= _epoch_day(start) * SECONDS_PER_DAY
    if end is not None:
        mask &= timestamp < (_epoch_day(end) + 1) * SECONDS_PER_DAY
    return mask


def _epoch_day(day: dt.date) -> int:
    if isinstance(day, dt.datetime):
        day = day.date()
    return (day - dt.date(1970, 1, 1)).days
