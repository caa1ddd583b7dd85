"""Labelled tables for tabular models: read a CSV, infer its input schema, split it.

The record→row encoding is not here: it lives in ``riskstream.features.tabular`` (the module
the worker serves with), and this module only parses the file's text into the values a record
would carry (floats with NaN for missing numbers, strings or None for categories) and hands
them to it. Schema *inference* lives here because only training needs it: a column is numeric
when every non-missing value of the training rows parses as a number, categorical otherwise;
``--numeric`` / ``--categorical`` override. numpy only: ``riskstream evaluate`` imports this
without TensorFlow.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from riskstream.features.tabular import (
    CATEGORICAL,
    NUMERIC,
    ColumnSpec,
    TabularInputError,
    TabularSchema,
)
from riskstream.training.datasets import file_sha256, masked_fields

MISSING_TEXTS = frozenset({"", "NA"})
TASKS = ("binary", "poisson")
MIN_CATEGORY_ROWS = 5  # rarer categories share the unseen bucket, which then learns "other"
MAX_CATEGORIES = 1000  # beyond that a column is more likely an id than a category

Status = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


class TableError(ValueError):
    """The file or the options do not make a trainable table; the message says what to do."""


@dataclass(frozen=True)
class RawTable:
    """A CSV as text: one list of stripped strings per column, in file order."""

    path: Path
    header: tuple[str, ...]
    columns: dict[str, list[str]]
    n_rows: int
    source_sha256: str
    unnamed_first_column: bool = False  # R / pandas row names: an id, not a feature


@dataclass(frozen=True)
class TableSpec:
    """Which columns play which part; everything not named is a feature."""

    label: str
    task: str = "binary"
    id_column: str | None = None
    time_column: str | None = None
    exposure_column: str | None = None
    drop: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    max_label: float | None = None  # cap counts (freMTPL2: ClaimNb at 4)
    max_exposure: float | None = None  # cap exposure (freMTPL2: at 1 year)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "task": self.task,
            "id_column": self.id_column,
            "time_column": self.time_column,
            "exposure_column": self.exposure_column,
            "dropped_columns": list(self.drop),
            "categorical_overrides": list(self.categorical),
            "numeric_overrides": list(self.numeric),
            "max_label": self.max_label,
            "max_exposure": self.max_exposure,
        }

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> TableSpec:
        columns = card["table"]
        return cls(
            label=columns["label"],
            task=card["task"],
            id_column=columns.get("id_column"),
            time_column=columns.get("time_column"),
            exposure_column=columns.get("exposure_column"),
            drop=tuple(columns.get("dropped_columns", ())),
            categorical=tuple(columns.get("categorical_overrides", ())),
            numeric=tuple(columns.get("numeric_overrides", ())),
            max_label=columns.get("max_label"),
            max_exposure=columns.get("max_exposure"),
        )


# TabularRows' plain per-row arrays (timestamps may be None and values is a dict: cut apart).
TABULAR_ROW_ARRAYS = ("features", "labels", "exposure", "event_ids", "row_numbers")


@dataclass(frozen=True)
class TabularRows:
    """Encoded rows with their targets and identities (one per labelled file row)."""

    schema: TabularSchema
    features: np.ndarray  # float32 [n, n_columns], the model's input
    labels: np.ndarray  # float64 [n]: 0/1, or counts
    exposure: np.ndarray  # float64 [n]: exposure (1.0 when the table has none)
    event_ids: np.ndarray  # object [n]: the --id column, or the 1-based row number
    row_numbers: np.ndarray  # int64 [n]: 1-based position among the file's data rows
    timestamps: np.ndarray | None  # float64 epoch seconds, with --time
    values: dict[str, np.ndarray] = field(repr=False)  # per column: what a record would carry

    def __len__(self) -> int:
        return int(self.labels.size)

    def subset(self, mask: np.ndarray) -> TabularRows:
        return replace(
            self,
            **masked_fields(self, mask, TABULAR_ROW_ARRAYS),
            timestamps=None if self.timestamps is None else self.timestamps[mask],
            values={name: column[mask] for name, column in self.values.items()},
        )

    def record(self, i: int) -> dict[str, float | str | None]:
        """Row i as the JSON-able feature record a producer would send."""
        record: dict[str, float | str | None] = {}
        for column in self.schema.columns:
            value = self.values[column.name][i]
            if column.kind == NUMERIC:
                record[column.name] = None if math.isnan(value) else float(value)
            else:
                record[column.name] = value
        return record


def _open_text(path: Path) -> io.TextIOBase:
    with Path(path).open("rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return Path(path).open(encoding="utf-8-sig", newline="")


def read_csv(path: Path, status: Status = _quiet) -> RawTable:
    """A plain or gzipped CSV with a header row; `NA` and empty fields are missing."""
    status(f"reading {Path(path).name}")
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise TableError(f"{path} is empty: a header row and data rows are needed") from None
        unnamed_first = bool(header) and header[0] == ""
        header = [name or f"unnamed_{i + 1}" for i, name in enumerate(header)]
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise TableError(f"{path}: column names {duplicated} appear more than once")
        cells: list[list[str]] = [[] for _ in header]
        for line_number, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise TableError(
                    f"{path}, line {line_number}: {len(fields)} fields where the header has "
                    f"{len(header)}; fix the file (quoting?)"
                )
            for column, text in zip(cells, fields, strict=True):
                column.append(text.strip())
    n_rows = len(cells[0]) if cells else 0
    if n_rows == 0:
        raise TableError(f"{path} has a header but no data rows")
    return RawTable(
        path=Path(path),
        header=tuple(header),
        columns=dict(zip(header, cells, strict=True)),
        n_rows=n_rows,
        source_sha256=file_sha256(path),
        unnamed_first_column=unnamed_first,
    )


def resolve_spec(table: RawTable, spec: TableSpec) -> TableSpec:
    """Check every named column exists; an unnamed first column (R/pandas row names) becomes
    the id when no --id is given."""
    if spec.id_column is None and table.unnamed_first_column:
        spec = replace(spec, id_column=table.header[0])
    named = {
        "--label": [spec.label],
        "--id": [spec.id_column] if spec.id_column else [],
        "--time": [spec.time_column] if spec.time_column else [],
        "--exposure": [spec.exposure_column] if spec.exposure_column else [],
        "--drop": list(spec.drop),
        "--categorical": list(spec.categorical),
        "--numeric": list(spec.numeric),
    }
    for option, names in named.items():
        unknown = [name for name in names if name not in table.columns]
        if unknown:
            raise TableError(
                f"{option} {', '.join(unknown)}: no such column in {table.path.name}; its "
                f"columns are {', '.join(table.header)}"
            )
    both = set(spec.categorical) & set(spec.numeric)
    if both:
        raise TableError(f"{sorted(both)} given as both --categorical and --numeric")
    if spec.task not in TASKS:
        raise TableError(f"--task must be one of {TASKS}, got {spec.task!r}")
    if spec.exposure_column and spec.task != "poisson":
        raise TableError("--exposure is for --task poisson (claim counts per unit of exposure)")
    return spec


def feature_names(table: RawTable, spec: TableSpec) -> tuple[str, ...]:
    taken = {spec.label, spec.id_column, spec.time_column, spec.exposure_column, *spec.drop}
    names = tuple(name for name in table.header if name not in taken)
    if not names:
        raise TableError("no feature columns left after --label/--id/--time/--exposure/--drop")
    return names


def _floats(texts: Sequence[str]) -> np.ndarray:
    """Numbers with NaN for missing; raises ValueError if a value is not a number."""
    return np.asarray(["nan" if t in MISSING_TEXTS else t for t in texts], dtype=np.float64)


def _first_bad_number(texts: Sequence[str]) -> tuple[int, str]:
    for i, text in enumerate(texts):
        if text in MISSING_TEXTS:
            continue
        try:
            float(text)
        except ValueError:
            return i, text
    return -1, ""


def parse_numeric(name: str, texts: Sequence[str], row_numbers: np.ndarray) -> np.ndarray:
    try:
        return _floats(texts)
    except ValueError:
        i, text = _first_bad_number(texts)
        raise TableError(
            f"column {name!r}, row {int(row_numbers[i])}: {text!r} is not a number; drop the "
            f"column (--drop {name}) or treat it as categorical (--categorical {name})"
        ) from None


def parse_categorical(texts: Sequence[str]) -> np.ndarray:
    return np.array([None if t in MISSING_TEXTS else t for t in texts], dtype=object)


def infer_kind(name: str, texts: Sequence[str], spec: TableSpec) -> str:
    if name in spec.categorical:
        return CATEGORICAL
    if name in spec.numeric:
        return NUMERIC
    try:
        _floats(texts)
    except ValueError:
        return CATEGORICAL
    return NUMERIC


def categories_of(values: np.ndarray, min_rows: int = MIN_CATEGORY_ROWS) -> tuple[str, ...]:
    """Categories with at least `min_rows` rows (at most MAX_CATEGORIES, the most frequent),
    sorted by text so the card reads well."""
    counts = Counter(value for value in values.tolist() if value is not None)
    kept = [category for category, rows in counts.most_common() if rows >= min_rows]
    return tuple(sorted(kept[:MAX_CATEGORIES]))


def infer_schema(
    values: dict[str, np.ndarray],
    kinds: dict[str, str],
    fit_mask: np.ndarray,
    nullable_mask: np.ndarray,
    min_category_rows: int = MIN_CATEGORY_ROWS,
) -> TabularSchema:
    """Categories and ranges from the fitting rows (a category only validation rows hold would
    get an embedding nothing trained); `nullable` from the rows of `nullable_mask` (every row of
    the file: a missing value anywhere in it is a value the model must take)."""
    columns = []
    for name, column_values in values.items():
        if kinds[name] == NUMERIC:
            seen = column_values[fit_mask]
            present = seen[~np.isnan(seen)]
            columns.append(
                ColumnSpec(
                    name=name,
                    kind=NUMERIC,
                    nullable=bool(np.isnan(column_values[nullable_mask]).any()),
                    minimum=float(present.min()) if present.size else None,
                    maximum=float(present.max()) if present.size else None,
                )
            )
        else:
            missing = np.array([v is None for v in column_values[nullable_mask].tolist()])
            columns.append(
                ColumnSpec(
                    name=name,
                    kind=CATEGORICAL,
                    nullable=bool(missing.any()),
                    categories=categories_of(column_values[fit_mask], min_category_rows),
                )
            )
    return TabularSchema(tuple(columns))


def parse_values(
    table: RawTable, names: Sequence[str], kinds: dict[str, str], row_numbers: np.ndarray
) -> dict[str, np.ndarray]:
    """The file's text → record values: floats (NaN = missing) or str/None."""
    return {
        name: parse_numeric(name, table.columns[name], row_numbers)
        if kinds[name] == NUMERIC
        else parse_categorical(table.columns[name])
        for name in names
    }


