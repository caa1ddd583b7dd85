"""Load exported models (ONNX + card.json) and score feature matrices, without TensorFlow.

The worker and `riskstream evaluate` share this loader, so both refuse the same broken or
mismatched models with the same actionable message instead of scoring garbage: the card's
feature list must equal the feature code's FEATURE_NAMES (for a tabular model: its input
schema's columns, see `riskstream.features.tabular`) and the ONNX input must take exactly that
many columns.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from riskstream.contracts import Reason
from riskstream.features.tabular import TabularInputError, is_tabular_card, schema_from_card

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
VERSION_PATTERN = re.compile(r"^\d{8}T\d{6}Z$")
KNOWN_MODELS = ("fraud", "market")
REQUIRED_CARD_KEYS = (
    "name",
    "version",
    "created_at",
    "features",
    "input_name",
    "output_name",
    "threshold",
    "threshold_rule",
    "training_window",
    "data_fingerprint",
    "metrics",
    "library_versions",
    "severity_bands",
    "feature_means",
    "feature_stds",
)
RETRAIN_HINT = "retrain it with `riskstream train {name} --data PATH --out MODELS_DIR`"
TABULAR_RETRAIN_HINT = (
    "retrain it with `riskstream train tabular --name {name} --data PATH --label COLUMN "
    "--out MODELS_DIR`"
)


class ModelError(Exception):
    """A model folder that cannot be served; the message says what to do about it."""


@dataclass(frozen=True)
class SeverityBand:
    severity: str
    min_score: float


def expected_features_for(name: str) -> tuple[str, ...]:
    """FEATURE_NAMES of the feature module that feeds model `name` (the stream's truth)."""
    if name not in KNOWN_MODELS:
        raise ModelError(
            f"unknown model name {name!r}: riskstream serves {', '.join(KNOWN_MODELS)}; "
            "put the model under a folder with one of those names"
        )
    module = importlib.import_module(f"riskstream.features.{name}")
    return tuple(module.FEATURE_NAMES)


def newest_version_dir(name_dir: Path) -> Path:
    """The newest `YYYYMMDDTHHMMSSZ` folder; half-written temp folders are ignored."""
    name_dir = Path(name_dir)
    if not name_dir.is_dir():
        raise ModelError(
            f"model folder {name_dir} does not exist: train a model with "
            f"`riskstream train {name_dir.name} --data PATH --out {name_dir.parent}` "
            "or point RISKSTREAM_MODELS_DIR / --model at the right folder"
        )
    versions = sorted(
        child.name
        for child in name_dir.iterdir()
        if child.is_dir() and VERSION_PATTERN.match(child.name)
    )
    if not versions:
        raise ModelError(
            f"no model version folder (YYYYMMDDTHHMMSSZ) under {name_dir}: train one with "
            f"`riskstream train {name_dir.name} --data PATH --out {name_dir.parent}`"
        )
    return name_dir / versions[-1]


PIN_FILE = "PINNED"


CHALLENGER_FILE = "CHALLENGER"


def served_version_dir(name_dir: Path) -> Path:
    """The version a worker serves from a model's folder: the one named in its PINNED file (a
    version kept in service on purpose, newer ones notwithstanding), else the newest."""
    return _named_version(name_dir, PIN_FILE) or newest_version_dir(name_dir)


def challenger_version_dir(name_dir: Path) -> Path | None:
    """The version a model's CHALLENGER file names (served in shadow), or None."""
    return _named_version(name_dir, CHALLENGER_FILE)


def _named_version(name_dir: Path, file_name: str) -> Path | None:
    """The version folder a small file in a model's folder names; None without the file."""
    named = Path(name_dir) / file_name
    if not named.is_file():
        return None
    version = named.read_text(encoding="utf-8").strip()
    version_dir = Path(name_dir) / version
    if not VERSION_PATTERN.match(version) or not version_dir.is_dir():
        raise ModelError(
            f"{named} names {version!r}, which is not a version folder beside it: write the "
            f"name of one (YYYYMMDDTHHMMSSZ), or delete the file"
        )
    return version_dir


def resolve_model_dir(path: Path) -> Path:
    """A version folder as given, or the newest version inside a model-name folder."""
    path = Path(path)
    if VERSION_PATTERN.match(path.name) or (path / CARD_FILE).exists():
        return path
    return newest_version_dir(path)


def tabular_model_names(models_dir: Path) -> list[str]:
    """The model folders of MODELS_DIR whose newest version is a tabular model (what the worker
    serves on the requests topic besides the models it is told to serve). A folder whose newest
    card cannot be read counts too, so that loading it says what is wrong with it."""
    found = []
    for child in sorted(Path(models_dir).iterdir()) if Path(models_dir).is_dir() else []:
        if not child.is_dir() or child.name in KNOWN_MODELS:
            continue
        try:
            card = _read_card(newest_version_dir(child))
        except ModelError:
            continue  # not a model folder (no version inside), or fraud/market's business
        if is_tabular_card(card):
            found.append(child.name)
    return found


def check_model(model: Model) -> None:
    """Before serving a model, at start (riskstream.worker) or in a swap (riskstream.model_swap)."""
    check_model_scores(model)
    check_card_samples(model)


def check_model_scores(model: Model) -> None:
    """Score one typical row (the training means) before serving: a graph that loads can still
    return NaN or the wrong shape, and would then fail every micro-batch instead of refusing to
    start."""
    hint = (TABULAR_RETRAIN_HINT if is_tabular_card(model.card) else RETRAIN_HINT).format(
        name=model.name
    )
    typical = np.asarray([model.card["feature_means"]], dtype=np.float32)
    try:
        scores = model.score(typical)
    except Exception as exc:  # onnxruntime raises its own types for graphs that fail to run
        raise ModelError(
            f"{model.path}: scoring one typical row failed ({type(exc).__name__}: "
            f"{str(exc).strip()[:300]}): the ONNX graph is broken; {hint}"
        ) from exc
    top, what = (
        (math.inf, "expected frequency >= 0")
        if is_count_model(model)
        else (1.0, "probability in [0, 1]")
    )
    if scores.shape != (1,) or not 0.0 <= float(scores[0]) <= top:  # NaN fails the range test
        raise ModelError(
            f"{model.path}: scoring one typical row returned {scores.tolist()!r}, not one "
            f"{what}: the ONNX graph is broken or is not a riskstream model; {hint}"
        )


SAMPLE_TOLERANCE = 1e-5


def check_card_samples(model: Model) -> None:
    """A tabular card stores a few records with the scores its ONNX file gave them at export:
    the encoder and the graph served now must give the same (a card and a model file from
    different trainings, or an encoder that changed, would not)."""
    samples = model.card.get("samples") or []
    if not is_tabular_card(model.card) or not samples:
        return
    try:
        rows = schema_from_card(model.card).encode_records([s["features"] for s in samples])
    except (TabularInputError, KeyError, TypeError) as exc:
        raise ModelError(f"{model.path}: the card's sample records do not encode ({exc})") from exc
    expected = np.asarray([s["score"] for s in samples], dtype=np.float64)
    worst = float(np.max(np.abs(model.score(rows).astype(np.float64) - expected)))
    if not worst <= SAMPLE_TOLERANCE:
        raise ModelError(
            f"{model.path}: the card's sample records score up to {worst:.3g} away from the "
            f"scores the card holds: model.onnx and card.json are not from the same training; "
            f"{TABULAR_RETRAIN_HINT.format(name=model.name)}"
        )


def is_count_model(model: Model) -> bool:
    """A tabular model of claim counts: its score is an expected frequency, not a probability."""
    return model.card.get("task") == "poisson"


def _read_card(version_dir: Path) -> dict[str, Any]:
    card_path = version_dir / CARD_FILE
    name = version_dir.parent.name
    if not card_path.is_file():
        raise ModelError(f"{card_path} is missing: {RETRAIN_HINT.format(name=name)}")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{card_path} is not valid JSON ({exc}): {RETRAIN_HINT.format(name=name)}"
        ) from exc
    if not isinstance(card, dict):
        raise ModelError(f"{card_path} is not a JSON object: {RETRAIN_HINT.format(name=name)}")
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise ModelError(
            f"{card_path} lacks {', '.join(missing)}: it was not written by this version of "
            f"riskstream; {RETRAIN_HINT.format(name=name)}"
        )
    return card


