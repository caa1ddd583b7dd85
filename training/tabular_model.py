"""The Keras network for tabular models: everything between the encoded row and the score is
inside the model, so the exported ONNX takes the raw encoded values the stream produces.

Per numeric column, from the fitting rows only:
- NaN → the training median, plus a 0/1 missing indicator for the columns missing in some
  fitting rows (elsewhere an indicator would keep its random initial weight);
- clipped to the range seen in training (a serving value far outside cannot blow up);
- one standardised scalar, on a signed-log scale when the column is heavy-tailed (credit
  utilisation in the thousands, the 96/98 sentinel past-due counts), via `log_column_mask`;
- a piecewise-linear encoding (Gorishniy et al. 2022, "On embeddings for numerical features
  in tabular deep learning") over training quantile bins: bin t contributes
  clip((x − edge_t) / (edge_{t+1} − edge_t), 0, 1). It gives a small MLP step-like and
  non-monotone shapes (age, bonus-malus) and isolates sentinels that sit far past the bulk.
Per categorical column: an embedding of the encoded index (0 = unseen/missing: rare training
categories share it, so it learns "other").
Then Dense-ReLU layers with dropout and L2, and one output: a probability (sigmoid) for
`binary`, an expected frequency per unit of exposure λ(x) = exp(·) for `poisson`; the Poisson
fit uses N/exposure as target with exposure as sample weight, which is the log-exposure-offset
likelihood exactly, so the exported graph needs no exposure input. After early stopping a
Poisson network's level is corrected so its fitted claims match the observed ones
(`rebalance`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from riskstream.features.tabular import NUMERIC, TabularSchema
from riskstream.training.metrics import average_precision, log_loss, poisson_deviance, roc_auc
from riskstream.training.models import (
    BestValidation,
    EpochReport,
    FitOutcome,
    Measure,
    average_members,
    class_weights,
    effective_batch_size,
    log_column_mask,
    member_seed,
    predict,
    seed_everything,
    signed_log,
)

TABULAR_MONITORS = {
    # name: (history key, higher is better)
    "log_loss": ("val_log_loss", False),
    "roc_auc": ("val_roc_auc", True),
    "average_precision": ("val_average_precision", True),
    "poisson_deviance": ("val_poisson_deviance", False),
}


@dataclass(frozen=True)
class TabularConfig:
    task: str = "binary"
    hidden_units: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    l2: float = 1e-5
    learning_rate: float = 1e-3
    batch_size: int | None = None  # None: 512, doubled until an epoch is at most 500 steps
    max_epochs: int = 60
    patience: int = 8
    class_weight: str = "none"
    monitor: str | None = None  # None: log_loss (binary), poisson_deviance (poisson)
    # Averaging seeds' networks (bench/tabular.py --tune, one run each): 5 networks +0.001
    # validation ROC AUC over one on credit (none with dropout 0.3), 3 networks −0.03 deviance
    # on freMTPL2; kept because it also narrows the seed-to-seed spread, for 3× fitting time.
    ensemble: int = 3
    bins: int | None = None  # piecewise-linear bins per numeric column (0: none); see bins_for
    embedding_dim: int | None = None  # None: 1 + ceil(log2(categories + 1)), at most 8
    log_columns: str = "heavy-tailed"
    balance: bool = True  # poisson: rescale λ so fitted claims sum to observed (see rebalance)

    @property
    def monitor_name(self) -> str:
        if self.monitor is not None:
            return self.monitor
        return "poisson_deviance" if self.task == "poisson" else "log_loss"

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["hidden_units"] = list(self.hidden_units)
        values["monitor"] = self.monitor_name
        return values


LARGE_TABLE_ROWS = 200_000


def bins_for(config: TabularConfig, fit_rows: int) -> int:
    """The configured bins, or 16 below LARGE_TABLE_ROWS fitting rows and 32 from there: on
    the credit table's 60,000 fitting rows 8–16 bins did as well as 32–64 (validation ROC AUC
    within noise, 0.8590–0.8601), on freMTPL2's 440,000 32–64 bins gained 0.03–0.12 deviance
    (×10⁻²) over 16 (bench/tabular.py --tune)."""
    if config.bins is not None:
        return config.bins
    return 16 if fit_rows < LARGE_TABLE_ROWS else 32


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Distinct training quantiles at 0, 1/bins, …, 1 of the non-missing values."""
    present = values[~np.isnan(values)]
    if present.size == 0 or bins <= 0:
        return np.zeros(0)
    return np.unique(np.quantile(present.astype(np.float64), np.linspace(0.0, 1.0, bins + 1)))


