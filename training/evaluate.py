"""`riskstream evaluate`: score labelled history with an exported model, offline.

No TensorFlow here: features come from the stream's feature code, scores from onnxruntime
through the same loader the worker uses, so what is measured is what would be served.

Fraud protocol (the Fraud Detection Handbook's, its Chapter 3): on each test day D, the
customers already known to be compromised — a fraud on any day from --known-since (default:
--from − 14 days, the start of the handbook's training week) up to D − label delay − 1 day —
are dropped before measuring, since a bank would already have blocked those cards. Metrics are
ROC AUC, average precision and card precision top-100 (per day, each card's highest score;
cards found on an earlier day are left out of later days; averaged over the days).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
from rich.console import Console
from rich.progress import Progress

from riskstream.training import cli_options
from riskstream.training.datasets import LabeledRows, day_number

if TYPE_CHECKING:
    from riskstream.training.tabular_data import TabularRows

HANDBOOK_LOOKBACK_DAYS = 14  # training week + label-delay gap before the handbook's test week
SCORE_CHUNK = 65_536


def score_matrix(model: Any, features: np.ndarray, console: Console) -> np.ndarray:
    scores = np.empty(features.shape[0], dtype=np.float32)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(
            f"scoring with {model.name} {model.version}", total=features.shape[0]
        )
        for start in range(0, features.shape[0], SCORE_CHUNK):
            chunk = features[start : start + SCORE_CHUNK]
            scores[start : start + chunk.shape[0]] = model.score(chunk)
            progress.advance(task, chunk.shape[0])
    return scores


def score_rows(model: Any, rows: LabeledRows, console: Console) -> np.ndarray:
    return score_matrix(model, rows.features, console)


def known_compromised_mask(
    context: LabeledRows, window: np.ndarray, known_since: date, label_delay_days: int
) -> np.ndarray:
    """True for window rows whose customer had a fraud the bank knows of by that day: on a
    day from `known_since` up to the row's day − delay − 1."""
    days = context.days
    counted = (context.labels == 1) & (days >= day_number(known_since))
    first_fraud_day: dict[Any, int] = {}
    for customer, day in zip(context.entity_ids[counted], days[counted], strict=True):
        first_fraud_day[customer] = min(int(day), first_fraud_day.get(customer, int(day)))
    horizon = days - label_delay_days - 1
    known = np.fromiter(
        (
            first_fraud_day.get(customer, math.inf) <= limit
            for customer, limit in zip(context.entity_ids, horizon, strict=True)
        ),
        dtype=bool,
        count=len(context),
    )
    return known & window


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    alerts = scores >= threshold
    true_alerts = int(np.sum(alerts & (labels == 1)))
    positives = int(labels.sum())
    return {
        "alerts": int(alerts.sum()),
        "precision_at_threshold": _finite_or_none(true_alerts / alerts.sum())
        if alerts.any()
        else None,
        "recall_at_threshold": _finite_or_none(true_alerts / positives) if positives else None,
    }


def measure(rows: LabeledRows, scores: np.ndarray, threshold: float, top_k: int) -> dict[str, Any]:
    from riskstream.training.metrics import average_precision, card_precision_top_k, roc_auc

    result: dict[str, Any] = {
        "rows_evaluated": len(rows),
        "positives": int(rows.labels.sum()),
        "roc_auc": _finite_or_none(roc_auc(rows.labels, scores)),
        "average_precision": _finite_or_none(average_precision(rows.labels, scores)),
    }
    if rows.name == "fraud" and len(rows):
        cp = card_precision_top_k(rows.labels, scores, rows.entity_ids, rows.days, k=top_k)
        result[f"card_precision_top_{top_k}"] = _finite_or_none(cp.mean)
        result[f"card_precision_top_{top_k}_per_day"] = [round(v, 4) for v in cp.per_day]
        result["compromised_cards_per_day"] = list(cp.compromised_per_day)
    result.update({"threshold": threshold, **threshold_metrics(rows.labels, scores, threshold)})
    return result


def write_scores(path: Path, event_ids: np.ndarray, scores: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("event_id", "score"))
        writer.writerows(
            zip(event_ids.tolist(), (f"{s:.8g}" for s in scores.tolist()), strict=True)
        )


def evaluate_fraud(
    model: Any,
    data: Path,
    start: date | None,
    end: date | None,
    drop_known: bool,
    known_since: date | None,
    top_k: int,
    console: Console,
) -> tuple[dict[str, Any], LabeledRows, np.ndarray]:
    from riskstream.features.fraud import LABEL_DELAY_SECONDS
    from riskstream.training.datasets import fraud_rows

    if known_since is None and start is not None:
        known_since = start - timedelta(days=HANDBOOK_LOOKBACK_DAYS)
    context_start = min(known_since, start) if (known_since and start) else None
    with console.status("loading…") as status:
        context = fraud_rows(
            data,
            context_start,
            end,
            training=False,
            status=lambda message: status.update(message + "…"),
        )
    start = start or context.start
    known_since = known_since or context.start
    in_window = context.days >= day_number(start)
    rows = replace(context.subset(in_window), start=start)
    scores = score_rows(model, rows, console)
    delay_days = round(LABEL_DELAY_SECONDS / 86400)
    known = known_compromised_mask(context, in_window, known_since, delay_days)[in_window]
    if not drop_known:
        known[:] = False
    evaluated = rows.subset(~known)
    result = measure(evaluated, scores[~known], model.threshold, top_k)
    result["rows_scored"] = len(rows)
    result["protocol"] = {
        "drop_known_compromised": drop_known,
        "known_since": known_since.isoformat() if drop_known else None,
        "label_delay_days": delay_days,
        "rows_dropped_known_compromised": int(known.sum()),
    }
    return result, rows, scores


