"""Model versions that change while a real worker runs (riskstream.model_swap): a new version
serves within seconds with nothing lost, a broken one is refused while the old one serves, a
PINNED file puts an older version back, a challenger scores in shadow exactly as that version
scores offline and `riskstream promote` makes it the champion. The shipped tabular credit
model, copied."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer
from stream_support import StreamEnv, WorkerProcess, collect, metric_value

from riskstream import contracts
from riskstream.demo import BUNDLED_MODELS
from riskstream.features.tabular import schema_from_card
from riskstream.scoring import PIN_FILE

BATCH = 40
NEWER, BROKEN = "20300101T000000Z", "20310101T000000Z"


def credit_env(bootstrap: str, models: Path, workdir: Path, **settings: str) -> StreamEnv:
    """A worker serving the tabular models of `models` alone (no window model)."""
    extra = {"RISKSTREAM_TABULAR_MODELS": "*", **settings}
    return StreamEnv(bootstrap, models, workdir, models="", extra=extra)


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
    env = credit_env(kafka_bootstrap, models, tmp_path, RISKSTREAM_MODEL_WATCH_SECONDS="0.5")
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


def _halved_version(models: Path, source: str, version: str) -> None:
    """A challenger: the same inputs, its output halved (a different model, as the card says)."""
    import onnx
    from onnx import helper, numpy_helper

    staging = models / "credit" / f".staging-{version}"
    shutil.copytree(models / "credit" / source, staging)
    graph_model = onnx.load(str(staging / "model.onnx"))
    graph = graph_model.graph
    output = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{output}_raw" if name == output else name for name in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    graph.node.append(helper.make_node("Mul", [f"{output}_raw", "half"], [output]))
    onnx.save(graph_model, str(staging / "model.onnx"))
    card = json.loads((staging / "card.json").read_text())
    card["version"] = version
    for sample in card["samples"]:
        sample["score"] = float(np.float32(sample["score"]) * np.float32(0.5))
    (staging / "card.json").write_text(json.dumps(card))
    staging.rename(models / "credit" / version)


def test_a_challenger_scores_in_shadow_then_is_promoted_without_a_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from riskstream.promote import promote_command
    from riskstream.scoring import CHALLENGER_FILE, load_model

    models = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / "credit", models / "credit")
    (champion,) = [p.name for p in (models / "credit").iterdir()]
    card = json.loads((models / "credit" / champion / "card.json").read_text())
    _halved_version(models, champion, NEWER)
    (models / "credit" / PIN_FILE).write_text(champion)  # the newer one waits as a challenger
    (models / "credit" / CHALLENGER_FILE).write_text(NEWER)
    env = credit_env(kafka_bootstrap, models, tmp_path, RISKSTREAM_MODEL_WATCH_SECONDS="0.5")
    settings = env.settings()
    worker = WorkerProcess(env).start()

    def info(family: str, version: str) -> float:
        return metric_value(worker.metrics(), family, model="credit", version=version)

    def send_batch(first: int) -> None:
        asyncio.run(_send(kafka_bootstrap, settings.topics.requests, _requests(first, card)))

    def by_id(topic: str, count: int) -> dict[str, contracts.ScoreRecord]:
        found = collect(
            settings,
            topic,
            lambda seen: len(seen) >= count,
            120,
            lambda value, _key: json.loads(value)["event_id"],
            stall_after=60,
            evidence=worker.evidence,
        )
        return {key: contracts.decode_score(values[-1]) for key, values in found.items()}

    try:
        worker.wait_assigned()
        _wait_for(
            "the challenger in shadow", lambda: info("riskstream_challenger_info", NEWER), worker
        )
        send_batch(0)
        shadow = by_id(settings.topics.shadow_scores, BATCH)
        served = by_id(settings.topics.scores, BATCH)
        promoted = CliRunner().invoke(
            promote_command, ["credit", NEWER, "--models-dir", str(models)]
        )
        assert promoted.exit_code == 0, promoted.output
        assert not (models / "credit" / CHALLENGER_FILE).exists()
        _wait_for("the challenger promoted", lambda: info("riskstream_model_info", NEWER), worker)
        _wait_for(
            "the shadow retired", lambda: not info("riskstream_challenger_info", NEWER), worker
        )
        send_batch(BATCH)
        after = by_id(settings.topics.scores, 2 * BATCH)
    finally:
        worker.stop()

    # Shadow scores: the challenger's, equal to scoring that version offline; no alerts from it.
    challenger = load_model(models / "credit" / NEWER)
    rows = schema_from_card(challenger.card).encode_records(
        [json.loads(raw)["features"] for raw in _requests(0, card)]
    )
    offline = challenger.score(rows)
    assert {r.model_version for r in shadow.values()} == {NEWER}
    for i in range(BATCH):
        assert abs(shadow[f"r{i}"].score - float(offline[i])) <= 1e-6
        assert abs(shadow[f"r{i}"].score - served[f"r{i}"].score / 2) <= 1e-6
    assert {r.model_version for r in served.values()} == {champion}
    assert {after[f"r{BATCH + i}"].model_version for i in range(BATCH)} == {NEWER}

    # riskstream compare: both versions on the events both scored, with their labels.
    from riskstream.compare import compare_command
    from riskstream.training.metrics import average_precision

    rng = np.random.default_rng(5)
    labels = {f"r{i}": int(rng.random() < 0.4) for i in range(BATCH)}
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("event_id,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    compared = CliRunner(env=env.environ()).invoke(
        compare_command,
        ["credit", "--labels", str(labels_csv), "--models-dir", str(models)],
        terminal_width=200,
    )
    assert compared.exit_code == 0, compared.output
    truth = np.array([labels[f"r{i}"] for i in range(BATCH)])
    for role, records, version in (("champion", served, champion), ("challenger", shadow, NEWER)):
        values = np.array([records[f"r{i}"].score for i in range(BATCH)])
        expected_ap = average_precision(truth, values)
        line = next(line for line in compared.output.splitlines() if f" {role} │" in line)
        assert version in line and f"{expected_ap:.4f}" in line, (line, expected_ap)


def test_promote_checks_the_version_before_pinning_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from riskstream.promote import promote_command

    models = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / "credit", models / "credit")
    (original,) = [p.name for p in (models / "credit").iterdir()]
    _publish_version(models, original, BROKEN, broken=True)
    runner = CliRunner()
    args = ["--models-dir", str(models)]
    refused = runner.invoke(promote_command, ["credit", BROKEN, *args])
    assert refused.exit_code == 1 and "model.onnx" in refused.output
    assert not (models / "credit" / PIN_FILE).exists(), "a broken version is never pinned"
    missing = runner.invoke(promote_command, ["credit", NEWER, *args])
    assert missing.exit_code == 1 and f"no version {NEWER}" in missing.output
    assert runner.invoke(promote_command, ["credit", *args]).exit_code == 2  # VERSION or --newest
    pinned = runner.invoke(promote_command, ["credit", original, *args])
    assert pinned.exit_code == 0, pinned.output
    assert (models / "credit" / PIN_FILE).read_text().strip() == original
    unpinned = runner.invoke(promote_command, ["credit", "--newest", *args])
    assert unpinned.exit_code == 0 and f"{BROKEN}, fails its checks" in unpinned.output
    assert not (models / "credit" / PIN_FILE).exists()
