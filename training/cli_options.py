"""Command-line options that `train fraud|market`, `train tabular` and `evaluate` share.

Each is defined once so the commands cannot drift apart in types, ranges or defaults; the help
text is a parameter wherever a command words it for its own models.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]


def stacked(*options: Decorator) -> Decorator:
    """Several options as one decorator, shown in --help in the order given (as if written one
    above the other)."""

    def apply(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def data_option(help: str) -> Decorator:
    return click.option(
        "--data",
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=help,
    )


def models_out_option() -> Decorator:
    return click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=lambda: os.environ.get("RISKSTREAM_MODELS_DIR", "models"),
        show_default="$RISKSTREAM_MODELS_DIR or models",
        help="Models folder; the model is written to OUT/<name>/<version>/.",
    )


def fit_options(
    *, epochs_help: str, patience_help: str, batch_size_help: str, hidden_help: str
) -> Decorator:
    """--seed, --epochs, --patience, --batch-size, --hidden, --dropout, --l2, --learning-rate."""
    return stacked(
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed."),
        click.option("--epochs", type=click.IntRange(1), help=epochs_help),
        click.option("--patience", type=click.IntRange(1), help=patience_help),
        click.option("--batch-size", type=click.IntRange(1), help=batch_size_help),
        click.option("--hidden", help=hidden_help),
        click.option(
            "--dropout", type=click.FloatRange(0, 0.9), help="Dropout after each hidden layer."
        ),
        click.option("--l2", type=click.FloatRange(0), help="L2 penalty on every Dense kernel."),
        click.option(
            "--learning-rate", type=click.FloatRange(0, min_open=True), help="Adam learning rate."
        ),
    )


def choice_option(name: str, choices: tuple[str, ...], help: str) -> Decorator:
    return click.option(name, type=click.Choice(choices), help=help)


def class_weight_option(help: str) -> Decorator:
    return choice_option("--class-weight", ("none", "sqrt", "balanced"), help)


def log_columns_option(help: str) -> Decorator:
    return choice_option("--log-columns", ("none", "heavy-tailed", "non-negative"), help)


def ensemble_option(help: str) -> Decorator:
    return click.option("--ensemble", type=click.IntRange(1, 20), help=help)


def validation_fraction_option(help: str) -> Decorator:
    return click.option(
        "--validation-fraction",
        type=click.FloatRange(0.05, 0.5),
        default=0.2,
        show_default=True,
        help=help,
    )


def threshold_rule_option(help: str) -> Decorator:
    return click.option("--threshold-rule", help=help)


def held_out_options(
    *, test_rows_help: str, test_fraction_help: str, split_seed_help: str, show_defaults: bool
) -> Decorator:
    """--test-rows, --test-fraction, --split-seed: training holds a test set out with them and
    evaluation picks the same rows again with the same values."""
    show_default = True if show_defaults else None
    return stacked(
        click.option(
            "--test-rows",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help=test_rows_help,
        ),
        click.option(
            "--test-fraction",
            type=click.FloatRange(0, 0.5),
            default=0.0,
            show_default=show_default,
            help=test_fraction_help,
        ),
        click.option(
            "--split-seed", type=int, default=0, show_default=show_default, help=split_seed_help
        ),
    )
