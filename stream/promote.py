"""`riskstream promote NAME VERSION`: put a model version in service on every worker, no restart.

Writes the version's name into MODELS_DIR/NAME/PINNED (atomically: a worker never reads half a
name) after checking the version loads and passes the checks a worker makes, and clears the
CHALLENGER file if it names that version. Workers watching the folder (riskstream.model_swap)
serve it from their next look on. Delete PINNED (or `--newest`) to serve the newest version again.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from riskstream.config import Settings


def promote(models_dir: Path, name: str, version: str | None) -> str:
    """Pin `version` of `name` (None: unpin, serve the newest); returns what was done."""
    from riskstream.model_swap import load_checked
    from riskstream.scoring import CHALLENGER_FILE, PIN_FILE, ModelError, newest_version_dir

    name_dir = models_dir / name
    pin, challenger = name_dir / PIN_FILE, name_dir / CHALLENGER_FILE
    if version is None:
        newest = newest_version_dir(name_dir)
        pin.unlink(missing_ok=True)
        try:
            load_checked(name, newest)
        except ModelError as exc:
            return (
                f"{name}: unpinned, but the newest version, {newest.name}, fails its checks "
                f"({exc}); workers keep the version they serve"
            )
        return f"{name}: unpinned; workers serve the newest version, {newest.name}"
    version_dir = name_dir / version
    if not version_dir.is_dir():
        raise ModelError(f"no version {version} under {name_dir}")
    model = load_checked(name, version_dir)
    staging = name_dir / f".{PIN_FILE}.tmp"
    staging.write_text(version + "\n", encoding="utf-8")
    os.replace(staging, pin)
    if challenger.is_file() and challenger.read_text(encoding="utf-8").strip() == version:
        challenger.unlink()
    return f"{name}: version {model.version} pinned (threshold {model.threshold:.4f})"


@click.command("promote")
@click.argument("name")
@click.argument("version", required=False)
@click.option(
    "--newest", is_flag=True, help="Remove the pin instead: workers serve the newest version."
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the models live [env RISKSTREAM_MODELS_DIR, default models].",
)
def promote_command(name: str, version: str | None, newest: bool, models_dir: Path | None) -> None:
    """Put VERSION of model NAME in service on every worker watching the folder, no restart.

    The version is checked first as a worker would (card, ONNX, a typical row, the card's
    sample records); a CHALLENGER file naming it is cleared, since it is the champion now.
    Workers pick it up within RISKSTREAM_MODEL_WATCH_SECONDS.
    """
    from riskstream.scoring import ModelError

    if (version is None) == (not newest):
        raise click.UsageError("give a VERSION to pin, or --newest to unpin")
    settings = Settings.from_env(models_dir=models_dir)
    try:
        done = promote(settings.models_dir, name, None if newest else version)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{done}; workers follow within RISKSTREAM_MODEL_WATCH_SECONDS")
