"""Keras → ONNX with a parity check, and atomic publication of a model version folder.

A model version becomes visible to the worker only once its ONNX scores the held-out rows like
Keras does (max |Δ| ≤ 1e-5) and its card is written: it is assembled in a hidden temp folder
next to its final place and renamed in one step, so a worker never sees half a model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from riskstream.scoring import CARD_FILE, MODEL_FILE, VERSION_PATTERN

INPUT_NAME = "features"
OUTPUT_NAME = "score"
PARITY_TOLERANCE = 1e-5
VERSION_FORMAT = "%Y%m%dT%H%M%SZ"


class ParityError(RuntimeError):
    """The exported ONNX does not reproduce the Keras model; nothing was published."""


def export_onnx(model: Any, n_features: int, path: Path) -> None:
    """ONNX with one float32 input `features` [batch, n] and one output `score` [batch, 1]."""
    import tensorflow as tf

    signature = [tf.TensorSpec((None, n_features), tf.float32, name=INPUT_NAME)]
    with warnings.catch_warnings():  # keras' tf2onnx shim probes the removed np.object
        warnings.simplefilter("ignore", FutureWarning)
        model.export(str(path), format="onnx", input_signature=signature, verbose=False)
    rename_io(path)


def rename_io(path: Path) -> None:
    """Give the graph the contract's names: input `features`, output `score`, batch dim
    `batch` (tf2onnx calls them `features`, `Identity:0`/`output_0` and `unk__N`)."""
    import onnx

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ParityError(
            f"the exported graph has {len(graph.input)} inputs and {len(graph.output)} outputs; "
            "expected one of each (is every layer exportable?)"
        )
    renames = {graph.input[0].name: INPUT_NAME, graph.output[0].name: OUTPUT_NAME}
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in (graph.input[0], graph.output[0]):
        value.name = renames[value.name]
        first_dim = value.type.tensor_type.shape.dim[0]
        first_dim.ClearField("dim_value")
        first_dim.dim_param = "batch"
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))


def onnx_scores(path: Path, features: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (output,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(features, np.float32)})
    return np.asarray(output, dtype=np.float32).reshape(-1)


def check_parity(
    keras_scores: np.ndarray,
    onnx_path: Path,
    features: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Max |Keras − onnxruntime| over `features`; raises ParityError above `tolerance`."""
    try:
        exported = onnx_scores(onnx_path, features)
    except Exception as exc:  # onnxruntime's own error types: the graph does not even run
        raise ParityError(f"onnxruntime cannot run the exported model: {exc}") from exc
    reference = np.asarray(keras_scores, dtype=np.float32).reshape(-1)
    if exported.shape != reference.shape:
        raise ParityError(f"ONNX returned {exported.shape} scores for {reference.shape} rows")
    if not np.isfinite(exported).all():
        raise ParityError("ONNX returned non-finite scores")
    max_diff = float(np.max(np.abs(exported - reference))) if reference.size else 0.0
    if not max_diff <= tolerance:
        raise ParityError(
            f"ONNX and Keras scores differ by up to {max_diff:.3g} (tolerance {tolerance:g}) "
            f"on {reference.size:,} held-out rows: the export is not faithful, model not written"
        )
    return max_diff


def new_version(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime(VERSION_FORMAT)


def staging_dir(out_dir: Path, name: str) -> Path:
    """A hidden folder next to the final place (same file system, so rename is atomic); the
    scorer ignores it because its name is not a version."""
    parent = Path(out_dir) / name
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published model must be readable
    return staging


def publish(staging: Path, out_dir: Path, name: str, card: dict[str, Any]) -> Path:
    """Write card.json into the staging folder and rename it to OUT/<name>/<version>. The
    version is bumped by a second if that folder exists already (two runs in one second)."""
    if not (staging / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{staging / MODEL_FILE} was not written")
    version = card["version"]
    if not VERSION_PATTERN.match(version):
        raise ValueError(f"version {version!r} is not YYYYMMDDTHHMMSSZ")
    parent = Path(out_dir) / name
    while (parent / version).exists():
        bumped = datetime.strptime(version, VERSION_FORMAT) + timedelta(seconds=1)
        version = bumped.strftime(VERSION_FORMAT)
    card = {**card, "version": version}
    (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    target = parent / version
    os.rename(staging, target)
    return target


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
