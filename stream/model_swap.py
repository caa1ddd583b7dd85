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
`train` writes a version under a temporary name and renames it when complete, so a
half-written version is never picked up.

Pinned by tests/test_model_swap.py: against a real worker, a new version dropped in mid-stream
serves within seconds with nothing lost, a broken one is refused while the old one serves, and
a PINNED file puts an older version back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from riskstream.features.tabular import TabularSchema, is_tabular_card, schema_from_card
from riskstream.scoring import ModelError, load_model, served_version_dir

log = logging.getLogger(__name__)


def load_checked(models_dir: Path, name: str) -> Any:
    """The version to serve of model `name`, loaded and checked; raises ModelError."""
    from riskstream.worker import check_model

    model = load_model(models_dir, name)
    check_model(model)
    return model


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

    async def _check_one(self, name: str) -> None:
        scorer = self.scorers[name]
        try:
            wanted = served_version_dir(self.models_dir / name)
        except ModelError as exc:
            self._refuse(name, "?", str(exc))
            return
        if wanted.name == Path(scorer.scorer.path).name or (name, wanted.name) in self.refused:
            return
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(None, load_checked, self.models_dir, name)
        except ModelError as exc:
            self._refuse(name, wanted.name, str(exc))
            return
        self._serve(name, model)

    def _serve(self, name: str, model: Any) -> None:
        previous = self.scorers[name].scorer
        if is_tabular_card(model.card):
            self.schemas[name] = schema_from_card(model.card)
        self.scorers[name].scorer = model  # the next batch scores with it
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
