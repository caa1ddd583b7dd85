"""The TF-free model loader: scoring, severities, explanations and actionable load errors.

Models here are tiny logistic regressions written with onnx.helper, so no TensorFlow is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from riskstream.scoring import ModelError, load_model, resolve_model_dir

FEATURES = ("amount", "count_1d", "risk_7d")
WEIGHTS = np.array([2.0, 0.5, -1.0], dtype=np.float32)
BIAS = -1.0


def logistic_onnx(weights: np.ndarray, bias: float, n_inputs: int | None = None) -> bytes:
    n = n_inputs or weights.size
    w = helper.make_tensor("w", TensorProto.FLOAT, [n, 1], np.resize(weights, n).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [bias])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logit_raw"]),
            helper.make_node("Add", ["logit_raw", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        "logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def card_for(name: str, version: str, features: tuple[str, ...] = FEATURES) -> dict[str, Any]:
    n = len(features)
    return {
        "name": name,
        "version": version,
        "created_at": "2024-01-01T00:00:00Z",
        "features": list(features),
        "input_name": "features",
        "output_name": "score",
        "threshold": 0.5,
        "threshold_rule": "max-f1",
        "training_window": {"from": "2018-07-25", "to": "2018-07-31"},
        "data_fingerprint": {"features_and_labels_sha256": "0" * 64, "source_sha256": "0" * 64},
        "metrics": {},
        "library_versions": {},
        "severity_bands": [
            {"severity": "medium", "min_score": 0.5},
            {"severity": "high", "min_score": 0.8},
            {"severity": "critical", "min_score": 0.95},
        ],
        "feature_means": [0.0] * n,
        "feature_stds": [1.0] * n,
    }


def write_model(
    root: Path,
    name: str = "fraud",
    version: str = "20240101T000000Z",
    card: dict[str, Any] | None = None,
    onnx_bytes: bytes | None = None,
) -> Path:
    folder = root / name / version
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(onnx_bytes or logistic_onnx(WEIGHTS, BIAS))
    (folder / "card.json").write_text(json.dumps(card or card_for(name, version)))
    return folder


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_scores_match_the_math(tmp_path: Path) -> None:
    folder = write_model(tmp_path)
    model = load_model(folder, expected_features=FEATURES)
    rows = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], dtype=np.float32)
    np.testing.assert_allclose(model.score(rows), sigmoid(rows @ WEIGHTS + BIAS), atol=1e-6)
    assert model.score(np.zeros((0, 3), np.float32)).shape == (0,)
    assert (model.name, model.version, model.threshold) == ("fraud", "20240101T000000Z", 0.5)
    with pytest.raises(ValueError, match=r"\[rows, 3\]"):
        model.score(np.zeros((2, 4), np.float32))


def test_newest_version_wins_and_staging_folders_are_ignored(tmp_path: Path) -> None:
    write_model(tmp_path, version="20240101T000000Z")
    newest = write_model(tmp_path, version="20240302T101010Z")
    (tmp_path / "fraud" / ".staging-abc").mkdir()
    (tmp_path / "fraud" / "zzz-not-a-version").mkdir()
    assert resolve_model_dir(tmp_path / "fraud") == newest
    assert load_model(tmp_path / "fraud", expected_features=FEATURES).version == "20240302T101010Z"
    assert (
        load_model(tmp_path, "fraud", expected_features=FEATURES).path == newest
    )  # the worker's call: MODELS_DIR + name


def test_severity_bands(tmp_path: Path) -> None:
    model = load_model(write_model(tmp_path), expected_features=FEATURES)
    assert model.severity(0.49) is None
    assert model.severity(float("nan")) is None
    assert model.severity(0.5) == "medium"
    assert model.severity(0.85) == "high"
    assert model.severity(0.99) == "critical"


def test_explain_names_the_feature_that_drove_the_score(tmp_path: Path) -> None:
    model = load_model(write_model(tmp_path), expected_features=FEATURES)
    rows = np.array([[3.0, 0.0, 0.0], [0.0, 6.0, -2.0]], dtype=np.float32)
    reasons = model.explain(rows)
    assert reasons[0][0].feature == "amount"
    assert reasons[0][0].contribution == pytest.approx(
        float(sigmoid(np.float32(5.0)) - sigmoid(np.float32(-1.0))), abs=1e-6
    )
    assert [r.feature for r in reasons[0]] == ["amount"]  # the others add nothing
    assert [r.feature for r in reasons[1]] == ["count_1d", "risk_7d"]
    assert reasons[1][1].value == pytest.approx(-2.0)
    assert reasons[1][0].contribution > reasons[1][1].contribution > 0
    assert model.explain_row(rows[1], top_k=1)[0].feature == "count_1d"


def test_missing_folder_says_how_to_train(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="riskstream train fraud"):
        load_model(tmp_path, "fraud")
    (tmp_path / "fraud").mkdir()
    with pytest.raises(ModelError, match="no model version folder"):
        load_model(tmp_path / "fraud")


def test_missing_card_or_model_file(tmp_path: Path) -> None:
    folder = write_model(tmp_path)
    (folder / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"model\.onnx is missing.*riskstream train"):
        load_model(folder, expected_features=FEATURES)
    (folder / "card.json").unlink()
    with pytest.raises(ModelError, match=r"card\.json is missing"):
        load_model(folder, expected_features=FEATURES)


def test_corrupt_onnx(tmp_path: Path) -> None:
    folder = write_model(tmp_path, onnx_bytes=b"this is not a protobuf")
    with pytest.raises(ModelError, match=r"corrupt or incomplete.*retrain"):
        load_model(folder, expected_features=FEATURES)


def test_truncated_onnx(tmp_path: Path) -> None:
    whole = logistic_onnx(WEIGHTS, BIAS)
    folder = write_model(tmp_path, onnx_bytes=whole[: len(whole) // 2])
    with pytest.raises(ModelError, match="cannot be loaded by onnxruntime"):
        load_model(folder, expected_features=FEATURES)


def test_corrupt_card(tmp_path: Path) -> None:
    folder = write_model(tmp_path)
    (folder / "card.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(folder, expected_features=FEATURES)
    card = card_for("fraud", "20240101T000000Z")
    del card["severity_bands"]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="lacks severity_bands"):
        load_model(folder, expected_features=FEATURES)
    card = card_for("fraud", "20240101T000000Z")
    card["feature_means"] = [0.0]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="feature_means must hold 3 finite numbers"):
        load_model(folder, expected_features=FEATURES)


def test_card_feature_mismatch(tmp_path: Path) -> None:
    folder = write_model(tmp_path)
    with pytest.raises(ModelError, match=r"card only: \['risk_7d'\].*retrain"):
        load_model(folder, expected_features=("amount", "count_1d", "risk_30d"))
    with pytest.raises(ModelError, match="different order"):
        load_model(folder, expected_features=("count_1d", "amount", "risk_7d"))


def test_card_must_match_the_real_feature_module(tmp_path: Path) -> None:
    from riskstream.features import fraud

    folder = write_model(tmp_path)  # lists FEATURES, not the fraud module's names
    with pytest.raises(ModelError, match="differ from the feature code"):
        load_model(folder)
    names = tuple(fraud.FEATURE_NAMES)
    weights = np.linspace(-1, 1, len(names)).astype(np.float32)
    good = write_model(
        tmp_path / "other",
        card=card_for("fraud", "20240101T000000Z", names),
        onnx_bytes=logistic_onnx(weights, 0.0),
    )
    assert load_model(good).features == names


def test_wrong_input_shape(tmp_path: Path) -> None:
    folder = write_model(tmp_path, onnx_bytes=logistic_onnx(WEIGHTS, BIAS, n_inputs=4))
    with pytest.raises(ModelError, match=r"card lists 3 features.*do not belong together"):
        load_model(folder, expected_features=FEATURES)


def test_wrong_input_name(tmp_path: Path) -> None:
    card = card_for("fraud", "20240101T000000Z")
    card["input_name"] = "x"
    folder = write_model(tmp_path, card=card)
    with pytest.raises(ModelError, match="not the single input 'x'"):
        load_model(folder, expected_features=FEATURES)


def test_card_under_the_wrong_name(tmp_path: Path) -> None:
    write_model(tmp_path, name="market", card=card_for("fraud", "20240101T000000Z"))
    with pytest.raises(ModelError, match="describes model 'fraud' but sits under 'market'"):
        load_model(tmp_path, "market", expected_features=FEATURES)


def test_unknown_model_name(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model name"):
        load_model(tmp_path, "credit")


def test_the_shipped_tabular_model_is_found_and_loaded_by_name() -> None:
    from riskstream.demo import BUNDLED_MODELS
    from riskstream.scoring import tabular_model_names

    assert tabular_model_names(BUNDLED_MODELS) == ["credit"]  # fraud and market are not tabular
    model = load_model(BUNDLED_MODELS, "credit")
    assert model.card["kind"] == "tabular" and model.features[-1] == "housing"


def test_a_count_models_typical_score_may_pass_one_a_probabilitys_may_not() -> None:
    from types import SimpleNamespace

    from riskstream.scoring import check_model_scores

    def model(task: str, score: float) -> Any:
        card = {"kind": "tabular", "task": task, "feature_means": [0.0]}
        return SimpleNamespace(
            name="m", path=Path("m"), card=card, score=lambda rows: np.array([score], np.float32)
        )

    check_model_scores(model("poisson", 1.7))  # an expected claim frequency
    with pytest.raises(ModelError, match="probability in"):
        check_model_scores(model("binary", 1.7))
    with pytest.raises(ModelError, match="expected frequency"):
        check_model_scores(model("poisson", float("nan")))
