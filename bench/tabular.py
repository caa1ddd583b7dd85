"""Tabular models against published results and baselines on the same folds (not a test).

    .venv/bin/python bench/tabular.py credit      # Give Me Some Credit, 3-fold CV × 3 repeats
    .venv/bin/python bench/tabular.py fremtpl2    # freMTPL2 on the published split

Pin it to one core on a shared machine (TensorFlow and LightGBM are also told to use one
thread here):

    taskset -c 1 env OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \\
        .venv/bin/python bench/tabular.py credit

riskstream goes through the CLI itself (`riskstream train tabular` then `riskstream
evaluate`, invoked in-process with click so TensorFlow loads once): what is measured is what a
user gets. Baselines (development dependencies only): logistic regression (scikit-learn:
median imputation with missing indicators, one-hot categories, standardisation, max_iter 1000
so lbfgs converges; otherwise defaults) and LightGBM with its default settings.

Protocols, written down:
- credit: for repeat r in --repeats (default 0, 1, 2), StratifiedKFold(n_splits=3,
  shuffle=True, random_state=r) over the file's rows in file order; each fold's test rows go
  to `train tabular --test-rows` (never fitted, never used for early stopping) with --seed r,
  and `evaluate --test-rows` measures ROC AUC through onnxruntime. LightGBM gets
  random_state=r.
- fremtpl2: the published split (test-rows.txt), ClaimNb capped at 4, Exposure at 1;
  `train tabular --task poisson --exposure Exposure` per seed; learning and test deviance
  from `evaluate` (learning = the 610,212 other rows). "Any claim" (ClaimNb > 0) as a binary
  task on the same split, Exposure (capped) a feature, for riskstream (a derived CSV through the
  same CLI), logistic regression and LightGBM; LightGBM's Poisson objective with a
  log-exposure offset (init_score) as a deviance reference.
- --tune: the same runs, but scored on an inner hold-out carved from the training rows only
  (credit: a seeded quarter of repeat 0 / fold 0's training rows; fremtpl2: a seeded tenth
  of the learning rows), the outer test rows held out as well. This is how defaults were
  chosen; the test rows never were.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from machine import describe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CREDIT = DATA / "credit-give-me-some-credit" / "cs-training.csv.gz"
CREDIT_LABEL = "SeriousDlqin2yrs"
FREMTPL2 = DATA / "insurance-fremtpl2" / "freMTPL2freq.csv.gz"
FREMTPL2_TEST = DATA / "insurance-fremtpl2" / "test-rows.txt"
FREMTPL2_CATEGORIES = ["Area", "VehBrand", "VehGas", "Region"]
FREMTPL2_NUMBERS = ["VehPower", "VehAge", "DrivAge", "BonusMalus", "Density"]
PUBLISHED_CREDIT = {"MLP (AutoGluon), tuned": 0.8669, "LightGBM, default": 0.8692}
PUBLISHED_FREMTPL2 = {  # learning, test (Schelldorfer & Wüthrich 2019)
    "GLM2": (31.25674, 32.14902),
    "network, one-hot (20,15,10)": (30.26768, 31.67343),
    "network, embeddings d=2": (30.16513, 31.45327),
}


def one_thread() -> None:
    """The machine is shared: TensorFlow on one thread each way (before any TF op)."""
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def write_rows(path: Path, positions: np.ndarray) -> Path:
    """0-based positions → the 1-based row file `--test-rows` reads."""
    path.write_text("\n".join(str(int(i) + 1) for i in np.sort(positions)) + "\n")
    return path


def cli(command: Any, arguments: list[str]) -> str:
    """Run a riskstream click command in-process; its stdout, or an error with its output."""
    from click.testing import CliRunner

    result = CliRunner().invoke(command, arguments, catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"{command.name} {shlex.join(arguments)} failed:\n{result.output}")
    return result.stdout


@dataclass
class RiskstreamRun:
    version_dir: Path
    card: dict[str, Any]
    train_seconds: float


def train(arguments: list[str], out: Path) -> RiskstreamRun:
    from riskstream.training.train import train_command

    started = time.perf_counter()
    cli(train_command, ["tabular", *arguments, "--out", str(out)])
    seconds = time.perf_counter() - started
    name = arguments[arguments.index("--name") + 1]
    version_dir = max((out / name).iterdir())
    card = json.loads((version_dir / "card.json").read_text())
    return RiskstreamRun(version_dir, card, seconds)


def evaluate(version_dir: Path, data: Path, rows: Path) -> dict[str, Any]:
    from riskstream.training.evaluate import evaluate_command

    output = cli(
        evaluate_command,
        ["--model", str(version_dir), "--data", str(data), "--test-rows", str(rows)],
    )
    return json.loads(output.strip().splitlines()[-1])


def summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(array.mean()), 5),
        "std": round(float(array.std(ddof=1)), 5) if array.size > 1 else 0.0,
        "min": round(float(array.min()), 5),
        "max": round(float(array.max()), 5),
        "n": int(array.size),
    }


# ---------------------------------------------------------------------------------- baselines


def logistic_regression(categorical: list[str], numeric: list[str], seed: int) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer(
        [
            (
                "numeric",
                make_pipeline(
                    SimpleImputer(strategy="median", add_indicator=True), StandardScaler()
                ),
                numeric,
            ),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    return make_pipeline(columns, LogisticRegression(max_iter=1000, random_state=seed))


def quantile_logistic_regression(categorical: list[str], numeric: list[str], seed: int) -> Any:
    """Logistic regression on normal-quantile-transformed numbers: a linear model cannot use
    heavy-tailed raw values (credit utilisation in the thousands) at all."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, QuantileTransformer

    quantiles = QuantileTransformer(output_distribution="normal", random_state=seed)
    columns = ColumnTransformer(
        [
            (
                "numeric",
                make_pipeline(SimpleImputer(strategy="median", add_indicator=True), quantiles),
                numeric,
            ),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    return make_pipeline(columns, LogisticRegression(max_iter=1000, random_state=seed))


def lightgbm_classifier(seed: int) -> Any:
    import lightgbm

    return lightgbm.LGBMClassifier(random_state=seed, n_jobs=1, verbose=-1)


def baseline_aucs(
    frame: Any,
    label: Any,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    categorical: list[str],
    numeric: list[str],
    seed: int,
) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    aucs = {}
    train_x, test_x = frame.iloc[train_rows], frame.iloc[test_rows]
    for name, model in (
        ("logistic regression", logistic_regression(categorical, numeric, seed)),
        (
            "logistic regression, quantile inputs",
            quantile_logistic_regression(categorical, numeric, seed),
        ),
        ("LightGBM (default)", lightgbm_classifier(seed)),
    ):
        model.fit(train_x, label[train_rows])
        aucs[name] = float(roc_auc_score(label[test_rows], model.predict_proba(test_x)[:, 1]))
    return aucs


# ------------------------------------------------------------------------------------ credit


def credit_riskstream(
    args: argparse.Namespace,
    work: Path,
    repeat: int,
    fold: int,
    held_out: np.ndarray,
    scored: np.ndarray,
) -> dict[str, Any]:
    """One fold through the CLI: train without the held-out rows, evaluate the scored ones."""
    rows_file = write_rows(work / f"credit-r{repeat}-f{fold}-held-out.txt", held_out)
    scored_file = write_rows(work / f"credit-r{repeat}-f{fold}-scored.txt", scored)
    options = ["--data", str(CREDIT), "--label", CREDIT_LABEL, "--name", "credit"]
    options += ["--test-rows", str(rows_file), "--seed", str(repeat), *args.flags]
    run = train(options, work / "models")
    measured = evaluate(run.version_dir, CREDIT, scored_file)
    return {
        "rows_scored": measured["rows_scored"],
        "riskstream": measured["roc_auc"],
        "riskstream_train_seconds": round(run.train_seconds, 1),
        "best_epoch": run.card["training"]["best_epoch"],
    }


def credit(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    frame = pd.read_csv(CREDIT, index_col=0)
    label = frame.pop(CREDIT_LABEL).to_numpy()
    numeric = list(frame.columns)
    folds = []
    for repeat in args.repeats:
        splitter = StratifiedKFold(n_splits=3, shuffle=True, random_state=repeat)
        for fold, (train_rows, test_rows) in enumerate(splitter.split(frame, label)):
            if args.tune and (repeat, fold) != (args.repeats[0], 0):
                continue
            scored = test_rows
            held_out = test_rows
            if args.tune:  # an inner quarter of the training rows; the outer test rows unused
                rng = np.random.default_rng(1000 + repeat)
                scored = np.sort(rng.permutation(train_rows)[: len(train_rows) // 4])
                held_out = np.concatenate([test_rows, scored])
                train_rows = np.setdiff1d(train_rows, scored)
            entry: dict[str, Any] = {"repeat": repeat, "fold": fold}
            if not args.baselines_only:
                entry |= credit_riskstream(args, work, repeat, fold, held_out, scored)
            if not args.no_baselines:
                entry |= baseline_aucs(frame, label, train_rows, scored, [], numeric, repeat)
            folds.append(entry)
            print(json.dumps(entry), flush=True)
    models = [
        "riskstream",
        "logistic regression",
        "logistic regression, quantile inputs",
        "LightGBM (default)",
    ]
    result = {m: summary([f[m] for f in folds]) for m in models if m in folds[0]}
    if "LightGBM (default)" in folds[0] and "riskstream" in folds[0]:
        result["riskstream - LightGBM"] = summary(
            [f["riskstream"] - f["LightGBM (default)"] for f in folds]
        )
    return {"folds": folds, "summary": result, "published": PUBLISHED_CREDIT}


# ---------------------------------------------------------------------------------- fremtpl2


def fremtpl2_frame() -> Any:
    import pandas as pd

    frame = pd.read_csv(FREMTPL2)
    frame["ClaimNb"] = frame["ClaimNb"].clip(upper=4)
    frame["Exposure"] = frame["Exposure"].clip(upper=1.0)
    return frame


def test_positions(n_rows: int) -> np.ndarray:
    from riskstream.training.tabular_data import read_row_positions

    return np.flatnonzero(read_row_positions(FREMTPL2_TEST, n_rows))


def any_claim_csv(frame: Any, path: Path) -> Path:
    """The binary task's table: AnyClaim instead of ClaimNb, Exposure (capped) a feature."""
    derived = frame.drop(columns=["ClaimNb"]).assign(AnyClaim=(frame["ClaimNb"] > 0).astype(int))
    with gzip.open(path, "wt", newline="") as handle:
        derived.to_csv(handle, index=False, quoting=csv.QUOTE_MINIMAL)
    return path


def lightgbm_poisson(frame: Any, learning: np.ndarray, test: np.ndarray) -> dict[str, float]:
    import lightgbm

    from riskstream.training.metrics import poisson_deviance

    x = frame[FREMTPL2_CATEGORIES + FREMTPL2_NUMBERS].copy()
    for column in FREMTPL2_CATEGORIES:
        x[column] = x[column].astype("category")
    counts, exposure = frame["ClaimNb"].to_numpy(float), frame["Exposure"].to_numpy(float)
    model = lightgbm.LGBMRegressor(objective="poisson", n_jobs=1, verbose=-1, random_state=0)
    model.fit(x.iloc[learning], counts[learning], init_score=np.log(exposure[learning]))
    frequency = model.predict(x)  # without init_score: λ per unit exposure
    return {
        part: 100 * poisson_deviance(counts[rows], frequency[rows] * exposure[rows])
        for part, rows in (("learning", learning), ("test", test))
    }


def fremtpl2_arguments(
    data: Path, label: str, name: str, held_out: Path, seed: int, options: list[str]
) -> list[str]:
    """`train tabular` arguments for a freMTPL2 model: both models (claim counts and any claim)
    name rows by IDpol and hold out the same rows, so their test figures are comparable."""
    return [
        *("--data", str(data), "--label", label, "--name", name, "--id", "IDpol"),
        *("--test-rows", str(held_out), "--seed", str(seed)),
        *options,
    ]


def fremtpl2(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    frame = fremtpl2_frame()
    n_rows = len(frame)
    test = test_positions(n_rows)
    learning = np.setdiff1d(np.arange(n_rows), test)
    held_out, scored_test, scored_learning = test, test, learning
    if args.tune:  # a seeded tenth of the learning rows plays the test set
        rng = np.random.default_rng(2000)
        scored_test = np.sort(rng.permutation(learning)[: len(learning) // 10])
        held_out = np.concatenate([test, scored_test])
        scored_learning = np.setdiff1d(learning, scored_test)
    held_out_file = write_rows(work / "fremtpl2-held-out.txt", held_out)
    test_file = write_rows(work / "fremtpl2-scored-test.txt", scored_test)
    learning_file = write_rows(work / "fremtpl2-scored-learning.txt", scored_learning)
    runs = []
    for seed in args.seeds:
        options = [
            *("--task", "poisson", "--exposure", "Exposure"),
            *("--max-label", "4", "--max-exposure", "1"),
            *args.flags,
        ]
        arguments = fremtpl2_arguments(FREMTPL2, "ClaimNb", "claims", held_out_file, seed, options)
        run = train(arguments, work / "models")
        on_test = evaluate(run.version_dir, FREMTPL2, test_file)
        on_learning = evaluate(run.version_dir, FREMTPL2, learning_file)
        entry = {
            "seed": seed,
            "learning_deviance": on_learning["poisson_deviance_1e-2"],
            "test_deviance": on_test["poisson_deviance_1e-2"],
            "test_any_claim_auc_of_expected_count": on_test["any_count_roc_auc"],
            "train_seconds": round(run.train_seconds, 1),
            "best_epoch": run.card["training"]["best_epoch"],
        }
        runs.append(entry)
        print(json.dumps(entry), flush=True)
    result: dict[str, Any] = {"poisson": runs}
    result["poisson_summary"] = {
        key: summary([r[key] for r in runs])
        for key in ("learning_deviance", "test_deviance", "test_any_claim_auc_of_expected_count")
    }
    if args.skip_any_claim:
        return result
    table = any_claim_csv(frame, work / "fremtpl2-any-claim.csv.gz")
    binary_runs = []
    for seed in args.binary_seeds:
        arguments = fremtpl2_arguments(
            table, "AnyClaim", "anyclaim", held_out_file, seed, args.binary_flags
        )
        run = train(arguments, work / "models")
        measured = evaluate(run.version_dir, table, test_file)
        entry = {
            "seed": seed,
            "test_auc": measured["roc_auc"],
            "train_seconds": round(run.train_seconds, 1),
        }
        binary_runs.append(entry)
        print(json.dumps(entry), flush=True)
    label = (frame["ClaimNb"] > 0).to_numpy(int)
    features = frame[[*FREMTPL2_CATEGORIES, *FREMTPL2_NUMBERS, "Exposure"]].copy()
    for column in FREMTPL2_CATEGORIES:
        features[column] = features[column].astype("category")
    result["any_claim"] = {
        "riskstream": binary_runs,
        "riskstream_summary": summary([r["test_auc"] for r in binary_runs]),
        **baseline_aucs(
            features,
            label,
            scored_learning,
            scored_test,
            FREMTPL2_CATEGORIES,
            [*FREMTPL2_NUMBERS, "Exposure"],
            0,
        ),
    }
    result["lightgbm_poisson_deviance"] = lightgbm_poisson(frame, scored_learning, scored_test)
    result["published"] = PUBLISHED_FREMTPL2
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=("credit", "fremtpl2"))
    parser.add_argument("--repeats", default="0,1,2", help="credit: CV repeat seeds")
    parser.add_argument("--seeds", default="0,1,2", help="fremtpl2: training seeds")
    parser.add_argument("--tune", action="store_true", help="score an inner hold-out instead")
    parser.add_argument("--flags", default="", help="extra `train tabular` options (tuning)")
    parser.add_argument("--binary-flags", default="", help="fremtpl2 any-claim: extra options")
    parser.add_argument("--binary-seeds", default="0", help="fremtpl2 any-claim: seeds")
    parser.add_argument("--skip-any-claim", action="store_true")
    parser.add_argument("--no-baselines", action="store_true", help="credit: riskstream only")
    parser.add_argument("--baselines-only", action="store_true", help="credit: no riskstream")
    parser.add_argument("--out", type=Path, help="write results.json here (default: print)")
    args = parser.parse_args()
    args.repeats = [int(s) for s in args.repeats.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.binary_seeds = [int(s) for s in args.binary_seeds.split(",")]
    args.flags = shlex.split(args.flags)
    args.binary_flags = shlex.split(args.binary_flags)
    one_thread()
    started, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="riskstream-tabular-bench-") as folder:
        run = credit if args.dataset == "credit" else fremtpl2
        result = run(args, Path(folder))
    report = {
        "dataset": args.dataset,
        "command": shlex.join(sys.argv),
        "tune": args.tune,
        "flags": args.flags,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "machine": describe(),
        "result": result,
    }
    text = json.dumps(report, indent=2, default=float)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
