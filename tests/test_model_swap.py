"""Model versions that change while a real worker runs (riskstream.model_swap): a new version
serves within seconds with nothing lost, a broken one is refused while the old one serves, a
PINNED file puts an older version back. The shipped tabular credit model, copied."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from stream_support import StreamEnv, WorkerProcess, collect, metric_value

from riskstream import contracts
from riskstream.demo import BUNDLED_MODELS
from riskstream.scoring import PIN_FILE

BATCH = 40
NEWER, BROKEN = "20300101T000000Z", "20310101T000000Z"


def _requests(first: int, card: dict) -> list[bytes]:
    """BATCH requests made of the card's sample records (ids first, first + 1, …)."""
    samples = [sample["features"] for sample in card["samples"]]
    return [
        json.dumps(
            {
                "event_id": f"r{first + i}",
                "timestamp": "2024-05-01T09:00:00Z",
                "entity_id": f"b{i}",
                "model": "credit",
                "features": samples[i % len(samples)],
            }
        ).encode()
        for i in range(BATCH)
    ]


async def _send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value) for value in values])
    finally:
        await producer.stop()


def _publish_version(models: Path, source: str, version: str, broken: bool = False) -> None:
    """As `train` does: written under a temporary name, then renamed into place."""
    staging = models / "credit" / f".staging-{version}"
    shutil.copytree(models / "credit" / source, staging)
    card = json.loads((staging / "card.json").read_text())
    card["version"] = version
    (staging / "card.json").write_text(json.dumps(card))
    if broken:
        (staging / "model.onnx").write_bytes(b"not an onnx graph")
    staging.rename(models / "credit" / version)


def _wait_for(what: str, check, worker: WorkerProcess, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        worker.assert_running()
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {seconds:.0f} s:\n{worker.evidence()}")


def test_versions_swap_in_refuse_and_pin_without_a_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / "credit", models / "credit")
    (original,) = [p.name for p in (models / "credit").iterdir()]
    card = json.loads((models / "credit" / original / "card.json").read_text())
    env = StreamEnv(
        kafka_bootstrap,
        models,
        tmp_path,
        models="",
        extra={"RISKSTREAM_TABULAR_MODELS": "*", "RISKSTREAM_MODEL_WATCH_SECONDS": "0.5"},
    )
    settings = env.settings()
    worker = WorkerProcess(env).start()

    def serving(version: str) -> bool:
        return metric_value(worker.metrics(), "riskstream_model_info", version=version) == 1

    def send_batch(first: int) -> None:
        asyncio.run(_send(kafka_bootstrap, settings.topics.requests, _requests(first, card)))

    try:
        worker.wait_assigned()
        send_batch(0)
        _publish_version(models, original, NEWER)
        _wait_for(f"version {NEWER} in service", lambda: serving(NEWER), worker)
        send_batch(BATCH)
        _publish_version(models, NEWER, BROKEN, broken=True)
        refused = {"model": "credit", "version": BROKEN}
        _wait_for(
            "the broken version refused",
            lambda: metric_value(worker.metrics(), "riskstream_model_refusals_total", **refused),
            worker,
        )
        assert serving(NEWER)
        send_batch(2 * BATCH)
        (models / "credit" / PIN_FILE).write_text(original + "\n")
        _wait_for(f"the pinned version {original} back", lambda: serving(original), worker)
        send_batch(3 * BATCH)
        scores = collect(
            settings,
            settings.topics.scores,
            lambda seen: len(seen) >= 4 * BATCH,
            120,
            lambda value, _key: json.loads(value)["event_id"],
            stall_after=60,
            evidence=worker.evidence,
        )
        log = worker.log()
    finally:
        worker.stop()

    assert len(scores) == 4 * BATCH and all(len(v) == 1 for v in scores.values()), "lost or twice"
    version_of = {key: contracts.decode_score(v[0]).model_version for key, v in scores.items()}
    expected = [NEWER, NEWER, original]  # the batches sent after each change
    for batch, version in enumerate(expected, start=1):
        ids = [f"r{batch * BATCH + i}" for i in range(BATCH)]
        assert {version_of[i] for i in ids} == {version}, (batch, version)
    assert {version_of[f"r{i}"] for i in range(BATCH)} <= {original, NEWER}
    assert f"version {BROKEN} refused" in log and "model.onnx" in log
    # The same graph under every name: a request scores the same whichever version served it.
    by_features: dict[str, set[float]] = {}
    for values in scores.values():
        record = contracts.decode_score(values[0])
        by_features.setdefault(str(int(record.event_id[1:]) % BATCH), set()).add(record.score)
    assert all(max(s) - min(s) <= 1e-6 for s in by_features.values())