@dataclass(frozen=True)
class Preprocessing:
    """The frozen per-column constants of the network's first layer (fitting rows only)."""

    fill: np.ndarray  # [p]: numeric median (categorical: 0, the unseen bucket)
    low: np.ndarray  # [p]: clip bounds, the training range (categorical: 0…K)
    high: np.ndarray
    log_mask: np.ndarray  # [p]: 1 where the scalar is on a signed-log scale
    mean: np.ndarray  # [p]: of the (logged) clipped value
    std: np.ndarray
    numeric: np.ndarray  # indices of numeric columns
    indicators: np.ndarray  # indices of numeric columns that get a missing indicator
    bin_column: np.ndarray  # [B]: which column each piecewise-linear bin reads
    bin_low: np.ndarray  # [B]
    bin_width: np.ndarray  # [B]
    categorical: np.ndarray  # indices of categorical columns
    cardinality: np.ndarray  # K + 1 per categorical column (index 0 = unseen)


def preprocessing_for(
    schema: TabularSchema, features: np.ndarray, config: TabularConfig
) -> Preprocessing:
    """Statistics of the fitting rows for every column the schema lists."""
    x = np.asarray(features, dtype=np.float64)
    p = x.shape[1]
    fill, low, high = np.zeros(p), np.zeros(p), np.zeros(p)
    bin_column: list[int] = []
    bin_low: list[float] = []
    bin_width: list[float] = []
    numeric, indicators, categorical, cardinality = [], [], [], []
    for j, column in enumerate(schema.columns):
        if column.kind != NUMERIC:
            categorical.append(j)
            cardinality.append(len(column.categories) + 1)
            high[j] = len(column.categories)
            continue
        numeric.append(j)
        present = x[:, j][~np.isnan(x[:, j])]
        if present.size < x.shape[0]:  # an indicator only where fitting rows teach it
            indicators.append(j)
        if present.size:
            fill[j] = float(np.median(present))
            low[j], high[j] = float(present.min()), float(present.max())
        edges = quantile_edges(x[:, j], bins_for(config, x.shape[0]))
        for left, right in itertools.pairwise(edges):
            bin_column.append(j)
            bin_low.append(float(left))
            bin_width.append(float(right - left))
    filled = np.clip(np.where(np.isnan(x), fill, x), low, high)
    mask = np.zeros(p, dtype=bool)
    if numeric:
        mask[numeric] = log_column_mask(filled[:, numeric], config.log_columns)
    scaled = np.where(mask, signed_log(filled), filled)
    std = scaled.std(axis=0)
    return Preprocessing(
        fill=fill,
        low=low,
        high=high,
        log_mask=mask.astype(np.float64),
        mean=scaled.mean(axis=0),
        std=np.where(std > 1e-6, std, 1.0),
        numeric=np.asarray(numeric, dtype=np.int64),
        indicators=np.asarray(indicators, dtype=np.int64),
        bin_column=np.asarray(bin_column, dtype=np.int64),
        bin_low=np.asarray(bin_low),
        bin_width=np.asarray(bin_width),
        categorical=np.asarray(categorical, dtype=np.int64),
        cardinality=np.asarray(cardinality, dtype=np.int64),
    )


FLOAT_CONSTANTS = ("fill", "low", "high", "log_mask", "mean", "std", "bin_low", "bin_width")
INDEX_CONSTANTS = ("numeric", "indicators", "bin_column")


def _frozen(layer: keras.layers.Layer, name: str, values: list[float]) -> Any:
    """A non-trainable weight: the ONNX export freezes it into the graph (an eager tensor
    captured from outside would become an extra graph input, as `Standardize` explains)."""
    value = np.asarray(values, dtype=np.float32)
    return layer.add_weight(
        name=name,
        shape=value.shape,
        initializer=keras.initializers.Constant(value),
        trainable=False,
    )


