"""`riskstream train tabular`: any labelled table → Keras → ONNX (parity-checked) → model card.

Split as the fraud trainer is: `prepare_training_table` (read, split, infer the input schema,
encode every row with the stream's encoder) and `train_on_table` (fit, export, check, publish),
so the benchmark can call exactly what the CLI calls.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from riskstream.features.tabular import NUMERIC, TabularSchema
from riskstream.training import cli_options, trainer
from riskstream.training.tabular_data import (
    MIN_CATEGORY_ROWS,
    PreparedTable,
    TableSpec,
    TabularRows,
    prepare_training_table,
)
from riskstream.training.trainer import TrainResult

RESERVED_NAMES = ("fraud", "market")  # served from windowed features, not from records
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
DEFAULT_THRESHOLD_RULES = {"binary": "max-f1", "poisson": "top:0.1"}
SAMPLE_ROWS = 8
UNSEEN_SAMPLE_VALUE = "__riskstream_unseen__"


@dataclass(frozen=True)
class TabularRequest:
    data: Path
    name: str
    spec: TableSpec
    out: Path
    test_rows: Path | None = None
    test_fraction: float = 0.0
    split_seed: int = 0
    seed: int = 0
    validation_fraction: float = 0.2
    min_category_rows: int = MIN_CATEGORY_ROWS
    threshold_rule: str | None = None  # None: DEFAULT_THRESHOLD_RULES[task]
    overrides: tuple[tuple[str, Any], ...] = ()


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or name in RESERVED_NAMES:
        raise ValueError(
            f"--name {name!r}: use lower-case letters, digits, - and _ (starting with a letter), "
            f"not {' or '.join(RESERVED_NAMES)}; it names the folder OUT/<name>/ and the model "
            "requests ask for"
        )
    return name


def prepare(request: TabularRequest, console: Console) -> PreparedTable:
    with console.status("loading") as status:
        return prepare_training_table(
            request.data,
            request.spec,
            test_rows=request.test_rows,
            test_fraction=request.test_fraction,
            split_seed=request.split_seed,
            validation_fraction=request.validation_fraction,
            seed=request.seed,
            min_category_rows=request.min_category_rows,
            status=lambda message: status.update(message + "…"),
        )


def part_metrics(task: str, rows: TabularRows, scores: np.ndarray) -> dict[str, Any]:
    """Binary: ROC AUC, average precision, log loss. Poisson: deviance in 10⁻² units of the
    counts against μ = λ · exposure, and the ROC AUC of μ for "at least one"."""
    from riskstream.training.metrics import (
        average_precision,
        log_loss,
        poisson_deviance,
        roc_auc,
    )

    labels = rows.labels
    if task == "poisson":
        expected = scores.astype(np.float64) * rows.exposure
        return {
            "rows": len(rows),
            "rows_with_counts": int((labels > 0).sum()),
            "total_count": float(labels.sum()),
            "total_exposure": round(float(rows.exposure.sum()), 6),
            "poisson_deviance_1e-2": _rounded(100 * poisson_deviance(labels, expected)),
            "mean_predicted_count": _rounded(float(expected.mean())),
            "any_count_roc_auc": _rounded(roc_auc(labels > 0, expected)),
        }
    return {
        "rows": len(rows),
        "positives": int(labels.sum()),
        "roc_auc": _rounded(roc_auc(labels, scores)),
        "average_precision": _rounded(average_precision(labels, scores)),
        "log_loss": _rounded(log_loss(labels, scores)),
    }


def _rounded(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def occlusion_baseline(schema: TabularSchema, features: np.ndarray) -> tuple[list, list]:
    """What `Model.explain` puts in a column's place: the median of a numeric column (its
    mean is meaningless for heavy tails and NaN with missing values), the most frequent index
    of a categorical one; and each numeric column's spread (0 for categorical)."""
    baseline, spread = [], []
    for j, column in enumerate(schema.columns):
        values = features[:, j]
        if column.kind == NUMERIC:
            present = values[~np.isnan(values)]
            baseline.append(float(np.median(present)) if present.size else 0.0)
            spread.append(float(present.std()) if present.size else 0.0)
        else:
            counts = np.bincount(values.astype(np.int64), minlength=len(column.categories) + 1)
            baseline.append(float(np.argmax(counts)))
            spread.append(0.0)
    return baseline, spread


