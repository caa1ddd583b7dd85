"""Training package: labels and splits, a tiny Keras model exported to ONNX and reloaded by the
worker's loader, the parity check refusing a tampered export, and train/evaluate end to end on
small synthetic CSVs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from riskstream.training.datasets import (
    LabeledRows,
    drawdown_labels,
    time_split,
)

DAY = 86_400.0


def test_drawdown_labels_hand_computed() -> None:
    close = np.array([100.0, 99.0, 96.0, 94.0, 101.0, 100.0])
    labels, known = drawdown_labels(close, horizon=2, drop=0.05)
    # t=0: min(99, 96) = 96 > 95 -> 0; t=1: min(96, 94) = 94 <= 94.05 -> 1;
    # t=2: min(94, 101) = 94 > 91.2 -> 0; t=3: min(101, 100) -> 0; t=4, 5: future incomplete.
    assert labels.tolist() == [0, 1, 0, 0, 0, 0]
    assert known.tolist() == [True, True, True, True, False, False]


def test_drawdown_labels_match_a_loop() -> None:
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 300)))
    labels, known = drawdown_labels(close)
    for t in range(close.size):
        if t + 20 < close.size:
            assert known[t]
            assert labels[t] == int(close[t + 1 : t + 21].min() <= 0.95 * close[t])
        else:
            assert not known[t]


def test_time_split_cuts_at_a_whole_day() -> None:
    timestamps = np.arange(0, 10 * DAY, 3600.0)
    validation = time_split(timestamps, 0.2)
    assert validation.any() and not validation.all()
    first_validation = timestamps[validation].min()
    assert first_validation % DAY == 0
    assert timestamps[~validation].max() < first_validation  # never validation before training
    assert first_validation == 8 * DAY


def test_class_weights_keep_the_mean_weight_at_one() -> None:
    from riskstream.training.models import class_weights

    labels = np.array([1] * 10 + [0] * 990)
    assert class_weights(labels, "none") is None
    for mode, ratio in (("balanced", 99.0), ("sqrt", 99.0**0.5)):
        weights = class_weights(labels, mode)
        assert weights[1] / weights[0] == pytest.approx(ratio)
        mean = (10 * weights[1] + 990 * weights[0]) / 1000
        assert mean == pytest.approx(1.0)


def synthetic_fraud_rows(n: int = 4000, seed: int = 0) -> LabeledRows:
    """Rows with the real fraud feature names; the label depends on two columns."""
    from riskstream.features.fraud import FEATURE_NAMES

    rng = np.random.default_rng(seed)
    features = rng.gamma(2.0, 20.0, size=(n, len(FEATURE_NAMES))).astype(np.float32)
    logit = 0.04 * features[:, 0] + 3.0 * (features[:, 5] > 60) - 5.0
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    timestamps = np.sort(rng.uniform(0, 10 * DAY, n)) + datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    return LabeledRows(
        name="fraud",
        feature_names=tuple(FEATURE_NAMES),
        features=features,
        labels=labels,
        timestamps=timestamps,
        event_ids=np.array([f"tx{i}" for i in range(n)], dtype=object),
        entity_ids=np.array([f"c{i % 97}" for i in range(n)], dtype=object),
        labelled=np.ones(n, dtype=bool),
        start=date(2024, 1, 1),
        end=date(2024, 1, 10),
        source_sha256="0" * 64,
    )


def quick_request(out: Path, **overrides: object):  # -> TrainRequest
    from riskstream.training.train import TrainRequest

    return TrainRequest(
        name="fraud",
        data=Path("synthetic.csv"),
        out=out,
        seed=1,
        overrides=(("max_epochs", 3), ("batch_size", 256), *overrides.items()),
    )


def test_tiny_model_exports_reloads_and_scores(tmp_path: Path) -> None:
    from rich.console import Console

    from riskstream.scoring import load_model
    from riskstream.training.train import train_on_rows

    rows = synthetic_fraud_rows()
    request = quick_request(tmp_path, max_epochs=5, learning_rate=3e-3)
    result = train_on_rows(rows, request, Console(quiet=True))
    folder = result.version_dir
    assert folder.parent == tmp_path / "fraud"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.onnx"]
    assert [p.name for p in (tmp_path / "fraud").iterdir()] == [folder.name]  # no staging left
    card = json.loads((folder / "card.json").read_text())
    assert card["version"] == folder.name
    assert card["metrics"]["onnx_parity_max_abs_diff"] <= 1e-5
    assert card["training"]["epochs_run"][0] <= 5
    assert card["training_window"] == {"from": "2024-01-01", "to": "2024-01-10"}
    assert len(card["data_fingerprint"]["features_and_labels_sha256"]) == 64
    bands = [band["min_score"] for band in card["severity_bands"]]
    assert bands[0] == card["threshold"] and bands == sorted(bands)
    # The worker's loader accepts it (features checked against the real feature module).
    model = load_model(tmp_path, "fraud")
    scores = model.score(rows.features[:100])
    assert scores.shape == (100,) and np.all((scores >= 0) & (scores <= 1))
    auc = card["metrics"]["training"]["roc_auc"]
    assert auc > 0.7, f"it did not learn the planted rule: training ROC AUC {auc}"
    reasons = model.explain(rows.features[:2])
    assert len(reasons) == 2 and all(r.feature in rows.feature_names for r in reasons[0])


def test_an_ensemble_exports_as_one_graph(tmp_path: Path) -> None:
    from rich.console import Console

    from riskstream.scoring import load_model
    from riskstream.training.train import train_on_rows

    rows = synthetic_fraud_rows(n=1500)
    request = quick_request(tmp_path, ensemble=2, max_epochs=2, hidden_units=(8,))
    result = train_on_rows(rows, request, Console(quiet=True))
    assert len(result.card["training"]["best_epoch"]) == 2
    assert result.card["metrics"]["onnx_parity_max_abs_diff"] <= 1e-5
    assert load_model(result.version_dir).score(rows.features[:5]).shape == (5,)


def test_same_seed_same_model(tmp_path: Path) -> None:
    from rich.console import Console

    from riskstream.scoring import load_model
    from riskstream.training.train import train_on_rows

    rows = synthetic_fraud_rows(n=2000)
    first = train_on_rows(rows, quick_request(tmp_path / "a"), Console(quiet=True))
    second = train_on_rows(rows, quick_request(tmp_path / "b"), Console(quiet=True))
    a = load_model(first.version_dir).score(rows.features)
    b = load_model(second.version_dir).score(rows.features)
    np.testing.assert_array_equal(a, b)


def test_parity_check_refuses_a_tampered_model(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from riskstream.training import export, models

    rows = synthetic_fraud_rows(n=500)
    models.seed_everything(0)
    model = models.build_model(rows.features, models.ModelConfig(hidden_units=(8,)))
    path = tmp_path / "model.onnx"
    export.export_onnx(model, rows.features.shape[1], path)
    keras_scores = models.predict(model, rows.features)
    assert export.check_parity(keras_scores, path, rows.features) <= 1e-5

    graph_model = onnx.load(str(path))
    largest = max(graph_model.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(largest).copy()
    values.flat[0] += 0.5
    largest.CopyFrom(numpy_helper.from_array(values, largest.name))
    onnx.save(graph_model, str(path))
    with pytest.raises(export.ParityError, match="not faithful"):
        export.check_parity(keras_scores, path, rows.features)
    path.write_bytes(b"garbage")
    with pytest.raises(export.ParityError, match="cannot run"):
        export.check_parity(keras_scores, path, rows.features)


def test_training_publishes_nothing_when_parity_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from riskstream.training import export
    from riskstream.training.train import train_on_rows

    real_export = export.export_onnx

    def export_then_tamper(model: object, n_features: int, path: Path) -> None:
        real_export(model, n_features, path)
        import onnx
        from onnx import helper

        graph_model = onnx.load(str(path))
        # Double every score: wrong by up to 1, but still a valid, loadable graph.
        graph = graph_model.graph
        producer = next(node for node in graph.node if "score" in node.output)
        producer.output[:] = ["score_raw" if name == "score" else name for name in producer.output]
        graph.node.append(helper.make_node("Add", ["score_raw", "score_raw"], ["score"]))
        onnx.save(graph_model, str(path))

    monkeypatch.setattr(export, "export_onnx", export_then_tamper)
    with pytest.raises(export.ParityError):
        train_on_rows(synthetic_fraud_rows(n=1500), quick_request(tmp_path), Console(quiet=True))
    assert list((tmp_path / "fraud").iterdir()) == []  # staging removed, no version published


def test_publish_bumps_a_taken_version(tmp_path: Path) -> None:
    from riskstream.training import export

    (tmp_path / "fraud" / "20240101T000000Z").mkdir(parents=True)
    staging = export.staging_dir(tmp_path, "fraud")
    (staging / "model.onnx").write_bytes(b"x")
    target = export.publish(staging, tmp_path, "fraud", {"version": "20240101T000000Z"})
    assert target.name == "20240101T000001Z"
    assert json.loads((target / "card.json").read_text())["version"] == "20240101T000001Z"


def write_transactions_csv(path: Path, days: int = 40, seed: int = 0) -> None:
    """Our own CSV format: ~90 transactions a day; fraud = big amounts at two terminals."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 3, 1, tzinfo=UTC).timestamp()
    n = days * 90
    stamps = np.sort(rng.uniform(0, days * DAY, n)) + start
    customers = rng.integers(0, 60, n)
    terminals = rng.integers(0, 40, n)
    amounts = np.round(rng.gamma(2.0, 30.0, n), 2)
    fraud = ((amounts > 150) | ((terminals < 2) & (rng.random(n) < 0.5))).astype(int)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "transaction_id",
                "timestamp",
                "customer_id",
                "terminal_id",
                "amount",
                "currency",
                "fraud",
            ]
        )
        for i in range(n):
            moment = datetime.fromtimestamp(stamps[i], tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            writer.writerow(
                [
                    f"t{i}",
                    moment,
                    f"c{customers[i]}",
                    f"m{terminals[i]}",
                    amounts[i],
                    "EUR",
                    fraud[i],
                ]
            )


def test_train_and_evaluate_cli_end_to_end(tmp_path: Path) -> None:
    from riskstream.training.train import train_command

    data = tmp_path / "tx.csv"
    write_transactions_csv(data)
    runner = CliRunner()
    trained = runner.invoke(
        train_command,
        [
            "fraud",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "models"),
            "--epochs",
            "3",
            "--batch-size",
            "128",
            "--seed",
            "3",
        ],
    )
    assert trained.exit_code == 0, trained.output
    (version,) = (tmp_path / "models" / "fraud").iterdir()
    card = json.loads((version / "card.json").read_text())
    # Default window: from the first day to the last day minus the 7-day label delay.
    assert card["training_window"] == {"from": "2024-03-01", "to": "2024-04-02"}

    # evaluate runs in a fresh interpreter so we can check TensorFlow never gets imported.
    scores_out = tmp_path / "scores.csv"
    arguments = [
        *("--model", str(tmp_path / "models" / "fraud"), "--data", str(data)),
        *("--from", "2024-04-03", "--scores-out", str(scores_out)),
    ]
    program = (
        "import sys\n"
        "from riskstream.training.evaluate import evaluate_command\n"
        "try:\n"
        f"    evaluate_command.main({arguments!r})\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "fraud" and result["version"] == version.name
    assert result["window"] == {"from": "2024-04-03", "to": "2024-04-09"}
    assert result["rows_scored"] > 500
    assert (
        result["rows_evaluated"] + result["protocol"]["rows_dropped_known_compromised"]
        == (result["rows_scored"])
    )
    assert 0.5 < result["roc_auc"] <= 1 and 0 < result["average_precision"] <= 1
    assert 0 <= result["card_precision_top_100"] <= 1
    with scores_out.open() as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["event_id", "score"]
    assert len(lines) - 1 == result["rows_scored"]
    assert all(0.0 <= float(score) <= 1.0 for _, score in lines[1:])


def test_evaluate_reports_a_broken_model_clearly(tmp_path: Path) -> None:
    from riskstream.training.evaluate import evaluate_command

    data = tmp_path / "tx.csv"
    write_transactions_csv(data, days=3)
    (tmp_path / "fraud").mkdir()
    result = CliRunner().invoke(
        evaluate_command, ["--model", str(tmp_path / "fraud"), "--data", str(data)]
    )
    assert result.exit_code != 0
    assert "riskstream train fraud" in result.output


def test_known_compromised_follows_the_handbook_rule() -> None:
    from riskstream.training.evaluate import known_compromised_mask

    day0 = date(2024, 1, 1)
    base = datetime(2024, 1, 1, 12, tzinfo=UTC).timestamp()
    # customer a: fraud on day 0 -> known from day 0 + 7 + 1 = day 8 on.
    # customer b: fraud on day 5 -> known from day 13; customer c: never.
    days = np.array([0, 5, 7, 8, 8, 12, 13, 13])
    customers = np.array(["a", "b", "a", "a", "b", "b", "b", "c"], dtype=object)
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0], dtype=np.int8)
    n = days.size
    rows = LabeledRows(
        name="fraud",
        feature_names=("x",),
        features=np.zeros((n, 1), np.float32),
        labels=labels,
        timestamps=base + days * DAY,
        event_ids=np.array([f"t{i}" for i in range(n)], dtype=object),
        entity_ids=customers,
        labelled=np.ones(n, bool),
        start=day0,
        end=date(2024, 1, 14),
        source_sha256="",
    )
    window = days >= 7
    known = known_compromised_mask(rows, window, day0, label_delay_days=7)
    assert known.tolist() == [False, False, False, True, False, False, True, False]
    # Frauds before --known-since do not count.
    later = known_compromised_mask(rows, window, date(2024, 1, 2), label_delay_days=7)
    assert later.tolist() == [False, False, False, False, False, False, True, False]