def parse_labels(table: RawTable, spec: TableSpec) -> np.ndarray:
    """Labels as floats, NaN where missing; checked against the task."""
    texts = table.columns[spec.label]
    try:
        labels = _floats(texts)
    except ValueError:
        i, text = _first_bad_number(texts)
        raise TableError(
            f"label column {spec.label!r}, row {i + 1}: {text!r} is not a number; the label "
            "must be 0/1 (--task binary) or a count (--task poisson)"
        ) from None
    present = labels[~np.isnan(labels)]
    if spec.task == "binary":
        bad = np.setdiff1d(np.unique(present), (0.0, 1.0))
        if bad.size:
            raise TableError(
                f"label column {spec.label!r} holds {bad[:5].tolist()}: --task binary needs "
                "0/1 labels; for counts use --task poisson, or derive a 0/1 column"
            )
    else:
        if (present < 0).any():
            i = int(np.flatnonzero(labels < 0)[0])
            raise TableError(
                f"label column {spec.label!r}, row {i + 1}: negative count {labels[i]:g}; "
                "--task poisson needs counts >= 0"
            )
        if spec.max_label is not None:
            labels = np.minimum(labels, spec.max_label)
    return labels


def parse_exposure(table: RawTable, spec: TableSpec) -> np.ndarray:
    if spec.exposure_column is None:
        return np.ones(table.n_rows, dtype=np.float64)
    texts = table.columns[spec.exposure_column]
    try:
        exposure = _floats(texts)
    except ValueError:
        exposure = np.full(table.n_rows, np.nan)
    bad = ~(exposure > 0) | ~np.isfinite(exposure)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TableError(
            f"exposure column {spec.exposure_column!r}, row {i + 1}: {texts[i]!r}; exposure "
            "must be a positive number on every row"
        )
    if spec.max_exposure is not None:
        exposure = np.minimum(exposure, spec.max_exposure)
    return exposure