@keras.saving.register_keras_serializable(package="riskstream")
class TabularNumeric(keras.layers.Layer):
    """Encoded row → [standardised numeric scalars, missing indicators, piecewise-linear
    bins]. Index lists are Python constants of the traced graph."""

    def __init__(self, constants: dict[str, list[Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.constants = constants

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        for name in FLOAT_CONSTANTS:
            setattr(self, f"{name}_weight", _frozen(self, name, self.constants[name]))

    def call(self, inputs: Any) -> Any:
        missing = ops.isnan(inputs)
        filled = ops.where(missing, self.fill_weight, inputs)
        clipped = ops.minimum(ops.maximum(filled, self.low_weight), self.high_weight)
        logged = ops.sign(clipped) * ops.log(ops.abs(clipped) + 1.0)
        scaled = self.log_mask_weight * logged + (1.0 - self.log_mask_weight) * clipped
        standardised = (scaled - self.mean_weight) / self.std_weight
        parts = [ops.take(standardised, self.constants["numeric"], axis=1)]
        if self.constants["indicators"]:
            flags = ops.cast(missing, "float32")
            parts.append(ops.take(flags, self.constants["indicators"], axis=1))
        if self.constants["bin_column"]:
            binned = ops.take(filled, self.constants["bin_column"], axis=1)
            position = (binned - self.bin_low_weight) / self.bin_width_weight
            parts.append(ops.minimum(ops.maximum(position, 0.0), 1.0))
        return ops.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["constants"] = self.constants
        return config


@keras.saving.register_keras_serializable(package="riskstream")
class CategoryIndex(keras.layers.Layer):
    """One categorical column's encoded index as int32, NaN → 0 and clipped to 0…K, so a
    malformed row can never index outside its embedding."""

    def __init__(self, column: int, top: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.column = column
        self.top = top

    def call(self, inputs: Any) -> Any:
        value = inputs[:, self.column]
        value = ops.where(ops.isnan(value), 0.0, value)
        return ops.cast(ops.minimum(ops.maximum(value, 0.0), float(self.top)), "int32")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"column": self.column, "top": self.top})
        return config


def embedding_width(cardinality: int, configured: int | None) -> int:
    if configured is not None:
        return configured
    return min(8, 1 + math.ceil(math.log2(cardinality)))


def build_tabular_model(
    prep: Preprocessing,
    n_columns: int,
    config: TabularConfig,
    base_rate: float,
    name: str = "riskstream_tabular",
) -> keras.Model:
    """The network; `base_rate` (positive share, or claims per exposure) starts the output
    bias where a constant model would be, so early epochs learn structure, not the mean."""
    constants = {name: getattr(prep, name).tolist() for name in FLOAT_CONSTANTS + INDEX_CONSTANTS}
    inputs = keras.Input(shape=(n_columns,), name="features", dtype="float32")
    parts = []
    if prep.numeric.size:
        parts.append(TabularNumeric(constants, name="numeric")(inputs))
    for column, size in zip(prep.categorical.tolist(), prep.cardinality.tolist(), strict=True):
        index = CategoryIndex(column, size - 1, name=f"index_{column}")(inputs)
        width = embedding_width(size, config.embedding_dim)
        parts.append(keras.layers.Embedding(size, width, name=f"embed_{column}")(index))
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate()(parts)
    regularizer = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    for width in config.hidden_units:
        x = keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer)(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout)(x)
    poisson = config.task == "poisson"
    if poisson:
        bias = math.log(max(base_rate, 1e-6))
    else:
        rate = min(max(base_rate, 1e-6), 1 - 1e-6)
        bias = math.log(rate / (1 - rate))
    outputs = keras.layers.Dense(
        1,
        activation="exponential" if poisson else "sigmoid",
        kernel_regularizer=regularizer,
        bias_initializer=keras.initializers.Constant(bias),
        name="score",
    )(x)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss="poisson" if poisson else "binary_crossentropy",
    )
    return model