MARKET_BARS = 400  # past the 250-bar feature warm-up


def write_market_csvs(folder: Path, bars: int = MARKET_BARS) -> tuple[Path, Path]:
    rng = np.random.default_rng(5)
    days = np.arange(np.datetime64("2020-01-01"), np.datetime64("2020-01-01") + bars)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, bars)))
    vix = 15 + 5 * rng.random(bars)
    market, volatility = folder / "IDX.csv", folder / "VIX.csv"
    for path, values in ((market, close), (volatility, vix)):
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["date", "open", "high", "low", "close", "volume", "adjclose"])
            for day, value in zip(days.astype(str), values, strict=True):
                writer.writerow([day, value, value * 1.01, value * 0.99, value, 1000, value])
    return market, volatility


def test_market_rows_skip_warmup_and_unknown_futures(tmp_path: Path) -> None:
    from riskstream.features.market import WARMUP_BARS
    from riskstream.training.datasets import market_rows

    market, vix = write_market_csvs(tmp_path)
    training = market_rows(market, vix, None, None)
    assert len(training) == MARKET_BARS - WARMUP_BARS - 20
    assert training.labelled.all()
    scoring = market_rows(market, vix, None, None, require_labels=False)
    assert len(scoring) == MARKET_BARS - WARMUP_BARS
    assert int((~scoring.labelled).sum()) == 20
    assert scoring.event_ids[0] == f"IDX:{np.datetime64('2020-01-01') + WARMUP_BARS}"
    assert set(scoring.entity_ids) == {"IDX"}