def _finite_floats(values: Any, length: int, what: str, card_path: Path) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{card_path}: {what} must be a list of numbers") from exc
    if array.shape != (length,) or not np.isfinite(array).all():
        raise ModelError(
            f"{card_path}: {what} must hold {length} finite numbers, one per feature; "
            "the card is corrupt, retrain the model"
        )
    return array


def _severity_bands(card: dict[str, Any], card_path: Path) -> tuple[SeverityBand, ...]:
    try:
        bands = tuple(
            SeverityBand(str(band["severity"]), float(band["min_score"]))
            for band in card["severity_bands"]
        )
    except (TypeError, KeyError, ValueError) as exc:
        raise ModelError(
            f"{card_path}: severity_bands must be a list of {{severity, min_score}}; "
            "the card is corrupt, retrain the model"
        ) from exc
    scores = [band.min_score for band in bands]
    if not bands or scores != sorted(scores):
        raise ModelError(
            f"{card_path}: severity_bands must be non-empty and sorted by min_score; "
            "fix the card or retrain the model"
        )
    return bands


def _check_features(card: dict[str, Any], expected: Sequence[str], card_path: Path) -> None:
    listed = card["features"]
    if list(listed) == list(expected):
        return
    only_card = [feature for feature in listed if feature not in expected]
    only_code = [feature for feature in expected if feature not in listed]
    detail = (
        f"card only: {only_card}; feature code only: {only_code}"
        if only_card or only_code
        else "same names, different order"
    )
    raise ModelError(
        f"{card_path} lists features that differ from the feature code ({detail}): the model "
        f"was trained with another feature definition; {RETRAIN_HINT.format(name=card['name'])}"
    )


