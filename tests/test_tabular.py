"""Tabular models: the record encoder the stream and training share (and the dead-letter codes
it raises), schema inference and splits, and `train tabular` → `evaluate` end to end on a
generated table of mixed types with missing values and a category seen only at serving time."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from riskstream.features.tabular import (
    ERROR_CODES,
    UNSEEN_INDEX,
    ColumnSpec,
    TabularInputError,
    TabularSchema,
    schema_from_card,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FREMTPL2 = SHARED_DATA / "insurance-fremtpl2"

SCHEMA = TabularSchema(
    (
        ColumnSpec("income", "numeric", nullable=True, minimum=0.0, maximum=1e5),
        ColumnSpec("late", "numeric", nullable=False, minimum=0.0, maximum=98.0),
        ColumnSpec("region", "categorical", nullable=True, categories=("east", "north")),
        ColumnSpec("power", "categorical", nullable=False, categories=("4", "5", "5.5")),
    )
)


def test_records_and_columns_encode_to_the_same_rows() -> None:
    records = [
        {"income": 1200.5, "late": 0, "region": "north", "power": 5},
        {"income": None, "late": 98, "region": None, "power": "5.5", "extra": [1]},
        {"income": 3.0, "late": 2.0, "region": "mars", "power": 4.0},
    ]
    rows = SCHEMA.encode_records(records)
    assert rows.dtype == np.float32 and rows.shape == (3, 4)
    np.testing.assert_array_equal(rows[0], [1200.5, 0, 2, 2])
    assert math.isnan(rows[1, 0]) and rows[1, 2] == UNSEEN_INDEX and rows[1, 3] == 3
    assert rows[2, 2] == UNSEEN_INDEX  # an unseen category falls back to bucket 0
    assert rows[2, 3] == 1  # 4.0 matches the category "4"
    columns = {
        "income": np.array([1200.5, np.nan, 3.0]),
        "late": np.array([0.0, 98.0, 2.0]),
        "region": ["north", None, "mars"],
        "power": ["5", "5.5", "4"],
    }
    np.testing.assert_array_equal(SCHEMA.encode_columns(columns), rows)
    assert SCHEMA.unseen_columns(records[2]) == ("region",)
    assert SCHEMA.unseen_columns(records[1]) == ()  # missing is not unseen


@pytest.mark.parametrize(
    ("record", "code", "column"),
    [
        ([1, 2], "not_object", None),
        ({"income": 1.0, "region": "east", "power": "4"}, "missing_feature", "late"),
        ({"income": 1.0, "late": None, "region": "east", "power": "4"}, "null_feature", "late"),
        ({"income": 1.0, "late": 0, "region": "east", "power": None}, "null_feature", "power"),
        ({"income": "1200", "late": 0, "region": "east", "power": "4"}, "wrong_type", "income"),
        ({"income": 1.0, "late": True, "region": "east", "power": "4"}, "wrong_type", "late"),
        ({"income": 1.0, "late": 0, "region": ["east"], "power": "4"}, "wrong_type", "region"),
        ({"income": 1.0, "late": 0, "region": False, "power": "4"}, "wrong_type", "region"),
        (
            {"income": math.inf, "late": 0, "region": "east", "power": "4"},
            "non_finite_number",
            "income",
        ),
    ],
)
def test_bad_records_raise_stable_codes(record: object, code: str, column: str | None) -> None:
    with pytest.raises(TabularInputError) as caught:
        SCHEMA.encode_record(record)
    assert caught.value.code == code and caught.value.column == column
    assert code in ERROR_CODES and str(caught.value).startswith(code)
    good = {"income": 1.0, "late": 0, "region": "east", "power": "4"}
    with pytest.raises(TabularInputError) as in_batch:
        SCHEMA.encode_records([good, good, record])
    assert in_batch.value.code == code and in_batch.value.row == 2


def test_column_wise_encoding_names_the_bad_row() -> None:
    columns = {"income": np.array([1.0, 2.0]), "late": np.array([0.0, np.nan])}
    columns |= {"region": ["east", "north"], "power": ["4", "5"]}
    with pytest.raises(TabularInputError) as caught:
        SCHEMA.encode_columns(columns)
    assert (caught.value.code, caught.value.column, caught.value.row) == ("null_feature", "late", 1)


def test_schema_round_trips_and_rejects_what_it_cannot_serve() -> None:
    card = {"kind": "tabular", "input_schema": SCHEMA.to_dict()}
    assert schema_from_card(card) == SCHEMA
    newer = json.loads(json.dumps(card))
    newer["input_schema"]["columns"][0]["type"] = "timestamp"
    with pytest.raises(TabularInputError) as caught:
        schema_from_card(newer)
    assert caught.value.code == "unknown_column_type" and caught.value.column == "income"
    duplicate = json.loads(json.dumps(card))
    duplicate["input_schema"]["columns"][1]["name"] = "income"
    with pytest.raises(TabularInputError, match="distinct") as caught:
        schema_from_card(duplicate)
    assert caught.value.code == "bad_schema"
    with pytest.raises(TabularInputError) as caught:
        schema_from_card({"kind": "tabular"})
    assert caught.value.code == "bad_schema"


def test_poisson_deviance_matches_the_formula() -> None:
    from riskstream.training.metrics import poisson_deviance

    counts = np.array([0.0, 1.0, 2.0, 0.0])
    expected = np.array([0.1, 0.5, 1.0, 0.3])
    by_hand = 2 / 4 * (0.1 + (0.5 - 1 + math.log(2)) + (1 - 2 + 2 * math.log(2)) + 0.3)
    assert poisson_deviance(counts, expected) == pytest.approx(by_hand)
    assert poisson_deviance(np.array([1.0, 3.0]), np.array([1.0, 3.0])) == pytest.approx(0.0)


LABEL = "defaulted"


def write_loans(path: Path, n: int, seed: int, regions: tuple[str, ...]) -> None:
    """A table riskstream has never seen: an id, a numeric column with missing values, a
    heavy-tailed one, a count with a 98 sentinel, two string categories (one with missing
    values); the label follows a planted rule."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["applicant", "income", "utilisation", "late", "region", "housing", LABEL])
        for i in range(n):
            income = "NA" if rng.random() < 0.15 else f"{rng.lognormal(8, 0.6):.2f}"
            utilisation = rng.lognormal(-1, 1.5)
            late = 98 if rng.random() < 0.01 else int(rng.poisson(0.4))
            region = "" if rng.random() < 0.05 else str(rng.choice(regions))
            housing = str(rng.choice(["own", "rent", "other"]))
            logit = -2.5 + 1.5 * math.log1p(utilisation) + 0.8 * min(late, 5)
            logit += 1.2 * (region == "north") + 0.7 * (income == "NA")
            label = int(rng.random() < 1 / (1 + math.exp(-logit)))
            writer.writerow([f"a{i}", income, f"{utilisation:.4f}", late, region, housing, label])