def parse_times(table: RawTable, column: str) -> np.ndarray:
    """Epoch seconds from numbers or ISO 8601 dates/date-times (UTC when no zone)."""
    texts = table.columns[column]
    if any(text in MISSING_TEXTS for text in texts):
        raise TableError(f"the --time column {column!r} has missing values; every row needs one")
    try:
        return _floats(texts)
    except ValueError:
        pass
    stamps = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise TableError(
                f"time column {column!r}, row {i + 1}: {text!r} is neither a number nor an "
                "ISO 8601 date/time"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        stamps[i] = moment.timestamp()
    return stamps


def read_row_positions(path: Path, n_rows: int) -> np.ndarray:
    """1-based row positions, one a line (`#` comments and blank lines ignored) → a mask."""
    positions = []
    for line_number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            positions.append(int(text))
        except ValueError:
            raise TableError(
                f"{path}, line {line_number}: {text!r} is not a row number (1-based positions "
                "among the data rows, one a line)"
            ) from None
    rows = np.asarray(positions, dtype=np.int64)
    if rows.size == 0:
        raise TableError(f"{path} lists no rows")
    if rows.min() < 1 or rows.max() > n_rows:
        raise TableError(
            f"{path} lists row {int(rows.max() if rows.max() > n_rows else rows.min())}, but "
            f"the data has rows 1…{n_rows}: is it the list for this file?"
        )
    if np.unique(rows).size != rows.size:
        raise TableError(f"{path} lists some rows more than once")
    mask = np.zeros(n_rows, dtype=bool)
    mask[rows - 1] = True
    return mask


def strata_of(labels: np.ndarray, task: str) -> np.ndarray:
    """Binary: the label; counts: zero or not (so both parts see the rare positives)."""
    return (labels > 0).astype(np.int8) if task == "poisson" else labels.astype(np.int8)


def stratified_mask(
    candidates: np.ndarray, strata: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """A seeded random `fraction` of the candidate rows, the same fraction of each stratum."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(candidates.size, dtype=bool)
    for stratum in np.unique(strata[candidates]):
        rows = np.flatnonzero(candidates & (strata == stratum))
        take = round(fraction * rows.size)
        chosen[rng.permutation(rows)[:take]] = True
    return chosen


def time_mask(candidates: np.ndarray, timestamps: np.ndarray, fraction: float) -> np.ndarray:
    """The latest `fraction` of the candidate rows by time (ties go together)."""
    times = timestamps[candidates]
    cut = np.quantile(times, 1.0 - fraction, method="higher")
    chosen = candidates & (timestamps >= cut)
    if chosen.sum() == candidates.sum():  # one time value: fall back to the last rows
        chosen = candidates & (timestamps > cut)
    return chosen


def held_out_mask(
    n_rows: int,
    labels: np.ndarray,
    task: str,
    test_rows: Path | None,
    test_fraction: float,
    split_seed: int,
) -> np.ndarray:
    """Held-out test rows: listed in a file, or a seeded stratified fraction (none by default)."""
    if test_rows is not None:
        return read_row_positions(test_rows, n_rows)
    if test_fraction <= 0:
        return np.zeros(n_rows, dtype=bool)
    labelled = ~np.isnan(labels)
    strata = strata_of(np.nan_to_num(labels), task)
    return stratified_mask(labelled, strata, test_fraction, split_seed)


def encode_rows(
    table: RawTable,
    spec: TableSpec,
    schema: TabularSchema,
    values: dict[str, np.ndarray],
    labels: np.ndarray,
    exposure: np.ndarray,
    timestamps: np.ndarray | None,
) -> TabularRows:
    """Every file row through the stream's encoder (a bad value names its file row)."""
    try:
        features = schema.encode_columns(values)
    except TabularInputError as exc:
        row = "" if exc.row is None else f", row {exc.row + 1}"
        raise TableError(
            f"{table.path.name}{row}: {exc.detail} [{exc.code}]; the model's input schema "
            "does not accept it"
        ) from None
    row_numbers = np.arange(1, table.n_rows + 1, dtype=np.int64)
    if spec.id_column:
        event_ids = np.array(table.columns[spec.id_column], dtype=object)
    else:
        event_ids = row_numbers.astype(str).astype(object)
    return TabularRows(
        schema=schema,
        features=features,
        labels=labels,
        exposure=exposure,
        event_ids=event_ids,
        row_numbers=row_numbers,
        timestamps=timestamps,
        values=values,
    )


@dataclass(frozen=True)
class PreparedTable:
    """A training table: every file row encoded, and which rows are for what."""

    rows: TabularRows
    spec: TableSpec
    is_test: np.ndarray
    is_validation: np.ndarray
    is_fit: np.ndarray
    source_sha256: str
    unlabelled_rows: int
    notes: tuple[str, ...] = ()  # what inference decided that the user did not say

    @property
    def labelled(self) -> np.ndarray:
        return ~np.isnan(self.rows.labels)


def prepare_training_table(
    path: Path,
    spec: TableSpec,
    *,
    test_rows: Path | None = None,
    test_fraction: float = 0.0,
    split_seed: int = 0,
    validation_fraction: float = 0.2,
    seed: int = 0,
    min_category_rows: int = MIN_CATEGORY_ROWS,
    status: Status = _quiet,
) -> PreparedTable:
    """Read, split (test, then validation from the rest), infer the schema on the training
    rows and encode every row with it."""
    table = read_csv(path, status)
    spec = resolve_spec(table, spec)
    names = feature_names(table, spec)
    labels = parse_labels(table, spec)
    exposure = parse_exposure(table, spec)
    timestamps = parse_times(table, spec.time_column) if spec.time_column else None
    labelled = ~np.isnan(labels)
    is_test = held_out_mask(table.n_rows, labels, spec.task, test_rows, test_fraction, split_seed)
    training = labelled & ~is_test
    if timestamps is not None:
        is_validation = time_mask(training, timestamps, validation_fraction)
    else:
        strata = strata_of(np.nan_to_num(labels), spec.task)
        is_validation = stratified_mask(training, strata, validation_fraction, seed)
    is_fit = training & ~is_validation
    _check_parts(labels, spec, is_fit, is_validation)
    status("inferring the input schema")
    row_numbers = np.arange(1, table.n_rows + 1)
    kinds = {
        name: infer_kind(name, [table.columns[name][i] for i in np.flatnonzero(training)], spec)
        for name in names
    }
    spec, notes = set_aside_identifiers(table, spec, kinds)
    names = feature_names(table, spec)
    values = parse_values(table, names, kinds, row_numbers)
    every_row = np.ones(table.n_rows, dtype=bool)
    schema = infer_schema(values, kinds, is_fit, every_row, min_category_rows)
    status("encoding rows")
    rows = encode_rows(table, spec, schema, values, labels, exposure, timestamps)
    return PreparedTable(
        rows=rows,
        spec=spec,
        is_test=is_test,
        is_validation=is_validation,
        is_fit=is_fit,
        source_sha256=table.source_sha256,
        unlabelled_rows=int((~labelled).sum()),
        notes=notes,
    )


def set_aside_identifiers(
    table: RawTable, spec: TableSpec, kinds: dict[str, str]
) -> tuple[TableSpec, tuple[str, ...]]:
    """A text column with a distinct value on every row is an identifier, not a feature (as a
    category every value would be unseen, and producers would have to send it): the first
    becomes the id when none was given, others are dropped. Named with --categorical, a column
    stays a feature."""
    notes = []
    for name, kind in kinds.items():
        texts = table.columns[name]
        if kind != CATEGORICAL or name in spec.categorical or len(set(texts)) != len(texts):
            continue
        if spec.id_column is None:
            spec = replace(spec, id_column=name)
            notes.append(f"{name!r} has a distinct text on every row: used as the row id")
        else:
            spec = replace(spec, drop=(*spec.drop, name))
            notes.append(f"{name!r} has a distinct text on every row: dropped (an identifier)")
    return spec, tuple(notes)


def _check_parts(
    labels: np.ndarray, spec: TableSpec, is_fit: np.ndarray, is_validation: np.ndarray
) -> None:
    for part, mask in (("fitting", is_fit), ("validation", is_validation)):
        part_labels = labels[mask]
        positives = int((part_labels > 0).sum())
        if part_labels.size == 0 or positives == 0 or positives == part_labels.size:
            what = "positive and zero counts" if spec.task == "poisson" else "both classes"
            raise TableError(
                f"the {part} rows are {part_labels.size:,} with {positives:,} positive: "
                f"{what} are needed in each part; use a larger table or another split"
            )


def load_scoring_rows(
    path: Path, spec: TableSpec, schema: TabularSchema, status: Status = _quiet
) -> tuple[TabularRows, str]:
    """Every row of a file encoded with a trained model's schema (for `evaluate`); labels may
    be missing (NaN) on some rows. Returns the rows and the file's sha256."""
    table = read_csv(path, status)
    missing = [name for name in (*schema.names, spec.label) if name not in table.columns]
    if missing:
        raise TableError(
            f"{path} lacks the columns {missing} the model was trained with "
            f"(it has {', '.join(table.header)})"
        )
    if spec.exposure_column and spec.exposure_column not in table.columns:
        raise TableError(f"{path} lacks the exposure column {spec.exposure_column!r}")
    kinds = {column.name: column.kind for column in schema.columns}
    row_numbers = np.arange(1, table.n_rows + 1)
    values = parse_values(table, schema.names, kinds, row_numbers)
    labels = parse_labels(table, spec)
    exposure = parse_exposure(table, spec)
    if spec.id_column and spec.id_column not in table.columns:
        spec = replace(spec, id_column=None)
    status("encoding rows")
    return encode_rows(table, spec, schema, values, labels, exposure, None), table.source_sha256