def test_evaluate_market_end_to_end_without_tensorflow(tmp_path: Path) -> None:
    from test_scoring import card_for, logistic_onnx, write_model

    from riskstream.features.market import FEATURE_NAMES, WARMUP_BARS
    from riskstream.training.evaluate import evaluate_command

    market, vix = write_market_csvs(tmp_path)
    weights = np.zeros(len(FEATURE_NAMES), np.float32)
    weights[FEATURE_NAMES.index("realized_vol_20d")] = 5.0
    write_model(
        tmp_path / "models",
        name="market",
        card=card_for("market", "20240101T000000Z", tuple(FEATURE_NAMES)),
        onnx_bytes=logistic_onnx(weights, -1.0),
    )
    scores_out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        evaluate_command,
        [
            *("--model", str(tmp_path / "models" / "market"), "--data", str(market)),
            *("--vix", str(vix), "--scores-out", str(scores_out)),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"] == "market"
    assert report["rows_scored"] == MARKET_BARS - WARMUP_BARS
    assert report["rows_unlabelled"] == 20
    assert report["rows_evaluated"] == MARKET_BARS - WARMUP_BARS - 20
    assert "card_precision_top_100" not in report
    with scores_out.open() as handle:
        lines = list(csv.reader(handle))
    assert len(lines) - 1 == report["rows_scored"]
    assert lines[-1][0] == f"IDX:{np.datetime64('2020-01-01') + MARKET_BARS - 1}"


def test_threshold_rules_and_severity_bands() -> None:
    from riskstream.training.card import choose_threshold, parse_threshold_rule, severity_bands

    labels = np.array([0] * 90 + [1] * 10)
    scores = np.linspace(0.0, 0.99, 100)
    threshold, text = choose_threshold("max-f1", labels, scores)
    assert threshold == pytest.approx(0.9) and text.startswith("max-f1")
    threshold, text = choose_threshold("top:0.2", labels, scores)
    assert np.mean(scores >= threshold) == pytest.approx(0.2, abs=0.011)
    assert "precision 0.5" in text
    threshold, _ = choose_threshold("precision:0.5", labels, scores)
    assert threshold == pytest.approx(0.8)  # 20 alerts, 10 of them positive
    for bad in ("top:0", "precision:2", "f1"):
        with pytest.raises(ValueError):
            parse_threshold_rule(bad)
    bands = severity_bands(0.9, scores)
    assert [b["severity"] for b in bands] == ["medium", "high", "critical"]
    assert bands[0]["min_score"] == 0.9 <= bands[1]["min_score"] <= bands[2]["min_score"]