def producer_records(path: Path, schema: TabularSchema) -> tuple[list[str], list[dict]]:
    """The CSV's rows as JSON records a producer would send: numbers, strings, null."""
    kinds = {column.name: column.kind for column in schema.columns}
    ids, records = [], []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            ids.append(row["applicant"])
            record: dict[str, object] = {}
            for name, kind in kinds.items():
                text = row[name]
                if text in ("", "NA"):
                    record[name] = None
                else:
                    record[name] = float(text) if kind == "numeric" else text
            records.append(record)
    return ids, records


def run_without_tensorflow(command: str, arguments: list[str]) -> subprocess.CompletedProcess:
    program = (
        "import sys\n"
        f"from riskstream.training.evaluate import {command}\n"
        "try:\n"
        f"    {command}.main({arguments!r})\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )


def test_a_new_table_trains_and_serves_with_only_data_label_name(tmp_path: Path) -> None:
    from riskstream.scoring import load_model
    from riskstream.training.export import onnx_scores
    from riskstream.training.train import train_command

    data, serving = tmp_path / "loans.csv", tmp_path / "serving.csv"
    write_loans(data, 3000, seed=1, regions=("north", "south", "east", "west"))
    write_loans(serving, 400, seed=2, regions=("north", "south", "central"))  # central: unseen
    models = tmp_path / "models"
    # Only --data, --label and --name (plus --epochs to keep the test quick); the models
    # folder comes from the environment as in production.
    trained = CliRunner(env={"RISKSTREAM_MODELS_DIR": str(models)}).invoke(
        train_command,
        ["tabular", "--data", str(data), "--label", LABEL, "--name", "loans", "--epochs", "4"],
    )
    assert trained.exit_code == 0, trained.output
    (version,) = (models / "loans").iterdir()
    assert sorted(p.name for p in version.iterdir()) == ["card.json", "model.onnx"]
    card = json.loads((version / "card.json").read_text())
    assert (card["kind"], card["task"], card["name"]) == ("tabular", "binary", "loans")
    columns = {c["name"]: c for c in card["input_schema"]["columns"]}
    # The id and the label are not features; types, categories and missingness as generated.
    assert list(columns) == ["income", "utilisation", "late", "region", "housing"]
    assert card["features"] == list(columns)
    assert [columns[n]["type"] for n in columns] == ["numeric"] * 3 + ["categorical"] * 2
    assert columns["region"]["categories"] == ["east", "north", "south", "west"]
    assert columns["housing"]["categories"] == ["other", "own", "rent"]
    assert (columns["income"]["nullable"], columns["region"]["nullable"]) == (True, True)
    assert (columns["utilisation"]["nullable"], columns["housing"]["nullable"]) == (False, False)
    assert columns["late"]["max"] == 98.0 and columns["late"]["min"] == 0.0
    assert card["table"]["id_column"] == "applicant"  # distinct text on every row: the id
    assert card["metrics"]["onnx_parity_max_abs_diff"] <= 1e-5
    assert card["metrics"]["validation"]["roc_auc"] > 0.7, "it did not learn the planted rule"
    assert 0 < card["threshold"] < 1 and card["threshold_rule"].startswith("max-f1")
    assert len(card["data_fingerprint"]["features_and_labels_sha256"]) == 64

    schema = schema_from_card(card)
    samples = card["samples"]
    assert any(value is None for sample in samples for value in sample["features"].values())
    assert samples[-1]["features"]["region"] == samples[-1]["features"]["housing"]
    sample_rows = schema.encode_records([sample["features"] for sample in samples])
    np.testing.assert_allclose(
        onnx_scores(version / "model.onnx", sample_rows),
        [sample["score"] for sample in samples],
        atol=1e-6,
    )

    # Serving-time file with a region never seen in training: evaluate (no TensorFlow).
    scores_out = tmp_path / "scores.csv"
    done = run_without_tensorflow(
        "evaluate_command",
        [
            *("--model", str(models / "loans"), "--data", str(serving)),
            *("--scores-out", str(scores_out)),
        ],
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["model"], report["rows_scored"], report["task"]) == ("loans", 400, "binary")
    assert 0.5 < report["roc_auc"] <= 1
    with scores_out.open() as handle:
        written = list(csv.reader(handle))
    assert written[0] == ["event_id", "score"]
    ids, records = producer_records(serving, schema)
    assert [row[0] for row in written[1:]] == ids
    assert any(record["region"] == "central" for record in records)
    expected = onnx_scores(version / "model.onnx", schema.encode_records(records))
    np.testing.assert_allclose([float(row[1]) for row in written[1:]], expected, atol=1e-5)

    # The worker's loader takes the model; reasons name schema columns.
    model = load_model(version)
    reasons = model.explain(schema.encode_records(records[:2]))
    assert all(reason.feature in schema.names for reason in reasons[0])


def write_claims(path: Path, n: int = 4000, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["policy", "claims", "years", "age", "zone"])
        for i in range(n):
            years = round(float(rng.uniform(0.05, 1.3)), 3)
            age = int(rng.integers(18, 90))
            zone = str(rng.choice(["A", "B", "C"]))
            rate = 0.1 * (2.0 if age < 25 else 1.0) * (1.8 if zone == "C" else 1.0)
            writer.writerow([f"p{i}", int(rng.poisson(rate * min(years, 1.0))), years, age, zone])


def test_claim_frequency_model_outputs_lambda_per_unit_exposure(tmp_path: Path) -> None:
    from riskstream.training.metrics import poisson_deviance
    from riskstream.training.train import train_command

    data = tmp_path / "claims.csv"
    write_claims(data)
    test_rows = tmp_path / "test-rows.txt"
    test_rows.write_text("# held out\n" + "\n".join(str(i) for i in range(1, 4001, 10)) + "\n")
    models = tmp_path / "models"
    trained = CliRunner().invoke(
        train_command,
        [
            *("tabular", "--data", str(data), "--label", "claims", "--name", "claims"),
            *("--task", "poisson", "--exposure", "years", "--id", "policy"),
            *("--max-exposure", "1", "--test-rows", str(test_rows), "--out", str(models)),
            *("--epochs", "4"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    (version,) = (models / "claims").iterdir()
    card = json.loads((version / "card.json").read_text())
    assert card["task"] == "poisson" and card["features"] == ["age", "zone"]
    assert card["training"]["test_split"]["rows"] == 400
    assert card["metrics"]["test"]["rows"] == 400
    assert card["threshold_rule"].startswith("top:0.1")
    fitted = card["metrics"]["training"]  # balanced: expected claims = observed claims
    assert fitted["mean_predicted_count"] * fitted["rows"] == pytest.approx(
        fitted["total_count"], rel=1e-3
    )

    scores_out = tmp_path / "scores.csv"
    done = run_without_tensorflow(
        "evaluate_command",
        [
            *("--model", str(version), "--data", str(data), "--test-rows", str(test_rows)),
            *("--scores-out", str(scores_out)),
        ],
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rows_scored"] == 400
    # The card's figure came from Keras, this one from onnxruntime (parity ≤ 1e-5).
    in_card = card["metrics"]["test"]["poisson_deviance_1e-2"]
    assert report["poisson_deviance_1e-2"] == pytest.approx(in_card, abs=1e-4)
    with scores_out.open() as handle:
        written = list(csv.DictReader(handle))
    assert written[0]["event_id"] == "p0"
    lam = np.array([float(row["score"]) for row in written])
    with data.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[::10]
    counts = np.array([float(row["claims"]) for row in rows])
    exposure = np.minimum([float(row["years"]) for row in rows], 1.0)
    # λ is a frequency per year (about 0.1–0.4 here), not a probability of a claim this row.
    assert 0.05 < float(np.median(lam)) < 0.5
    deviance = 100 * poisson_deviance(counts, lam * exposure)
    assert report["poisson_deviance_1e-2"] == pytest.approx(deviance, abs=1e-3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--label", "nope"], "--label nope: no such column"),
        (["--label", "late"], "--task binary needs 0/1 labels"),
        (["--label", "income", "--task", "poisson"], "negative count"),
        (["--label", LABEL, "--exposure", "late"], "--exposure is for --task poisson"),
        (["--label", LABEL, "--name", "fraud"], "not fraud or market"),
    ],
)
def test_training_errors_say_what_to_do(tmp_path: Path, options: list[str], message: str) -> None:
    from riskstream.training.train import train_command

    data = tmp_path / "t.csv"
    data.write_text(f"income,late,{LABEL}\n1.5,0,0\n-2,3,1\n4,98,0\n")
    name = [] if "--name" in options else ["--name", "t"]
    result = CliRunner().invoke(
        train_command, ["tabular", "--data", str(data), *name, "--out", str(tmp_path), *options]
    )
    assert result.exit_code != 0
    assert message in result.output


def test_schema_inference_overrides_and_row_names(tmp_path: Path) -> None:
    import gzip

    from riskstream.training.tabular_data import TableSpec, prepare_training_table

    path = tmp_path / "t.csv.gz"
    lines = [",y,code,score,kind"]  # an unnamed first column: R/pandas row names
    rng = np.random.default_rng(0)
    for i in range(200):
        lines.append(f"{i + 1},{i % 2},{rng.integers(1, 4)},{rng.normal():.3f},{'ab'[i % 2]}")
    with gzip.open(path, "wt", newline="") as handle:
        handle.write("\r\n".join(lines) + "\r\n")
    prepared = prepare_training_table(path, TableSpec(label="y", categorical=("code",)))
    schema = prepared.rows.schema
    assert schema.names == ("code", "score", "kind")
    assert [c.kind for c in schema.columns] == ["categorical", "numeric", "categorical"]
    assert schema.columns[0].categories == ("1", "2", "3")
    assert prepared.spec.id_column == "unnamed_1" and prepared.rows.event_ids[0] == "1"
    assert (
        prepared.is_validation.sum() == 40 and not (prepared.is_fit & prepared.is_validation).any()
    )


def test_row_position_files_are_checked(tmp_path: Path) -> None:
    from riskstream.training.tabular_data import TableError, read_row_positions

    listed = tmp_path / "rows.txt"
    listed.write_text("# comment\n2\n\n4\n")
    assert read_row_positions(listed, 5).tolist() == [False, True, False, True, False]
    listed.write_text("2\n9\n")
    with pytest.raises(TableError, match="rows 1…5"):
        read_row_positions(listed, 5)
    listed.write_text("2\n2\n")
    with pytest.raises(TableError, match="more than once"):
        read_row_positions(listed, 5)


@pytest.mark.slow
def test_fremtpl2_split_reproduces_the_published_constant_model() -> None:
    """The published split, caps and loss: λ = claims / exposure of the learning set gives the
    papers' 32.93518 (learning) and 33.86149 (test)."""
    data, listed = FREMTPL2 / "freMTPL2freq.csv.gz", FREMTPL2 / "test-rows.txt"
    if not (data.exists() and listed.exists()):
        pytest.skip(f"freMTPL2 is not under {FREMTPL2}")
    from riskstream.training.metrics import poisson_deviance
    from riskstream.training.tabular_data import (
        TableSpec,
        parse_exposure,
        parse_labels,
        read_csv,
        read_row_positions,
    )

    table = read_csv(data)
    spec = TableSpec(
        label="ClaimNb", task="poisson", exposure_column="Exposure", max_label=4, max_exposure=1
    )
    counts, exposure = parse_labels(table, spec), parse_exposure(table, spec)
    test = read_row_positions(listed, table.n_rows)
    assert (table.n_rows, int(test.sum())) == (678_013, 67_801)
    frequency = counts[~test].sum() / exposure[~test].sum()
    learning = 100 * poisson_deviance(counts[~test], frequency * exposure[~test])
    held_out = 100 * poisson_deviance(counts[test], frequency * exposure[test])
    assert (round(learning, 5), round(held_out, 5)) == (32.93518, 33.86149)
