"""A broken model stops the worker at start with exit code 3 and a message that says what to do.

Every case is a real `riskstream worker` process with a live broker configured, so the only
reason for it to stop is the model. The processes run concurrently (each spends its time
importing), which keeps the whole catalogue to a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from riskstream.broker import free_port
from riskstream.config import Settings
from riskstream.demo import BUNDLED_MODELS
from riskstream.worker import EXIT_BAD_MODEL, load_models

pytestmark = [pytest.mark.broker]

SHIPPED_FRAUD = BUNDLED_MODELS / "fraud"
NEWER_VERSION = "29990101T000000Z"  # sorts after any shipped version: the worker picks it


def shipped_version_dir() -> Path:
    return sorted(p for p in SHIPPED_FRAUD.iterdir() if p.is_dir())[-1]


def shipped_card() -> dict[str, Any]:
    return json.loads((shipped_version_dir() / "card.json").read_text())


def graph_model(nodes: list[Any], n_inputs: int, n_outputs: int, initializers: list[Any]) -> bytes:
    """An ONNX model `features [batch, n_inputs]` -> `score [batch, n_outputs]`."""
    graph = helper.make_graph(
        nodes,
        "broken",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_inputs])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", n_outputs])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def logistic_onnx(n_inputs: int, n_outputs: int = 1) -> bytes:
    weights = np.full((n_inputs, n_outputs), 0.01, dtype=np.float32)
    return graph_model(
        [
            helper.make_node("MatMul", ["features", "w"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["score"]),
        ],
        n_inputs,
        n_outputs,
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel())],
    )


def nan_onnx(n_inputs: int) -> bytes:
    """Loads fine and has the right signature, but every score is sqrt(-(|z| + 1)) = NaN."""
    weights = np.full((n_inputs, 1), 0.01, dtype=np.float32)
    return graph_model(
        [
            helper.make_node("MatMul", ["features", "w"], ["z"]),
            helper.make_node("Abs", ["z"], ["a"]),
            helper.make_node("Add", ["a", "one"], ["b"]),
            helper.make_node("Neg", ["b"], ["c"]),
            helper.make_node("Sqrt", ["c"], ["score"]),
        ],
        n_inputs,
        1,
        [
            helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel()),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )


def copy_shipped(models_dir: Path, version: str | None = None) -> Path:
    """A copy of the shipped fraud model under models_dir; returns its version folder."""
    target = models_dir / "fraud" / (version or shipped_version_dir().name)
    shutil.copytree(shipped_version_dir(), target)
    return target


def write_card(version_dir: Path, card: dict[str, Any]) -> None:
    (version_dir / "card.json").write_text(json.dumps(card))


# --- the catalogue: each builder breaks a copy of the shipped model ----------------------------


def no_models_dir(root: Path) -> Path:
    return root / "does-not-exist"


def no_version_folder(root: Path) -> Path:
    (root / "fraud" / "latest").mkdir(parents=True)
    return root


def onnx_missing(root: Path) -> Path:
    (copy_shipped(root) / "model.onnx").unlink()
    return root


def card_missing(root: Path) -> Path:
    (copy_shipped(root) / "card.json").unlink()
    return root


def onnx_garbage(root: Path) -> Path:
    (copy_shipped(root) / "model.onnx").write_bytes(b"\x00not a protobuf\xff" * 64)
    return root


def onnx_truncated(root: Path) -> Path:
    model = copy_shipped(root) / "model.onnx"
    whole = model.read_bytes()
    model.write_bytes(whole[: len(whole) // 2])
    return root


def card_not_json(root: Path) -> Path:
    (copy_shipped(root) / "card.json").write_text('{"name": "fraud", "features": [')
    return root


def card_lacks_keys(root: Path) -> Path:
    version = copy_shipped(root)
    card = shipped_card()
    del card["threshold"], card["feature_means"]
    write_card(version, card)
    return root


def input_shape_wrong(root: Path) -> Path:
    """The graph takes one column fewer than the card (and the feature code) lists."""
    version = copy_shipped(root)
    (version / "model.onnx").write_bytes(logistic_onnx(len(shipped_card()["features"]) - 1))
    return root


def card_features_renamed(root: Path) -> Path:
    """Card and feature code out of step: the model was trained on another definition."""
    version = copy_shipped(root)
    card = shipped_card()
    card["features"] = ["amount" if f == "tx_amount" else f for f in card["features"]]
    write_card(version, card)
    return root


def card_features_reordered(root: Path) -> Path:
    version = copy_shipped(root)
    card = shipped_card()
    features = card["features"]
    features[0], features[1] = features[1], features[0]
    write_card(version, card)
    return root


def scores_are_nan(root: Path) -> Path:
    version = copy_shipped(root)
    (version / "model.onnx").write_bytes(nan_onnx(len(shipped_card()["features"])))
    return root


def two_scores_per_row(root: Path) -> Path:
    version = copy_shipped(root)
    (version / "model.onnx").write_bytes(logistic_onnx(len(shipped_card()["features"]), 2))
    return root


def newest_version_broken(root: Path) -> Path:
    """A bad deploy next to a good version: the worker refuses, it does not fall back."""
    copy_shipped(root)
    (copy_shipped(root, NEWER_VERSION) / "model.onnx").write_bytes(b"garbage")
    return root


def market_missing_fraud_fine(root: Path) -> Path:
    copy_shipped(root)
    return root


@dataclasses.dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]
    says: tuple[str, ...]  # fragments the message must contain (what is wrong, what to do)
    models: str = "fraud"


CASES: dict[str, Case] = {
    "models dir missing": Case(no_models_dir, ("does not exist", "riskstream train fraud")),
    "no version folder": Case(no_version_folder, ("no model version folder", "riskstream train")),
    "model.onnx missing": Case(onnx_missing, ("model.onnx is missing", "riskstream train")),
    "card.json missing": Case(card_missing, ("card.json is missing", "riskstream train")),
    "onnx garbage": Case(onnx_garbage, ("cannot be loaded by onnxruntime", "corrupt")),
    "onnx truncated": Case(onnx_truncated, ("cannot be loaded by onnxruntime", "retrain")),
    "card not json": Case(card_not_json, ("not valid JSON", "riskstream train")),
    "card lacks keys": Case(card_lacks_keys, ("lacks threshold, feature_means", "retrain")),
    "input shape wrong": Case(input_shape_wrong, ("do not belong together", "retrain")),
    "card features renamed": Case(
        card_features_renamed, ("differ from the feature code", "'amount'", "retrain")
    ),
    "card features reordered": Case(
        card_features_reordered, ("same names, different order", "retrain")
    ),
    "scores are NaN": Case(scores_are_nan, ("not one probability in [0, 1]", "nan", "retrain")),
    "two scores per row": Case(two_scores_per_row, ("not one probability in [0, 1]", "retrain")),
    "newest version broken": Case(newest_version_broken, (NEWER_VERSION, "onnxruntime")),
    "second model missing": Case(
        market_missing_fraud_fine,
        ("market", "does not exist", "riskstream train market"),
        models="fraud,market",
    ),
}


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: int | None
    output: str


@pytest.fixture(scope="module")
def outcomes(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Start one worker per case, all at once, against the live broker; collect how each ends."""
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, case in CASES.items():
            root = tmp_path_factory.mktemp("models")
            environ = {
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "RISKSTREAM_MODELS_DIR": str(case.build(root)),
                "RISKSTREAM_MODELS": case.models,
                "RISKSTREAM_METRICS_PORT": str(free_port()),
                "RISKSTREAM_APP_ID": f"riskstream-model-{abs(hash(name))}",
            }
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "riskstream", "worker"],
                env=environ,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        results = {}
        for name, process in processes.items():
            try:
                output, _ = process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
            results[name] = Outcome(process.returncode, output)
        return results
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("case", list(CASES))
def test_broken_model_stops_the_worker_with_an_actionable_message(
    case: str, outcomes: dict[str, Outcome]
) -> None:
    outcome = outcomes[case]
    assert outcome.code == EXIT_BAD_MODEL, f"exit {outcome.code}:\n{outcome.output[-3000:]}"
    errors = [line for line in outcome.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, outcome.output[-3000:]
    for fragment in CASES[case].says:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert "Traceback" not in outcome.output, "a message for the operator, not a stack trace"
    assert "topics ready" not in outcome.output, "the model is checked before the broker"


def test_the_shipped_model_passes_the_same_checks(tmp_path: Path) -> None:
    """The control: an untouched copy loads and scores, so the failures above are the damage."""
    copy_shipped(tmp_path)
    settings = Settings.from_env(
        {"RISKSTREAM_MODELS_DIR": str(tmp_path), "RISKSTREAM_MODELS": "fraud"}
    )
    model = load_models(settings)["fraud"]
    score = model.score(np.asarray([model.card["feature_means"]], dtype=np.float32))
    assert score.shape == (1,) and 0.0 <= float(score[0]) <= 1.0
