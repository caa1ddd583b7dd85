"""The steps every `riskstream train` command shares, whatever rows it learns from.

`train fraud|market` (train.py) and `train tabular` (train_tabular.py) differ in how they read
and split their rows and in what their cards say; the rest (loading TensorFlow quietly, a
progress bar per network, staging, ONNX parity, publishing, error reporting) is kept here so a
fix to one trainer cannot miss the other.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

# Every trainer's config fields, by the CLI option that overrides each (--hidden aside: parsed).
SHARED_CONFIG_OPTIONS = {
    "epochs": "max_epochs",
    "patience": "patience",
    "batch_size": "batch_size",
    "dropout": "dropout",
    "l2": "l2",
    "learning_rate": "learning_rate",
    "class_weight": "class_weight",
    "log_columns": "log_columns",
    "monitor": "monitor",
    "ensemble": "ensemble",
}

EpochReport = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    """What a trainer published: its folder, its card (with the final version) and how long."""

    version_dir: Path
    card: dict[str, Any]
    seconds: float


def quiet_tensorflow() -> None:
    """TensorFlow's C++ chatter (oneDNN, CPU features, tf.data attribute notices) would bury the
    progress display; Python exceptions still report real failures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@contextlib.contextmanager
def stderr_to_file() -> Iterator[None]:
    """Send file descriptor 2 to a temp file while TensorFlow loads: its absl start-up lines are
    written before TF_CPP_MIN_LOG_LEVEL applies. Replayed to the terminal if the import fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def importing_tensorflow(console: Console) -> Iterator[None]:
    """Wrap the imports that load TensorFlow: a spinner for the seconds it takes, and none of
    its start-up noise on the terminal."""
    quiet_tensorflow()
    with console.status("importing TensorFlow…"), stderr_to_file():
        yield


def epoch_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]training[/] {task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )


def fit_with_progress(
    console: Console,
    config: Any,
    describe_epoch: Callable[[dict[str, float]], str],
    fit: Callable[[EpochReport], tuple[Any, list[Any]]],
) -> tuple[Any, list[Any]]:
    """Run `fit(report)` under one progress bar per ensemble network. Each bar ends at the epoch
    its network stopped at, so early stopping shows as a full bar, not an unfinished one."""
    progress = epoch_progress(console)
    tasks = [
        progress.add_task(f"network {m + 1}/{config.ensemble}", total=config.max_epochs, detail="")
        for m in range(config.ensemble)
    ]

    def report(member: int, epoch: int, entry: dict[str, float]) -> None:
        progress.update(tasks[member], completed=epoch, detail=describe_epoch(entry))

    with progress:
        model, outcomes = fit(report)
        for task, outcome in zip(tasks, outcomes, strict=True):
            progress.update(task, total=outcome.epochs_run, completed=outcome.epochs_run)
    return model, outcomes


def export_and_publish(
    out: Path,
    name: str,
    model: Any,
    keras_scores: np.ndarray,
    features: np.ndarray,
    console: Console,
    make_card: Callable[[Path, float], dict[str, Any]],
) -> tuple[Path, dict[str, Any]]:
    """Export to ONNX in a staging folder and publish it as OUT/<name>/<version>/ with the card
    `make_card(onnx_path, parity)` writes. `check_parity` refuses a file that does not reproduce
    `keras_scores` on `features`; on that or any other failure the staging folder is removed, so
    no half-written version is ever left. Returns the version folder and the card as published."""
    from riskstream.training import export

    staging = export.staging_dir(out, name)
    try:
        with console.status("exporting to ONNX and checking parity…"):
            onnx_path = staging / "model.onnx"
            export.export_onnx(model, features.shape[1], onnx_path)
            parity = export.check_parity(keras_scores, onnx_path, features)
        card = make_card(onnx_path, parity)
        version_dir = export.publish(staging, out, name, card)
    except BaseException:
        export.discard(staging)
        raise
    return version_dir, {**card, "version": version_dir.name}


def parse_hidden(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        units = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter("use comma-separated layer widths such as 64,32") from None
    if not units or min(units) <= 0:
        raise click.BadParameter("use comma-separated positive layer widths such as 64,32")
    return units


def config_overrides(
    options: Mapping[str, Any], own_options: tuple[str, ...] = ()
) -> tuple[tuple[str, Any], ...]:
    """The config fields the command line sets: options left out (None) keep the model's
    defaults. `own_options` are a trainer's extra options, named as their config fields."""
    fields = {**SHARED_CONFIG_OPTIONS, **{option: option for option in own_options}}
    values = {"hidden_units": parse_hidden(options["hidden"])}
    values.update((field, options[option]) for option, field in fields.items())
    return tuple((field, value) for field, value in values.items() if value is not None)


@contextlib.contextmanager
def reported_failures(console: Console) -> Iterator[None]:
    """A refused export exits 1 with its reason in red; an input the trainer cannot use (any
    ValueError) becomes click's one-line error instead of a traceback."""
    from riskstream.training.export import ParityError

    try:
        yield
    except ParityError as exc:
        console.print(f"[bold red]export refused:[/] {exc}")
        raise SystemExit(1) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