def sample_records(prepared: PreparedTable, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """A few validation records (some with missing values when the table has them) and one
    with every category unseen: with their ONNX scores in the card they let a later hot-swap
    check that a loaded model and encoder still score as trained."""
    rows = prepared.rows
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(prepared.is_validation)
    with_missing = np.isnan(rows.features[candidates]).any(axis=1)
    chosen = list(rng.permutation(candidates[with_missing])[:2])
    rest = [i for i in rng.permutation(candidates) if i not in chosen]
    chosen += rest[: SAMPLE_ROWS - len(chosen)]
    samples = [(str(rows.event_ids[i]), rows.record(int(i))) for i in chosen]
    categorical = [c.name for c in rows.schema.columns if c.kind != NUMERIC]
    if samples and categorical:
        unseen = {**samples[0][1], **dict.fromkeys(categorical, UNSEEN_SAMPLE_VALUE)}
        samples.append((f"{samples[0][0]}:unseen-categories", unseen))
    return samples


def scored_samples(
    schema: TabularSchema, samples: list[tuple[str, dict[str, Any]]], onnx_path: Path
) -> list[dict[str, Any]]:
    from riskstream.training.export import onnx_scores

    if not samples:
        return []
    matrix = schema.encode_records([record for _, record in samples])
    scores = onnx_scores(onnx_path, matrix)
    return [
        {"event_id": event_id, "features": record, "score": float(score)}
        for (event_id, record), score in zip(samples, scores.tolist(), strict=True)
    ]


def _window(rows: TabularRows) -> tuple[Any, Any] | None:
    if rows.timestamps is None or not len(rows):
        return None
    first, last = rows.timestamps.min(), rows.timestamps.max()
    return (
        datetime.fromtimestamp(float(first), tz=UTC).date(),
        datetime.fromtimestamp(float(last), tz=UTC).date(),
    )


def score_description(task: str, exposure_column: str | None) -> str:
    if task == "poisson":
        per = f"per unit of {exposure_column}" if exposure_column else "per row"
        return (
            f"lambda(x): the expected count {per}; multiply by a record's exposure for its "
            "expected count (Poisson, log-exposure offset in training)"
        )
    return "probability that the label is 1"


def train_on_table(
    prepared: PreparedTable, request: TabularRequest, console: Console
) -> TrainResult:
    """Fit with early stopping on the validation rows, export, check parity on every row,
    publish OUT/<name>/<version>/ with its card."""
    started = time.perf_counter()
    with trainer.importing_tensorflow(console):
        from riskstream.training import card as cards
        from riskstream.training.tabular_model import (
            FitData,
            TabularConfig,
            predict,
            train_tabular,
        )

    task = prepared.spec.task
    rule = request.threshold_rule or DEFAULT_THRESHOLD_RULES[task]
    cards.parse_threshold_rule(rule)
    config = replace(TabularConfig(task=task), **dict(request.overrides))
    rows = prepared.rows
    fit_rows, val_rows = rows.subset(prepared.is_fit), rows.subset(prepared.is_validation)
    is_test = prepared.is_test & prepared.labelled
    test_rows = rows.subset(is_test)

    def part(subset: TabularRows) -> FitData:
        return FitData(subset.features, subset.labels, subset.exposure)

    monitored = f"val_{config.monitor_name}"
    model, outcomes = trainer.fit_with_progress(
        console,
        config,
        lambda entry: f"loss {entry['loss']:.4f}  {monitored} {entry[monitored]:.4f}",
        lambda report: train_tabular(
            rows.schema, part(fit_rows), part(val_rows), config, request.seed, report
        ),
    )
    scores = predict(model, rows.features)
    val_scores = scores[prepared.is_validation]
    threshold, rule_text = cards.choose_threshold(
        rule, (val_rows.labels > 0).astype(np.int8), val_scores
    )
    created_at = datetime.now(UTC).replace(microsecond=0)

    def make_card(onnx_path: Path, parity: float) -> dict[str, Any]:
        samples = scored_samples(rows.schema, sample_records(prepared, request.seed), onnx_path)
        metrics: dict[str, Any] = {
            "training": part_metrics(task, fit_rows, scores[prepared.is_fit]),
            "validation": part_metrics(task, val_rows, val_scores),
        }
        if len(test_rows):
            metrics["test"] = part_metrics(task, test_rows, scores[is_test])
        metrics["onnx_parity_max_abs_diff"] = parity
        bands = cards.severity_bands(threshold, val_scores)
        card = tabular_card(
            prepared,
            request,
            config,
            outcomes,
            metrics,
            threshold,
            rule_text,
            bands,
            samples,
            created_at,
        )
        trained = prepared.is_fit | prepared.is_validation
        card.update(cards.drift_reference(rows.features[trained], val_scores))
        return card

    version_dir, card = trainer.export_and_publish(
        request.out, request.name, model, scores, rows.features, console, make_card
    )
    return TrainResult(version_dir, card, time.perf_counter() - started)


def tabular_card(
    prepared: PreparedTable,
    request: TabularRequest,
    config: Any,
    outcomes: list[Any],
    metrics: dict[str, Any],
    threshold: float,
    rule_text: str,
    bands: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    created_at: datetime,
) -> dict[str, Any]:
    from riskstream.training import card as cards
    from riskstream.training import export
    from riskstream.training.models import effective_batch_size
    from riskstream.training.tabular_model import bins_for

    rows, spec = prepared.rows, prepared.spec
    training_mask = prepared.is_fit | prepared.is_validation
    training_rows = rows.subset(training_mask)
    fit_rows = rows.subset(prepared.is_fit)
    card = cards.build_card(
        name=request.name,
        version=export.new_version(created_at),
        created_at=created_at,
        features=rows.schema.names,
        threshold=threshold,
        threshold_rule=rule_text,
        training_window=_window(training_rows),
        training_features=training_rows.features,
        training_labels=training_rows.labels,
        source_sha256=prepared.source_sha256,
        metrics=metrics,
        bands=bands,
        training={
            "seed": request.seed,
            "config": config.as_dict(),
            "batch_size_used": effective_batch_size(config.batch_size, len(fit_rows)),
            "bins_used": bins_for(config, len(fit_rows)),
            "validation_fraction": request.validation_fraction,
            "validation_split": "latest rows by --time"
            if spec.time_column
            else f"seeded (--seed {request.seed}) random, stratified by "
            + ("label > 0" if spec.task == "poisson" else "label"),
            "test_split": _test_split(request, prepared),
            "min_category_rows": request.min_category_rows,
            "unlabelled_rows_skipped": prepared.unlabelled_rows,
            "best_epoch": [outcome.best_epoch for outcome in outcomes],
            "epochs_run": [outcome.epochs_run for outcome in outcomes],
            "fit_seconds": round(sum(outcome.seconds for outcome in outcomes), 2),
        },
        features_sha256=cards.matrix_fingerprint(
            training_rows.features,
            training_rows.labels,
            training_rows.exposure,
            label_dtype="<f8",
        ),
        baseline=occlusion_baseline(rows.schema, fit_rows.features),
    )
    card["data_fingerprint"]["positives"] = int((training_rows.labels > 0).sum())
    card.update(
        {
            "kind": "tabular",
            "task": spec.task,
            "score": score_description(spec.task, spec.exposure_column),
            "input_schema": rows.schema.to_dict(),
            "table": spec.as_dict(),
            "samples": samples,
        }
    )
    return card


def _test_split(request: TabularRequest, prepared: PreparedTable) -> dict[str, Any]:
    from riskstream.training.tabular_data import file_sha256

    rows = int(prepared.is_test.sum())
    if request.test_rows is not None:
        return {
            "source": "file",
            "path": str(request.test_rows),
            "sha256": file_sha256(request.test_rows),
            "rows": rows,
        }
    if request.test_fraction > 0:
        return {
            "source": "seeded",
            "fraction": request.test_fraction,
            "split_seed": request.split_seed,
            "rows": rows,
        }
    return {"source": "none", "rows": 0}


def summary_table(result: TrainResult) -> Table:
    card = result.card
    poisson = card["task"] == "poisson"
    table = Table(title=f"{card['name']} {card['version']} ({card['task']}) → {result.version_dir}")
    table.add_column("part")
    columns = (
        ("rows", "with counts", "deviance ×10⁻²", "any-count AUC")
        if poisson
        else ("rows", "positives", "ROC AUC", "avg precision")
    )
    for column in columns:
        table.add_column(column, justify="right")
    for part in ("training", "validation", "test"):
        m = card["metrics"].get(part)
        if m is None:
            continue
        if poisson:
            values = (m["rows_with_counts"], m["poisson_deviance_1e-2"], m["any_count_roc_auc"])
        else:
            values = (m["positives"], m["roc_auc"], m["average_precision"])
        table.add_row(part, f"{m['rows']:,}", *(_shown(value) for value in values))
    table.caption = (
        f"{len(card['input_schema']['columns'])} input columns; threshold "
        f"{card['threshold']:.4g} ({card['threshold_rule'].split(':')[0]}), best epochs "
        f"{card['training']['best_epoch']} of {card['training']['epochs_run']}, ONNX parity "
        f"{card['metrics']['onnx_parity_max_abs_diff']:.1e}, {result.seconds:.0f} s"
    )
    return table


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _columns(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeatable options, also accepting comma-separated lists."""
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


@click.command("tabular")
@cli_options.data_option(
    "A CSV (plain or gzipped) with a header row; NA or an empty field is missing."
)
@click.option("--label", required=True, help="The label column: 0/1, or counts for poisson.")
@click.option(
    "--name",
    required=True,
    help="Model name (e.g. credit, claims): the folder OUT/<name>/ and what requests ask for.",
)
@cli_options.models_out_option()
@click.option(
    "--task",
    type=click.Choice(("binary", "poisson")),
    default="binary",
    show_default=True,
    help="binary: P(label = 1). poisson: expected count per unit of exposure.",
)
@click.option(
    "--id",
    "id_column",
    help="Row id column (not a feature; names scores). Default: an unnamed first column "
    "(R/pandas row names), else the 1-based row number.",
)
@click.option(
    "--time",
    "time_column",
    help="Time column (not a feature): numbers or ISO dates; the latest rows become the "
    "validation split instead of a seeded random one.",
)
@click.option(
    "--exposure",
    "exposure_column",
    help="poisson: exposure column (e.g. years insured); a log-exposure offset in training.",
)
@click.option("--drop", multiple=True, help="Column to leave out (repeatable, or a,b,c).")
@click.option("--categorical", multiple=True, help="Treat this column as categorical.")
@click.option("--numeric", multiple=True, help="Treat this column as numeric.")
@click.option(
    "--max-label",
    type=click.FloatRange(0, min_open=True),
    help="poisson: cap counts at this value (freMTPL2: 4).",
)
@click.option(
    "--max-exposure",
    type=click.FloatRange(0, min_open=True),
    help="poisson: cap exposure at this value (freMTPL2: 1).",
)
@cli_options.held_out_options(
    test_rows_help="File of 1-based data-row positions (one a line, # comments) held out as the "
    "test set: never fitted, never used for early stopping or the threshold.",
    test_fraction_help="Without --test-rows: hold out this seeded, stratified fraction as the "
    "test set.",
    split_seed_help="Seed of the --test-fraction split (kept apart from --seed so runs share a "
    "test set).",
    show_defaults=True,
)
@cli_options.validation_fraction_option(
    "Share of the training rows held out for early stopping and the threshold."
)
@cli_options.fit_options(
    epochs_help="Maximum epochs (early stopping may stop sooner); small values make quick tests.",
    patience_help="Epochs without improvement to stop.",
    batch_size_help="Mini-batch size. Default: 512, doubled until an epoch is at most 500 steps.",
    hidden_help="Hidden layer widths, comma-separated (e.g. 128,64).",
)
@cli_options.class_weight_option("binary: up-weighting of the rarer positives.")
@cli_options.choice_option(
    "--monitor",
    ("log_loss", "roc_auc", "average_precision", "poisson_deviance"),
    "Validation measure for early stopping. Default: log_loss, or poisson_deviance.",
)
@cli_options.ensemble_option(
    "Networks trained with different seeds and averaged into one model.  [default: 3]"
)
@click.option(
    "--bins",
    type=click.IntRange(0, 256),
    help="Piecewise-linear quantile bins per numeric column (0: the scalar only). Default: 16, "
    "or 32 from 200,000 fitting rows.",
)
@cli_options.log_columns_option(
    "Numeric columns whose scalar input is put on a signed-log scale (the piecewise-linear "
    "bins are scale-free either way). Default: heavy-tailed."
)
@click.option(
    "--embedding-dim",
    type=click.IntRange(1, 64),
    help="Embedding width of every categorical column. Default: by its number of categories.",
)
@click.option(
    "--min-category-rows",
    type=click.IntRange(1),
    default=MIN_CATEGORY_ROWS,
    show_default=True,
    help="Categories with fewer fitting rows share the unseen bucket.",
)
@cli_options.threshold_rule_option(
    "How the alert threshold is chosen on the validation rows: max-f1, precision:P or "
    "top:R. Default: binary max-f1; poisson top:0.1 (on the expected frequency)."
)
def tabular_command(**options: Any) -> None:
    """Train a model for any labelled table: credit default, claim frequency, ...

    Every column not named by --label/--id/--time/--exposure/--drop is a feature: numeric if
    every value parses as a number, categorical otherwise (override with --numeric and
    --categorical). Missing values, unseen categories, heavy tails and scaling are handled
    inside the model, so the ONNX file takes raw encoded records. Output:
    OUT/<name>/<version>/model.onnx and card.json (input schema, task, threshold, metrics,
    sample rows with their scores), written atomically and only if ONNX reproduces Keras within
    1e-5.
    """
    from riskstream.training.card import parse_threshold_rule

    console = Console(stderr=True)
    with trainer.reported_failures(console):  # a TableError is a ValueError: reported the same way
        request = _request(options)
        if request.threshold_rule is not None:
            parse_threshold_rule(request.threshold_rule)
        prepared = prepare(request, console)
        _describe(prepared, console)
        result = train_on_table(prepared, request, console)
    Console().print(summary_table(result))


def _request(options: dict[str, Any]) -> TabularRequest:
    if options["test_rows"] is not None and options["test_fraction"] > 0:
        raise ValueError("give --test-rows or --test-fraction, not both")
    task = options["task"]
    if task != "poisson" and (options["max_label"] or options["max_exposure"]):
        raise ValueError("--max-label and --max-exposure are for --task poisson")
    spec = TableSpec(
        label=options["label"],
        task=task,
        id_column=options["id_column"],
        time_column=options["time_column"],
        exposure_column=options["exposure_column"],
        drop=_columns(options["drop"]),
        categorical=_columns(options["categorical"]),
        numeric=_columns(options["numeric"]),
        max_label=options["max_label"],
        max_exposure=options["max_exposure"],
    )
    return TabularRequest(
        data=options["data"],
        name=check_name(options["name"]),
        spec=spec,
        out=options["out"],
        test_rows=options["test_rows"],
        test_fraction=options["test_fraction"],
        split_seed=options["split_seed"],
        seed=options["seed"],
        validation_fraction=options["validation_fraction"],
        min_category_rows=options["min_category_rows"],
        threshold_rule=options["threshold_rule"],
        overrides=trainer.config_overrides(options, own_options=("bins", "embedding_dim")),
    )


def _describe(prepared: PreparedTable, console: Console) -> None:
    schema = prepared.rows.schema
    numeric = [c.name for c in schema.columns if c.kind == NUMERIC]
    categorical = [f"{c.name} ({len(c.categories)})" for c in schema.columns if c.kind != NUMERIC]
    console.print(
        f"{len(prepared.rows):,} rows: {int(prepared.is_fit.sum()):,} fitting, "
        f"{int(prepared.is_validation.sum()):,} validation, {int(prepared.is_test.sum()):,} "
        f"test; label {prepared.spec.label!r} ({prepared.spec.task})"
    )
    console.print(f"numeric: {', '.join(numeric) or '—'}")
    console.print(f"categorical (categories kept): {', '.join(categorical) or '—'}")
    if prepared.spec.id_column:
        console.print(f"id column: {prepared.spec.id_column}")
    for note in prepared.notes:
        console.print(f"[yellow]note:[/] {note}")
    for column in schema.columns:
        values = prepared.rows.values[column.name]
        if column.kind == NUMERIC and np.unique(values[~np.isnan(values)]).size == len(values):
            console.print(
                f"[yellow]note:[/] every value of {column.name!r} is distinct — if it is an id, "
                f"pass --id {column.name} or --drop {column.name}"
            )