def _open_session(onnx_path: Path, intra_op_threads: int, name: str) -> Any:
    import onnxruntime as ort

    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path} is missing: {RETRAIN_HINT.format(name=name)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
        raise ModelError(
            f"{onnx_path} cannot be loaded by onnxruntime ({type(exc).__name__}: "
            f"{str(exc).strip()[:300]}): the file is corrupt or incomplete; "
            f"{RETRAIN_HINT.format(name=name)}"
        ) from exc


def _check_signature(session: Any, card: dict[str, Any], n_features: int, path: Path) -> None:
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    hint = RETRAIN_HINT.format(name=card["name"])
    if len(inputs) != 1 or inputs[0].name != card["input_name"]:
        raise ModelError(
            f"{path}: the ONNX graph's inputs {[i.name for i in inputs]} are not the single "
            f"input {card['input_name']!r} the card promises; {hint}"
        )
    shape = inputs[0].shape
    if inputs[0].type != "tensor(float)" or len(shape) != 2 or shape[1] != n_features:
        raise ModelError(
            f"{path}: the ONNX input is {inputs[0].type} of shape {shape}, but the card lists "
            f"{n_features} features (expected tensor(float) of shape [batch, {n_features}]); "
            f"model and card do not belong together, {hint}"
        )
    if card["output_name"] not in [output.name for output in outputs]:
        raise ModelError(
            f"{path}: the ONNX graph has no output {card['output_name']!r} "
            f"(it has {[o.name for o in outputs]}); {hint}"
        )


class Model:
    """One loaded model version: score matrices, name severities, explain alerts."""

    def __init__(
        self,
        path: Path,
        card: dict[str, Any],
        session: Any,
        feature_means: np.ndarray,
        feature_stds: np.ndarray,
        bands: tuple[SeverityBand, ...],
    ) -> None:
        self.path = path
        self.card = card
        self.name: str = card["name"]
        self.version: str = card["version"]
        self.features: tuple[str, ...] = tuple(card["features"])
        self.threshold: float = float(card["threshold"])
        self.bands = bands
        self.input_name: str = card["input_name"]
        self.output_name: str = card["output_name"]
        self._session = session
        self._means = feature_means.astype(np.float32)
        self.feature_stds = feature_stds

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """Scores (float32, one per row) of a [rows, n_features] matrix of raw features."""
        rows = np.ascontiguousarray(matrix, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != len(self.features):
            raise ValueError(
                f"{self.name} expects a [rows, {len(self.features)}] matrix, got {rows.shape}"
            )
        if rows.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        (output,) = self._session.run([self.output_name], {self.input_name: rows})
        return np.asarray(output, dtype=np.float32).reshape(-1)

    def severity(self, score: float) -> str | None:
        """The severity band of an alerting score; None below the alert threshold."""
        if not score >= self.threshold:  # NaN never alerts
            return None
        chosen = self.bands[0].severity
        for band in self.bands:
            if score >= band.min_score:
                chosen = band.severity
        return chosen

    def explain(self, matrix: np.ndarray, top_k: int = 3) -> list[list[Reason]]:
        """Reasons for each row, by occlusion: one feature at a time is replaced by its training
        mean and the whole batch is re-scored in one call; the features whose replacement lowers
        the score most are the reasons, `contribution` being that drop. Meant for the few rows
        that alert (cost: one call on rows × features rows)."""
        rows = np.ascontiguousarray(matrix, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        n_rows, n_features = rows.shape
        if n_rows == 0:
            return []
        base = self.score(rows)
        occluded = np.repeat(rows, n_features, axis=0).reshape(n_rows, n_features, n_features)
        diagonal = np.arange(n_features)
        occluded[:, diagonal, diagonal] = self._means
        occluded_scores = self.score(occluded.reshape(-1, n_features)).reshape(n_rows, n_features)
        contributions = base[:, None] - occluded_scores
        return [self._reasons(rows[i], contributions[i], top_k) for i in range(n_rows)]

    def explain_row(self, row: np.ndarray, top_k: int = 3) -> list[Reason]:
        """Reasons for one row of raw features (see `explain`)."""
        return self.explain(np.asarray(row).reshape(1, -1), top_k)[0]

    def _reasons(self, row: np.ndarray, contribution: np.ndarray, top_k: int) -> list[Reason]:
        order = np.argsort(-contribution, kind="stable")
        chosen = [int(j) for j in order if contribution[j] > 0][:top_k]
        if not chosen:  # nothing raises the score on its own: report the strongest effects
            chosen = [int(j) for j in np.argsort(-np.abs(contribution), kind="stable")[:top_k]]
        return [
            Reason(
                feature=self.features[j],
                value=float(row[j]) if math.isfinite(row[j]) else None,  # a missing input
                contribution=float(contribution[j]),
            )
            for j in chosen
        ]


def _card_features(card: dict[str, Any], card_path: Path) -> tuple[str, ...]:
    """What the model's input columns must be: the feature module's FEATURE_NAMES for the
    window models; for a tabular model, the columns of the input schema its card holds (which
    must itself be servable)."""
    if not is_tabular_card(card):
        return expected_features_for(card["name"])
    try:
        return schema_from_card(card).names
    except TabularInputError as exc:
        raise ModelError(
            f"{card_path}: its input_schema cannot be served ({exc}); "
            f"{TABULAR_RETRAIN_HINT.format(name=card['name'])}"
        ) from exc


def load_model(
    path: Path,
    name: str | None = None,
    *,
    expected_features: Sequence[str] | None = None,
    intra_op_threads: int = 1,
) -> Model:
    """Load a model: with `name`, the served version of MODELS_DIR/<name> (the newest, or the
    one its PINNED file names: what the worker serves); without, `path` is a version folder
    or a model-name folder (its newest version).

    `expected_features` defaults to the FEATURE_NAMES of the card's model name (a tabular
    model's: its input schema's columns); anything missing, corrupt or mismatched raises
    ModelError with what to do about it.
    """
    if name is not None:
        if name not in KNOWN_MODELS and not (Path(path) / name).is_dir():
            served = ", ".join([*KNOWN_MODELS, *tabular_model_names(Path(path))])
            raise ModelError(
                f"unknown model name {name!r}: {Path(path) / name} does not exist (riskstream "
                f"serves {served} from {path}); train it first: "
                f"{TABULAR_RETRAIN_HINT.format(name=name)}"
            )
        version_dir = served_version_dir(Path(path) / name)
    else:
        version_dir = resolve_model_dir(Path(path))
    card = _read_card(version_dir)
    card_path = version_dir / CARD_FILE
    card_name = card["name"]
    if name is not None and name not in KNOWN_MODELS and not is_tabular_card(card):
        expected_features_for(name)  # raises the unknown-name ModelError
    if name is not None and card_name != name:
        raise ModelError(
            f"{card_path} describes model {card_name!r} but sits under {name!r}: move it to "
            f"the folder of its name or retrain it"
        )
    if not isinstance(card["features"], list) or not card["features"]:
        raise ModelError(f"{card_path}: features must be a non-empty list of names")
    expected = (
        expected_features if expected_features is not None else _card_features(card, card_path)
    )
    _check_features(card, expected, card_path)
    threshold = card["threshold"]
    # A probability's threshold lies in [0, 1]; a claim model's is an expected frequency.
    top = math.inf if card.get("task") == "poisson" else 1.0
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not (0.0 <= threshold <= top)
    ):
        raise ModelError(
            f"{card_path}: threshold must be a number in [0, {top:g}], got {threshold!r}; "
            "fix the card or retrain the model"
        )
    n_features = len(card["features"])
    means = _finite_floats(card["feature_means"], n_features, "feature_means", card_path)
    stds = _finite_floats(card["feature_stds"], n_features, "feature_stds", card_path)
    bands = _severity_bands(card, card_path)
    session = _open_session(version_dir / MODEL_FILE, intra_op_threads, card_name)
    _check_signature(session, card, n_features, version_dir / MODEL_FILE)
    return Model(version_dir, card, session, means, stds, bands)
