"""The Keras models: a small feed-forward network whose first layer standardises raw features,
so the exported ONNX takes exactly what the feature code produces.

Why a custom standardisation layer rather than `keras.layers.Normalization`: an adapted
Normalization layer keeps its mean and variance as captured eager tensors, which the ONNX
export turns into extra graph inputs (the graph then cannot run). `Standardize` keeps them as
non-trainable weights, which the export freezes into the graph; it is still "adapted" on the
training rows only. It also applies a signed log to heavy-tailed columns (counts, amounts),
which a network otherwise learns slowly from standardised values dominated by outliers.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from riskstream.training.metrics import average_precision, log_loss

CLASS_WEIGHT_MODES = ("none", "sqrt", "balanced")
LOG_COLUMN_MODES = ("none", "heavy-tailed", "non-negative")


@dataclass(frozen=True)
class ModelConfig:
    hidden_units: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    l2: float = 1e-5
    batch_norm: bool = False
    learning_rate: float = 1e-3
    batch_size: int | None = None  # None: 512, doubled until an epoch is at most 500 steps
    max_epochs: int = 40
    patience: int = 6
    class_weight: str = "sqrt"
    log_columns: str = "heavy-tailed"
    monitor: str = "average_precision"
    ensemble: int = 1

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["hidden_units"] = list(self.hidden_units)
        return values


def log_column_mask(features: np.ndarray, mode: str) -> np.ndarray:
    """Columns that get the signed log: none; the non-negative, non-binary ones whose tail
    dwarfs their bulk (max > 10 × p90 + 1); or every non-negative, non-binary one (counts,
    amounts, volatilities: their ratios become differences a linear unit can form)."""
    if mode not in LOG_COLUMN_MODES:
        raise ValueError(f"log column mode must be one of {LOG_COLUMN_MODES}, got {mode!r}")
    x = np.asarray(features, dtype=np.float64)
    candidates = (x.min(axis=0) >= 0) & ~np.all((x == 0) | (x == 1), axis=0)
    if mode == "none":
        return np.zeros(x.shape[1], dtype=bool)
    if mode == "non-negative":
        return candidates
    return candidates & (x.max(axis=0) > 10.0 * np.percentile(x, 90, axis=0) + 1.0)


def signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log(np.abs(x) + 1.0)


@keras.saving.register_keras_serializable(package="riskstream")
class Standardize(keras.layers.Layer):
    """(transform(x) − mean) / std with frozen statistics; transform is a signed log on the
    masked columns. Written with ops that tf2onnx maps onto opset-15 ONNX (no Log1p)."""

    def __init__(
        self,
        mean: list[float],
        std: list[float],
        log_mask: list[float],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._initial = {
            "mean": np.asarray(mean, dtype=np.float32),
            "std": np.asarray(std, dtype=np.float32),
            "log_mask": np.asarray(log_mask, dtype=np.float32),
        }

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        for name, value in self._initial.items():
            weight = self.add_weight(
                name=name,
                shape=value.shape,
                initializer=keras.initializers.Constant(value),
                trainable=False,
            )
            setattr(self, f"{name}_weight", weight)

    def call(self, inputs: Any) -> Any:
        logged = ops.sign(inputs) * ops.log(ops.abs(inputs) + 1.0)
        mask = self.log_mask_weight
        transformed = mask * logged + (1.0 - mask) * inputs
        return (transformed - self.mean_weight) / self.std_weight

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({key: value.tolist() for key, value in self._initial.items()})
        return config


def standardize_layer(fit_features: np.ndarray, log_columns: str) -> Standardize:
    """Statistics from the fitting rows only (no peeking at validation)."""
    mask = log_column_mask(fit_features, log_columns)
    x = np.asarray(fit_features, dtype=np.float64)
    x = np.where(mask, signed_log(x), x)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return Standardize(mean.tolist(), std.tolist(), mask.astype(np.float32).tolist())


def build_model(
    fit_features: np.ndarray, config: ModelConfig, name: str = "riskstream_mlp"
) -> keras.Model:
    n_features = fit_features.shape[1]
    inputs = keras.Input(shape=(n_features,), name="features", dtype="float32")
    x = standardize_layer(fit_features, config.log_columns)(inputs)
    regularizer = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    for width in config.hidden_units:
        x = keras.layers.Dense(width, kernel_regularizer=regularizer)(x)
        if config.batch_norm:
            x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout)(x)
    outputs = keras.layers.Dense(
        1, activation="sigmoid", kernel_regularizer=regularizer, name="score"
    )(x)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss="binary_crossentropy",
    )
    return model


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Weights that up-weight the rare positives: fully ('balanced': both classes weigh the
    same in total), halfway on a log scale ('sqrt'), or not at all ('none'). Normalised so that
    the mean row weight is 1 and the learning rate keeps its meaning."""
    if mode not in CLASS_WEIGHT_MODES:
        raise ValueError(f"class weight mode must be one of {CLASS_WEIGHT_MODES}, got {mode!r}")
    if mode == "none":
        return None
    n_pos = float(np.sum(labels == 1))
    n_neg = float(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ratio = n_neg / n_pos
    positive = ratio if mode == "balanced" else math.sqrt(ratio)
    mean_weight = (n_neg + positive * n_pos) / labels.size
    return {0: 1.0 / mean_weight, 1: positive / mean_weight}


EpochReport = Callable[[int, int, dict[str, float]], None]  # member, epoch, entry
MONITORS = ("average_precision", "log_loss")
# Validation scores -> named measures ("val_..."), computed in numpy each epoch.
Measure = Callable[[np.ndarray], dict[str, float]]


def ranking_measure(val_labels: np.ndarray) -> Measure:
    """Average precision and log loss of 0/1 validation labels."""

    def measure(scores: np.ndarray) -> dict[str, float]:
        return {
            "val_average_precision": average_precision(val_labels, scores),
            "val_log_loss": log_loss(val_labels, scores),
        }

    return measure


def monitor_key(monitor: str) -> tuple[str, bool]:
    """The measure a `monitor` name stops on, and whether higher is better."""
    if monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {MONITORS}, got {monitor!r}")
    if monitor == "average_precision":
        return "val_average_precision", True
    return "val_log_loss", False


class BestValidation(keras.callbacks.Callback):
    """Early stopping on held-out validation rows, measured exactly in numpy by `measure`
    (fraud/market: average precision, what an alert desk cares about, or log loss, smoother for
    small noisy validation sets; tabular models add ROC AUC and Poisson deviance). The best
    weights are restored."""

    def __init__(
        self,
        val_features: np.ndarray,
        measure: Measure,
        key: str,
        higher_is_better: bool,
        patience: int,
        report: Callable[[int, dict[str, float]], None],
    ) -> None:
        super().__init__()
        self.val_features = val_features
        self.measure = measure
        self.key = key
        self.sign = 1.0 if higher_is_better else -1.0
        self.patience = patience
        self.report = report
        self.best_value = -math.inf
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None
        self.history: list[dict[str, float]] = []
        self._epoch_started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        scores = predict(self.model, self.val_features)
        entry = {
            "epoch": epoch + 1,
            "loss": float((logs or {}).get("loss", float("nan"))),
            **self.measure(scores),
            "seconds": time.perf_counter() - self._epoch_started,
        }
        self.history.append(entry)
        value = self.sign * entry[self.key]
        if value > self.best_value:
            self.best_value, self.best_epoch = value, epoch + 1
            self.best_weights = [w.copy() for w in self.model.get_weights()]
        elif epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = True
        self.report(epoch + 1, entry)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


@dataclass
class FitOutcome:
    best_epoch: int
    best_val_average_precision: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Same seed, same data → same weights (op determinism on CPU costs little here)."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    with contextlib.suppress(RuntimeError):  # already configured in this process
        tf.config.experimental.enable_op_determinism()


def fit(
    model: keras.Model,
    fit_features: np.ndarray,
    fit_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    config: ModelConfig,
    report: Callable[[int, dict[str, float]], None],
) -> FitOutcome:
    key, higher_is_better = monitor_key(config.monitor)
    measure = ranking_measure(val_labels)
    early = BestValidation(val_features, measure, key, higher_is_better, config.patience, report)
    started = time.perf_counter()
    model.fit(
        fit_features,
        fit_labels.astype(np.float32),
        batch_size=effective_batch_size(config.batch_size, fit_features.shape[0]),
        epochs=config.max_epochs,
        class_weight=class_weights(fit_labels, config.class_weight),
        callbacks=[early],
        shuffle=True,
        verbose=0,
    )
    best = early.history[early.best_epoch - 1] if early.best_epoch else {}
    return FitOutcome(
        best_epoch=early.best_epoch,
        best_val_average_precision=float(best.get("val_average_precision", float("nan"))),
        epochs_run=len(early.history),
        seconds=time.perf_counter() - started,
        history=early.history,
    )


def effective_batch_size(configured: int | None, n_rows: int) -> int:
    """The configured size, or 512 doubled until an epoch takes at most 500 steps: small windows
    (a week of transactions) keep fine-grained updates, months of history keep epochs short."""
    if configured is not None:
        return configured
    size = 512
    while n_rows / size > 500 and size < 8192:
        size *= 2
    return size


def member_seed(seed: int, member: int) -> int:
    """Distinct seeds per ensemble member that do not overlap between nearby run seeds."""
    return seed * 1009 + member


def train_ensemble(
    fit_features: np.ndarray,
    fit_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    config: ModelConfig,
    seed: int,
    report: EpochReport,
) -> tuple[keras.Model, list[FitOutcome]]:
    """`config.ensemble` networks, each seeded and early-stopped on its own, averaged into one
    Keras model (so one ONNX graph): averaging cancels much of the seed-to-seed variance that
    early stopping on a short validation window leaves."""
    members: list[keras.Model] = []
    outcomes: list[FitOutcome] = []
    for member in range(config.ensemble):
        seed_everything(member_seed(seed, member))
        model = build_model(fit_features, config, name=f"member_{member}")
        outcomes.append(
            fit(
                model,
                fit_features,
                fit_labels,
                val_features,
                val_labels,
                config,
                lambda epoch, entry, member=member: report(member, epoch, entry),
            )
        )
        members.append(model)
    return average_members(members, fit_features.shape[1]), outcomes


def average_members(members: list[keras.Model], n_features: int) -> keras.Model:
    """One Keras model (so one ONNX graph) whose output is the mean of the members' outputs."""
    if len(members) == 1:
        return members[0]
    inputs = keras.Input(shape=(n_features,), name="features", dtype="float32")
    averaged = keras.layers.Average(name="score")([m(inputs) for m in members])
    return keras.Model(inputs, averaged, name="riskstream_ensemble")


def predict(model: keras.Model, features: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Inference-mode scores; calls the model directly (no tf.data pipeline per call)."""
    scores = np.empty(features.shape[0], dtype=np.float32)
    for start in range(0, features.shape[0], chunk):
        batch = np.ascontiguousarray(features[start : start + chunk], dtype=np.float32)
        output = model(batch, training=False)
        scores[start : start + batch.shape[0]] = ops.convert_to_numpy(output).reshape(-1)
    return scores
