"""Tabular records → the float32 rows a tabular model takes: one definition for training and
serving.

A tabular model (credit default, claim frequency, any labelled table) takes one record of
indicators, ``{name: number | string | None}``, not windowed history. Its card holds an *input
schema*: per column its name, its type (numeric or categorical), the categories seen in
training, the range seen and whether it was ever missing. This module turns records into the
model's input matrix according to that schema. Training builds its matrix with the same
functions (``encode_columns`` over the file's parsed columns, ``encode_record`` per record:
both go through the same per-column rules), so a record served online becomes exactly the row
the model was trained and evaluated on. numpy only: the worker imports it, never TensorFlow.

Encoding, column by column, in schema order:

- numeric: the number as float32; missing (``None``, or NaN) becomes NaN. The model itself fills
  NaN (training median) and sees a missing indicator, clips to the training range and
  normalises, so the row carries raw values.
- categorical: the category's index, 1…K in the schema's order; 0 is the *unseen* bucket: a
  category not in the schema (new at serving time, or too rare in training to keep) and a
  missing value both map to 0 — the documented fallback, not an error. The model trained
  bucket 0 on the rare categories, so it is a learned "other" rather than noise. A number sent
  for a categorical column is matched by its shortest text (``5``, ``5.5``; ``5.0`` is
  ``5``); send strings to match the training file's text exactly.

Errors a serving-time record can cause raise ``TabularInputError`` with a stable ``code`` (the
worker dead-letters with it; the codes follow ``riskstream.contracts``' vocabulary):

- ``not_object``          the record is not a mapping of feature names to values
- ``missing_feature``     a schema column is absent from the record (extra keys are ignored)
- ``null_feature``        a value is null/NaN in a column never missing in the training file
                          (the model has no learned meaning for it; the card says which columns
                          are ``nullable``)
- ``wrong_type``          a numeric column got a string, a bool or anything but a number; a
                          categorical column got a bool, a list, an object
- ``non_finite_number``   ±Infinity in a numeric column
- ``unknown_column_type`` the schema names a column type this version cannot encode (a card
                          from a newer riskstream): the model cannot be served
- ``bad_schema``          the schema itself is malformed (missing keys, duplicate names)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

SCHEMA_VERSION: Final = 1
NUMERIC: Final = "numeric"
CATEGORICAL: Final = "categorical"
COLUMN_TYPES: Final = (NUMERIC, CATEGORICAL)
UNSEEN_INDEX: Final = 0

ERROR_CODES: Final = (
    "not_object",
    "missing_feature",
    "null_feature",
    "wrong_type",
    "non_finite_number",
    "unknown_column_type",
    "bad_schema",
)


class TabularInputError(ValueError):
    """A record (or a schema) that cannot be encoded: ``code`` is one of ERROR_CODES,
    ``column`` the offending column (None for the record as a whole), ``detail`` one sentence.
    ``row`` is set by the batch functions: the 0-based position of the record in the batch."""

    def __init__(
        self, code: str, detail: str, column: str | None = None, row: int | None = None
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown tabular error code {code!r}; use one of ERROR_CODES")
        super().__init__(code, detail)
        self.code = code
        self.detail = detail
        self.column = column
        self.row = row

    def at_row(self, row: int) -> TabularInputError:
        return TabularInputError(self.code, self.detail, self.column, row)

    def __str__(self) -> str:
        where = "" if self.row is None else f" (row {self.row})"
        return f"{self.code}{where}: {self.detail}"


def canonical_category(value: Any) -> str:
    """The text a categorical value is matched by: strings as given (stripped), integers and
    integral floats as integers, other floats by their shortest repr."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class ColumnSpec:
    """One input column of a tabular model, as the card records it."""

    name: str
    kind: str  # NUMERIC or CATEGORICAL
    nullable: bool  # the training file had missing values here (null is then a valid input)
    categories: tuple[str, ...] = ()  # categorical: index i + 1 is categories[i]
    minimum: float | None = None  # numeric: range seen in training (non-missing values)
    maximum: float | None = None
    # category -> index, built once: encoding runs per event on the hot path.
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {category: i + 1 for i, category in enumerate(self.categories)}
        object.__setattr__(self, "_index", index)

    def encode(self, value: Any) -> float:
        """The float this column's value becomes in the model's input row."""
        if _is_missing(value):
            if not self.nullable:
                raise TabularInputError(
                    "null_feature",
                    f"feature {self.name!r} is null, but it was never missing in the training file",
                    self.name,
                )
            return math.nan if self.kind == NUMERIC else float(UNSEEN_INDEX)
        if self.kind == NUMERIC:
            return self._number(value)
        return float(self._category_index(value))

    def encode_many(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """`encode` over a whole column (training, evaluation): the same rules, vectorised for
        float arrays, per value otherwise."""
        if self.kind == NUMERIC and isinstance(values, np.ndarray) and values.dtype.kind == "f":
            return self._numbers(values)
        out = np.empty(len(values), dtype=np.float32)
        for i, value in enumerate(values):
            try:
                out[i] = self.encode(value)
            except TabularInputError as exc:
                raise exc.at_row(i) from None
        return out

    def is_unseen(self, value: Any) -> bool:
        """A present categorical value outside the schema's categories (served as bucket 0)."""
        if self.kind != CATEGORICAL or _is_missing(value):
            return False
        return self._category_index(value) == UNSEEN_INDEX

    def _number(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TabularInputError(
                "wrong_type",
                f"feature {self.name!r} is numeric; got {type(value).__name__} {value!r:.40}",
                self.name,
            )
        number = float(value)
        if math.isinf(number):
            raise TabularInputError(
                "non_finite_number", f"feature {self.name!r} is {number}", self.name
            )
        return number

    def _numbers(self, values: np.ndarray) -> np.ndarray:
        if np.isinf(values).any():
            row = int(np.flatnonzero(np.isinf(values))[0])
            raise TabularInputError(
                "non_finite_number", f"feature {self.name!r} is infinite", self.name, row
            )
        missing = np.isnan(values)
        if not self.nullable and missing.any():
            raise TabularInputError(
                "null_feature",
                f"feature {self.name!r} is null, but it was never missing in the training file",
                self.name,
                int(np.flatnonzero(missing)[0]),
            )
        return values.astype(np.float32)

    def _category_index(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TabularInputError(
                "wrong_type",
                f"feature {self.name!r} is categorical (a string); got {type(value).__name__}",
                self.name,
            )
        if isinstance(value, float) and math.isinf(value):
            raise TabularInputError(
                "non_finite_number", f"feature {self.name!r} is {value}", self.name
            )
        return self._index.get(canonical_category(value), UNSEEN_INDEX)

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "type": self.kind, "nullable": self.nullable}
        if self.kind == CATEGORICAL:
            entry["categories"] = list(self.categories)
        else:
            entry["min"], entry["max"] = self.minimum, self.maximum
        return entry

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> ColumnSpec:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise TabularInputError("bad_schema", f"a schema column needs a name: {entry!r:.80}")
        name = entry["name"]
        kind = entry.get("type")
        if kind not in COLUMN_TYPES:
            raise TabularInputError(
                "unknown_column_type",
                f"column {name!r} has type {kind!r}; this riskstream encodes {COLUMN_TYPES}",
                name,
            )
        categories = entry.get("categories", [])
        if kind == CATEGORICAL and not (
            isinstance(categories, list) and all(isinstance(c, str) for c in categories)
        ):
            raise TabularInputError(
                "bad_schema", f"column {name!r}: categories must be a list of strings", name
            )
        return cls(
            name=name,
            kind=kind,
            nullable=bool(entry.get("nullable", False)),
            categories=tuple(categories) if kind == CATEGORICAL else (),
            minimum=_optional_float(entry.get("min")),
            maximum=_optional_float(entry.get("max")),
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class TabularSchema:
    """The ordered input columns of a tabular model: column j of the model's input is
    ``columns[j]``."""

    columns: tuple[ColumnSpec, ...]

    def __post_init__(self) -> None:
        names = [column.name for column in self.columns]
        if not names or len(set(names)) != len(names):
            raise TabularInputError(
                "bad_schema", f"a schema needs one or more distinct column names, got {names}"
            )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def encode_record(self, record: Any) -> np.ndarray:
        """One record → one float32 row [n_columns]; raises TabularInputError."""
        if not isinstance(record, Mapping):
            raise TabularInputError(
                "not_object", f"features must be an object, got {type(record).__name__}"
            )
        row = np.empty(len(self.columns), dtype=np.float32)
        for j, column in enumerate(self.columns):
            if column.name not in record:
                raise TabularInputError(
                    "missing_feature", f"feature {column.name!r} is missing", column.name
                )
            row[j] = column.encode(record[column.name])
        return row

    def encode_records(self, records: Iterable[Any]) -> np.ndarray:
        """Records → a float32 matrix [rows, n_columns]; the first bad record raises, with its
        position in ``row``. (A worker that dead-letters record by record calls
        ``encode_record`` per record instead.)"""
        rows = []
        for i, record in enumerate(records):
            try:
                rows.append(self.encode_record(record))
            except TabularInputError as exc:
                raise exc.at_row(i) from None
        if not rows:
            return np.zeros((0, len(self.columns)), dtype=np.float32)
        return np.stack(rows)

    def encode_columns(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> np.ndarray:
        """Column-wise values (a parsed file: float arrays with NaN for numeric columns, lists
        of str/None for categorical ones) → the same matrix ``encode_records`` would give."""
        missing = [name for name in self.names if name not in columns]
        if missing:
            raise TabularInputError(
                "missing_feature", f"features {missing} are missing", missing[0]
            )
        lengths = {len(columns[name]) for name in self.names}
        if len(lengths) != 1:
            raise TabularInputError("bad_schema", f"columns differ in length: {sorted(lengths)}")
        matrix = np.empty((lengths.pop(), len(self.columns)), dtype=np.float32)
        for j, column in enumerate(self.columns):
            matrix[:, j] = column.encode_many(columns[column.name])
        return matrix

    def unseen_columns(self, record: Mapping[str, Any]) -> tuple[str, ...]:
        """Categorical columns of a (valid) record whose value fell into the unseen bucket,
        for a worker that counts the fallback."""
        return tuple(
            column.name
            for column in self.columns
            if column.name in record and column.is_unseen(record[column.name])
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "unseen_index": UNSEEN_INDEX,
            "columns": [column.to_dict() for column in self.columns],
        }

    @classmethod
    def from_dict(cls, data: Any) -> TabularSchema:
        if not isinstance(data, Mapping) or not isinstance(data.get("columns"), list):
            raise TabularInputError("bad_schema", "an input schema is an object with 'columns'")
        if data.get("version") != SCHEMA_VERSION:
            raise TabularInputError(
                "bad_schema",
                f"input schema version {data.get('version')!r}; this riskstream reads "
                f"version {SCHEMA_VERSION}",
            )
        return cls(tuple(ColumnSpec.from_dict(entry) for entry in data["columns"]))


def is_tabular_card(card: Mapping[str, Any]) -> bool:
    return card.get("kind") == "tabular"


def schema_from_card(card: Mapping[str, Any]) -> TabularSchema:
    """The input schema of a tabular model's card; raises TabularInputError (bad_schema,
    unknown_column_type) if it cannot be served."""
    if "input_schema" not in card:
        raise TabularInputError("bad_schema", "the card has no input_schema")
    return TabularSchema.from_dict(card["input_schema"])
