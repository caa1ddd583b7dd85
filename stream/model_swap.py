"""Models that change while the stream runs: a new version is loaded, checked and put in
service between two batches, with no restart.

Why. A risk team retrains every week or month; restarting every worker to serve the new version
pauses scoring (a rebalance, table recovery) and leaves the choice of moment to operations.

What. Every RISKSTREAM_MODEL_WATCH_SECONDS the worker looks at the folder of each model it
serves. When the version to serve there (the newest complete `YYYYMMDDTHHMMSSZ` folder, or the
one a PINNED file names: see riskstream.scoring.served_version_dir) is not the one in service,
it is loaded off the event loop and checked as at start: the card against the feature code and
the ONNX signature (load_model), a typical row scoring in range, and for a tabular model the
sample rows its card stores scoring as the card says. A version that passes replaces the one in
the model's BatchScorer (and, for a tabular model, the input schema its requests are checked
against). Batch handlers decode and score a batch without yielding to the event loop, so a swap
falls between two batches: no batch is scored by two versions, and every score record names the
version that made it. A version that fails is refused once, with a log line and
`riskstream_model_refusals_total{model,version}`; the version in service keeps serving.

A challenger. A version named in the model's CHALLENGER file is loaded and checked the same way
and scores every batch the champion scores, in shadow: its score records go to the shadow
scores topic (`risk.scores.shadow`), never to alerts, so both versions can be compared on the
same events once labels arrive. A tabular challenger must take the champion's inputs (same
columns, types and categories). `riskstream promote NAME VERSION` pins a version (and clears
the CHALLENGER file that names it): it becomes the champion with no restart.
`train` writes a version under a temporary name and renames it when complete, so a
half-written version is never picked up.

Pinned by tests/test_model_swap.py: against a real worker, a new version dropped in mid-stream
serves within seconds with nothing lost, a broken one is refused while the old one serves, and
a PINNED file puts an older version back; a challenger's shadow scores equal offline scoring
of that version, and promoting it makes it the champion.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from riskstream.features.tabular import TabularSchema, is_tabular_card, schema_from_card
from riskstream.scoring import (
    ModelError,
    challenger_version_dir,
    check_model,
    load_model,
    served_version_dir,
)

log = logging.getLogger(__name__)


def load_checked(name: str, version_dir: Path) -> Any:
    """Version `version_dir` of model `name`, loaded and checked; raises ModelError."""
    model = load_model(version_dir)
    if model.name != name:
        raise ModelError(f"{version_dir} holds model {model.name!r}, not {name!r}")
    check_model(model)
    return model


def same_inputs(champion: Any, challenger: Any) -> bool:
    """Whether the challenger takes the rows the champion's inputs are encoded into: the same
    feature code (window models, checked by load_model), or for a tabular model the same
    columns, types, categories and nullability (the ranges seen in training may differ)."""
    if not is_tabular_card(champion.card):
        return True

    def encoding(model: Any) -> tuple:
        schema = schema_from_card(model.card)
        return tuple((c.name, c.kind, c.nullable, c.categories) for c in schema.columns)

    return encoding(champion) == encoding(challenger)


class ModelSwap:
    """Watches the served models' folders and swaps in new versions (see the module notes)."""

    def __init__(
        self,
        models_dir: Path,
        scorers: MutableMapping[str, Any],
        schemas: MutableMapping[str, TabularSchema],
        metrics: Any,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.scorers = scorers  # model name -> the BatchScorer that scores it
        self.schemas = schemas  # tabular model name -> the input schema requests are checked by
        self.metrics = metrics
        self.refused: set[tuple[str, str]] = set()

    async def check(self) -> None:
        for name in list(self.scorers):
            await self._check_one(name)
            await self._check_challenger(name)

    async def _check_one(self, name: str) -> None:
        scorer = self.scorers[name]
        try:
            wanted = served_version_dir(self.models_dir / name)
        except ModelError as exc:
            self._refuse(name, "?", str(exc))
            return
        if wanted.name == Path(scorer.scorer.path).name:
            return
        model = await self._load(name, wanted)
        if model is not None:
            self._serve(name, model)

    async def _check_challenger(self, name: str) -> None:
        scorer = self.scorers[name]
        try:
            wanted = challenger_version_dir(self.models_dir / name)
        except ModelError as exc:
            self._refuse(name, "?", str(exc))
            return
        if wanted is None or wanted.name == Path(scorer.scorer.path).name:
            self._retire_challenger(name)  # none named, or it is the champion now
            return
        current = scorer.shadow
        if current is not None and Path(current.path).name == wanted.name:
            return
        model = await self._load(name, wanted, champion=scorer.scorer)
        if model is not None:
            scorer.shadow = model
            self.metrics.set_challenger(name, model.version)
            log.info("model %s: version %s scores in shadow (challenger)", name, model.version)

    async def _load(self, name: str, wanted: Path, champion: Any = None) -> Any | None:
        """The version in `wanted`, loaded and checked off the event loop (with `champion`: it
        must also take the champion's inputs); None when refused, now or before."""
        if (name, wanted.name) in self.refused:
            return None
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(None, load_checked, name, wanted)
            if champion is not None and not same_inputs(champion, model):
                raise ModelError(
                    f"{wanted}: its input schema differs from the champion's, so it cannot "
                    "score the champion's rows in shadow; promote it to serve it"
                )
        except ModelError as exc:
            self._refuse(name, wanted.name, str(exc))
            return None
        return model

    def _retire_challenger(self, name: str) -> None:
        scorer = self.scorers[name]
        if scorer.shadow is None:
            return
        log.info("model %s: challenger %s no longer scores", name, scorer.shadow.version)
        scorer.shadow = None
        self.metrics.set_challenger(name, None)

    def _serve(self, name: str, model: Any) -> None:
        previous = self.scorers[name].scorer
        if is_tabular_card(model.card):
            self.schemas[name] = schema_from_card(model.card)
        self.scorers[name].serve(model)  # the next batch scores with it
        self.metrics.set_model(name, model.version)
        log.info(
            "model %s: version %s in service (was %s), threshold %.4f",
            name,
            model.version,
            previous.version,
            model.threshold,
        )

    def _refuse(self, name: str, version: str, why: str) -> None:
        if (name, version) in self.refused:
            return
        self.refused.add((name, version))
        self.metrics.refused_model(name, version)
        log.warning(
            "model %s: version %s refused, the version in service keeps serving: %s",
            name,
            version,
            why,
        )
