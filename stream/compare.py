"""`riskstream compare NAME`: the champion and its challenger judged on the same events.

Reads the model's score records from the scores topic and the shadow scores topic (a
challenger's, see riskstream.model_swap) up to their current ends, keeps the events both
versions scored, joins them with their labels — from the labels topic (fraud: a chargeback per
fraudulent transaction; with `--unlabelled-negative` an event without one counts as genuine) or
from a CSV file (`--labels FILE --id COL --label COL`, e.g. the table a tabular model's
requests came from) — and prints, per version: events, alert rate at its own threshold,
precision and recall there, average precision and ROC AUC. No TensorFlow.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import gzip
from collections.abc import Iterable
from pathlib import Path

import click
import numpy as np

from riskstream.config import Settings


@dataclasses.dataclass(frozen=True)
class VersionReport:
    version: str
    role: str  # "champion" (risk.scores) or "challenger" (shadow)
    events: int
    threshold: float
    alert_rate: float
    precision: float
    recall: float
    average_precision: float
    roc_auc: float


Scored = tuple[str, str, dict[str, float]]  # (role, version, event id -> score)


def report(
    versions: list[Scored], labels: dict[str, int], thresholds: dict[str, float]
) -> list[VersionReport]:
    """One report per version, over the events every version scored and a label exists for."""
    from riskstream.training.metrics import average_precision, roc_auc

    common = set.intersection(*(set(by_event) for _, _, by_event in versions), set(labels))
    events = sorted(common)
    truth = np.array([labels[event] for event in events], dtype=np.int8)
    reports = []
    for role, version, by_event in versions:
        values = np.array([by_event[event] for event in events], dtype=np.float64)
        alerting = values >= thresholds[version]
        hits = int((alerting & (truth == 1)).sum())
        reports.append(
            VersionReport(
                version=version,
                role=role,
                events=len(events),
                threshold=thresholds[version],
                alert_rate=float(alerting.mean()) if len(events) else float("nan"),
                precision=hits / int(alerting.sum()) if alerting.any() else float("nan"),
                recall=hits / int(truth.sum()) if truth.any() else float("nan"),
                average_precision=average_precision(truth, values) if truth.any() else float("nan"),
                roc_auc=roc_auc(truth, values) if 0 < truth.sum() < len(truth) else float("nan"),
            )
        )
    return reports


async def _read_scores(settings: Settings, topic: str, model: str) -> dict[str, dict[str, float]]:
    """version -> {event id: score} of one model on `topic`, up to the topic's current end."""
    from riskstream import contracts
    from riskstream.kafka import read_to_end

    found: dict[str, dict[str, float]] = {}
    for message in await read_to_end(settings.kafka, topic):
        try:
            record = contracts.decode_score(message.value)
        except contracts.ContractError:
            continue
        if record.model == model:
            found.setdefault(record.model_version, {})[record.event_id] = record.score
    return found


async def _read_topic_labels(settings: Settings) -> dict[str, int]:
    from riskstream import contracts
    from riskstream.kafka import read_to_end

    labels: dict[str, int] = {}
    for message in await read_to_end(settings.kafka, settings.topics.labels):
        try:
            label = contracts.decode_label(message.value)
        except contracts.ContractError:
            continue
        labels[label.transaction_id] = int(label.fraud)
    return labels


def file_labels(path: Path, id_column: str, label_column: str) -> dict[str, int]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        rows = csv.DictReader(handle)
        missing = {id_column, label_column} - set(rows.fieldnames or [])
        if missing:
            raise click.ClickException(f"{path} has no column {sorted(missing)}")
        return {row[id_column]: int(float(row[label_column]) > 0) for row in rows}


def _thresholds(models_dir: Path, model: str, versions: Iterable[str]) -> dict[str, float]:
    from riskstream.scoring import ModelError, load_model

    found = {}
    for version in versions:
        try:
            found[version] = load_model(models_dir / model / version).threshold
        except ModelError as exc:
            raise click.ClickException(f"version {version} of {model}: {exc}") from exc
    return found


def _table(reports: list[VersionReport]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="champion and challenger on the same labelled events")
    for column in ("version", "role", "events", "threshold", "alert rate", "precision",
                   "recall", "avg precision", "ROC AUC"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in reports:
        table.add_row(
            r.version, r.role, f"{r.events:,}", f"{r.threshold:.4f}", f"{r.alert_rate:.2%}",
            f"{r.precision:.4f}", f"{r.recall:.4f}", f"{r.average_precision:.4f}",
            f"{r.roc_auc:.4f}",
        )  # fmt: skip
    Console(width=max(Console().width, 132)).print(table)  # every figure whole, piped too


@click.command("compare")
@click.argument("model")
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A CSV with the events' labels [default: the labels topic].",
)
@click.option("--id", "id_column", default="event_id", show_default=True, help="Its id column.")
@click.option("--label", "label_column", default="label", show_default=True, help="Its label.")
@click.option(
    "--unlabelled-negative",
    is_flag=True,
    help="Labels topic: an event with no label counts as genuine (labels are chargebacks).",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the versions' cards are [env RISKSTREAM_MODELS_DIR, default models].",
)
@click.option("--bootstrap-servers", help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS].")
def compare_command(
    model: str,
    labels_path: Path | None,
    id_column: str,
    label_column: str,
    unlabelled_negative: bool,
    models_dir: Path | None,
    bootstrap_servers: str | None,
) -> None:
    """Judge MODEL's champion and challenger on the events both scored, once labels are in."""
    settings = Settings.from_env(bootstrap_servers=bootstrap_servers, models_dir=models_dir)
    champion = asyncio.run(_read_scores(settings, settings.topics.scores, model))
    shadow = asyncio.run(_read_scores(settings, settings.topics.shadow_scores, model))
    if not shadow:
        raise click.ClickException(
            f"no shadow scores of {model} on {settings.topics.shadow_scores}: name a challenger "
            f"in {settings.models_dir / model / 'CHALLENGER'} first"
        )
    if labels_path is not None:
        labels = file_labels(labels_path, id_column, label_column)
    else:
        labels = asyncio.run(_read_topic_labels(settings))
        if unlabelled_negative:
            every = set().union(*champion.values(), *shadow.values())
            labels = {event: labels.get(event, 0) for event in every}
    versions = compared_pair(champion, shadow)
    thresholds = _thresholds(settings.models_dir, model, {version for _, version, _ in versions})
    _table(report(versions, labels, thresholds))


def compared_pair(
    champion: dict[str, dict[str, float]], shadow: dict[str, dict[str, float]]
) -> list[Scored]:
    """The challenger with the most shadow scores, and the champion version that scored most of
    the same events (after a swap or a promotion, other versions scored other events)."""
    challenger = max(shadow, key=lambda version: len(shadow[version]))
    events = set(shadow[challenger])
    others = [version for version in champion if version != challenger]
    pair: list[Scored] = []
    if others:
        best = max(others, key=lambda version: len(events & set(champion[version])))
        pair.append(("champion", best, champion[best]))
    return [*pair, ("challenger", challenger, shadow[challenger])]