def validation_measure(task: str, labels: np.ndarray, exposure: np.ndarray) -> Measure:
    """Binary: ROC AUC, average precision, log loss; poisson: deviance (10⁻² units) of the
    counts against λ · exposure."""
    if task == "poisson":

        def deviance(scores: np.ndarray) -> dict[str, float]:
            return {"val_poisson_deviance": 100 * poisson_deviance(labels, scores * exposure)}

        return deviance

    def ranking(scores: np.ndarray) -> dict[str, float]:
        return {
            "val_roc_auc": roc_auc(labels, scores),
            "val_average_precision": average_precision(labels, scores),
            "val_log_loss": log_loss(labels, scores),
        }

    return ranking


@dataclass(frozen=True)
class FitData:
    """One part of the table as the network sees it."""

    features: np.ndarray
    labels: np.ndarray
    exposure: np.ndarray


def base_rate(fit: FitData, task: str) -> float:
    if task == "poisson":
        return float(fit.labels.sum() / fit.exposure.sum())
    return float(fit.labels.mean())


def fit_member(
    model: keras.Model,
    fit: FitData,
    val: FitData,
    config: TabularConfig,
    report: Callable[[int, dict[str, float]], None],
) -> FitOutcome:
    if config.monitor_name not in TABULAR_MONITORS:
        raise ValueError(f"monitor must be one of {tuple(TABULAR_MONITORS)}")
    key, higher_is_better = TABULAR_MONITORS[config.monitor_name]
    measure = validation_measure(config.task, val.labels, val.exposure)
    early = BestValidation(val.features, measure, key, higher_is_better, config.patience, report)
    if config.task == "poisson":
        targets, weights, by_class = fit.labels / fit.exposure, fit.exposure, None
    else:
        targets, weights = fit.labels, None
        by_class = class_weights(fit.labels.astype(np.int8), config.class_weight)
    history = early.history
    model.fit(
        fit.features,
        targets.astype(np.float32),
        sample_weight=None if weights is None else weights.astype(np.float32),
        class_weight=by_class,
        batch_size=effective_batch_size(config.batch_size, fit.features.shape[0]),
        epochs=config.max_epochs,
        callbacks=[early],
        shuffle=True,
        verbose=0,
    )
    best = history[early.best_epoch - 1] if early.best_epoch else {}
    return FitOutcome(
        best_epoch=early.best_epoch,
        best_val_average_precision=float(best.get("val_average_precision", float("nan"))),
        epochs_run=len(history),
        seconds=sum(entry["seconds"] for entry in history),
        history=history,
    )


def train_tabular(
    schema: TabularSchema,
    fit: FitData,
    val: FitData,
    config: TabularConfig,
    seed: int,
    report: EpochReport,
) -> tuple[keras.Model, list[FitOutcome]]:
    """`config.ensemble` networks, each seeded and early-stopped on its own, averaged into one
    model (one ONNX graph)."""
    prep = preprocessing_for(schema, fit.features, config)
    rate = base_rate(fit, config.task)
    members: list[keras.Model] = []
    outcomes: list[FitOutcome] = []
    for member in range(config.ensemble):
        seed_everything(member_seed(seed, member))
        model = build_tabular_model(
            prep, fit.features.shape[1], config, rate, name=f"member_{member}"
        )
        outcomes.append(
            fit_member(
                model,
                fit,
                val,
                config,
                lambda epoch, entry, member=member: report(member, epoch, entry),
            )
        )
        if config.task == "poisson" and config.balance:
            rebalance(model, fit)
        members.append(model)
    return average_members(members, fit.features.shape[1]), outcomes


def rebalance(model: keras.Model, fit: FitData) -> float:
    """The balance property of actuarial pricing (Wüthrich, "Bias regularization in neural
    network models for general insurance pricing", 2020): scale λ so that the expected claims
    of the fitting rows equal their observed claims. Early stopping leaves a network off by a
    few percent in level, which costs deviance on every row; λ = exp(z + b), so the correction
    is log(observed / expected) added to the output bias. Returns the factor applied."""
    expected = float(np.sum(predict(model, fit.features).astype(np.float64) * fit.exposure))
    factor = float(fit.labels.sum()) / max(expected, 1e-12)
    output = model.get_layer("score")
    kernel, bias = output.get_weights()
    output.set_weights([kernel, bias + np.float32(math.log(factor))])
    return factor


__all__ = ["FitData", "TabularConfig", "build_tabular_model", "predict", "train_tabular"]