def evaluate_market(
    model: Any,
    data: Path,
    vix: Path | None,
    start: date | None,
    end: date | None,
    console: Console,
) -> tuple[dict[str, Any], LabeledRows, np.ndarray]:
    from riskstream.training.datasets import market_rows

    with console.status("loading…") as status:
        rows = market_rows(
            data,
            vix,
            start,
            end,
            require_labels=False,
            status=lambda message: status.update(message + "…"),
        )
    scores = score_rows(model, rows, console)
    labelled = rows.labelled
    result = measure(rows.subset(labelled), scores[labelled], model.threshold, top_k=100)
    result["rows_scored"] = len(rows)
    result["rows_unlabelled"] = int((~labelled).sum())
    result["label"] = "drawdown: lowest close of the next 20 bars at least 5% below today's close"
    return result, rows, scores


DATE = click.DateTime(formats=["%Y-%m-%d"])


def _as_date(value: datetime | None) -> date | None:
    return value.date() if value else None


@click.command("evaluate")
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A model version folder, or a model-name folder (its newest version is used).",
)
@cli_options.data_option(
    "Labelled history: transactions (our CSV or the handbook's) or daily OHLCV bars."
)
@click.option("--from", "start", type=DATE, help="First evaluated day (inclusive).")
@click.option("--to", "end", type=DATE, help="Last evaluated day (inclusive).")
@click.option(
    "--scores-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a CSV event_id,score for every scored event of the window.",
)
@click.option(
    "--vix",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="market only: the VIX daily CSV the model was trained with.",
)
@click.option(
    "--drop-known-compromised/--keep-known-compromised",
    default=True,
    show_default=True,
    help="fraud: leave out, on each day, the customers already known to be compromised "
    "(the handbook protocol; its published figures need this on).",
)
@click.option(
    "--known-since",
    type=DATE,
    help="fraud: first day whose frauds count as known. Default: --from − 14 days (the "
    "handbook's training week before its 7-day gap).",
)
@cli_options.held_out_options(
    test_rows_help="tabular: evaluate only these 1-based data-row positions (one a line), e.g. "
    "the file given to `train tabular --test-rows`.",
    test_fraction_help="tabular: evaluate the seeded test split `train tabular --test-fraction` "
    "held out (same fraction and --split-seed).",
    split_seed_help="tabular: seed of the --test-fraction split.",
    show_defaults=False,
)
@click.option(
    "--top-k",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="fraud: cards investigated per day for card precision top-k.",
)
def evaluate_command(
    model_dir: Path,
    data: Path,
    start: datetime | None,
    end: datetime | None,
    scores_out: Path | None,
    vix: Path | None,
    drop_known_compromised: bool,
    known_since: datetime | None,
    test_rows: Path | None,
    test_fraction: float,
    split_seed: int,
    top_k: int,
) -> None:
    """Score labelled history with an exported model and print metrics as one JSON object.

    Features are computed by the stream's feature code over the whole file (earlier history
    warms the windows); the events from --from to --to are scored with onnxruntime. A tabular
    model (`train tabular`) encodes each row with its card's input schema instead and takes
    --test-rows or --test-fraction in place of dates. Progress goes to stderr, the JSON to
    stdout.
    """
    from riskstream.features.tabular import is_tabular_card
    from riskstream.scoring import ModelError, load_model

    console = Console(stderr=True)
    try:
        model = load_model(model_dir)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    if vix is not None and model.name != "market":
        raise click.BadParameter("--vix is for the market model only", param_hint="--vix")
    if is_tabular_card(model.card):
        _evaluate_tabular(model, data, scores_out, test_rows, test_fraction, split_seed, console)
        return
    if test_rows is not None or test_fraction > 0:
        raise click.BadParameter(
            "--test-rows and --test-fraction are for tabular models; use --from/--to",
            param_hint="--test-rows",
        )
    try:
        if model.name == "fraud":
            result, rows, scores = evaluate_fraud(
                model,
                data,
                _as_date(start),
                _as_date(end),
                drop_known_compromised,
                _as_date(known_since),
                top_k,
                console,
            )
        else:
            result, rows, scores = evaluate_market(
                model, data, vix, _as_date(start), _as_date(end), console
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    window = {"from": rows.start.isoformat(), "to": rows.end.isoformat()}
    _report(model, data, rows, scores, scores_out, {"window": window, **result}, console)


def _evaluate_tabular(
    model: Any,
    data: Path,
    scores_out: Path | None,
    test_rows: Path | None,
    test_fraction: float,
    split_seed: int,
    console: Console,
) -> None:
    from riskstream.training.evaluate_tabular import evaluate_tabular
    from riskstream.training.tabular_data import TableError

    if test_rows is not None and test_fraction > 0:
        raise click.UsageError("give --test-rows or --test-fraction, not both")
    try:
        result, rows, scores = evaluate_tabular(
            model, data, test_rows, test_fraction, split_seed, console
        )
    except (TableError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _report(model, data, rows, scores, scores_out, result, console)


def _report(
    model: Any,
    data: Path,
    rows: LabeledRows | TabularRows,
    scores: np.ndarray,
    scores_out: Path | None,
    result: dict[str, Any],
    console: Console,
) -> None:
    """Write the scores if asked, then the one JSON object on stdout: which model scored which
    file first, so a saved report says what it measured."""
    if scores_out is not None:
        write_scores(scores_out, rows.event_ids, scores)
        console.print(f"wrote {len(rows):,} scores to {scores_out}")
    output = {
        "model": model.name,
        "version": model.version,
        "model_path": str(model.path),
        "data": str(data),
        **result,
    }
    sys.stdout.write(json.dumps(output, allow_nan=False) + "\n")
