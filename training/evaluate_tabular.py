"""`riskstream evaluate` for tabular models: the file's rows through the model's own input
schema (the stream's encoder) and onnxruntime, without TensorFlow.

Binary models get ROC AUC, average precision and the alert threshold's precision/recall;
count models the Poisson deviance (in 10⁻² units, μ = λ · exposure, counts and exposure capped
as in training) and the ROC AUC of μ for "at least one". `--scores-out` writes the model's
output per scored row (λ for count models), named by the --id column of training or the
1-based row number: what a stream-parity test compares the worker's scores with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from riskstream.features.tabular import schema_from_card
from riskstream.training.tabular_data import (
    TableSpec,
    TabularRows,
    held_out_mask,
    load_scoring_rows,
)


def selected_rows(
    rows: TabularRows,
    task: str,
    test_rows: Path | None,
    test_fraction: float,
    split_seed: int,
) -> tuple[np.ndarray, str]:
    """Which rows to evaluate: a row-position file, the seeded test split training held out
    with the same --test-fraction/--split-seed (the very function training used), or all."""
    if test_rows is None and test_fraction <= 0:
        return np.ones(len(rows), dtype=bool), "every row"
    mask = held_out_mask(len(rows), rows.labels, task, test_rows, test_fraction, split_seed)
    if test_rows is not None:
        return mask, f"rows listed in {test_rows}"
    return mask, f"seeded test split (fraction {test_fraction:g}, split seed {split_seed})"


def evaluate_tabular(
    model: Any,
    data: Path,
    test_rows: Path | None,
    test_fraction: float,
    split_seed: int,
    console: Console,
) -> tuple[dict[str, Any], TabularRows, np.ndarray]:
    from riskstream.training.evaluate import score_matrix, threshold_metrics
    from riskstream.training.train_tabular import part_metrics

    card = model.card
    spec = TableSpec.from_card(card)
    with console.status("loading…") as status:
        rows, source_sha256 = load_scoring_rows(
            data, spec, schema_from_card(card), lambda message: status.update(message + "…")
        )
    chosen, described = selected_rows(rows, spec.task, test_rows, test_fraction, split_seed)
    rows = rows.subset(chosen)
    if source_sha256 == card["data_fingerprint"]["source_sha256"] and chosen.all():
        console.print(
            "[yellow]note:[/] this is the training file and no test split was given: the "
            "figures include the rows the model was fitted on"
        )
    scores = score_matrix(model, rows.features, console)
    labelled = ~np.isnan(rows.labels)
    evaluated = rows.subset(labelled)
    result: dict[str, Any] = {
        "task": spec.task,
        "rows_selected": described,
        "rows_scored": len(rows),
        "rows_unlabelled": int((~labelled).sum()),
        **part_metrics(spec.task, evaluated, scores[labelled]),
    }
    if spec.task == "binary":
        labels = evaluated.labels.astype(np.int8)
        alerts = threshold_metrics(labels, scores[labelled], model.threshold)
        result.update({"threshold": model.threshold, **alerts})
    else:
        result["threshold"] = model.threshold
        result["alerts"] = int(np.sum(scores[labelled] >= model.threshold))
    return result, rows, scores
