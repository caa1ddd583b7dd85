"""End to end on a real broker: replayed history in, the stream's scores equal offline evaluation.

Real parts only: the embedded (or configured) Kafka broker, `riskstream worker` processes,
the shipped ONNX models, `riskstream evaluate` as the offline reference.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import msgspec
import numpy as np
import pytest
from stream_support import StreamEnv, WorkerProcess, collect, metric_value

from riskstream import contracts
from riskstream.demo import BUNDLED_MODELS
from riskstream.history import load_market, load_transactions
from riskstream.replay import market_events, publish, transaction_events
from riskstream.scoring import load_model

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]

REPLAY_FROM, TEST_FROM, TEST_TO = date(2018, 7, 1), date(2018, 8, 8), date(2018, 8, 14)
TOLERANCE = 1e-5


def offline_scores(model_dir: Path, data: Path, tmp_path: Path, *extra: str) -> dict[str, float]:
    """`riskstream evaluate --scores-out` for the same window: the reference scores."""
    out = tmp_path / f"offline-{model_dir.name}.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "riskstream",
            "evaluate",
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--scores-out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    json.loads(done.stdout)  # metrics are one JSON object
    with out.open() as handle:
        return {row["event_id"]: float(row["score"]) for row in csv.DictReader(handle)}


def event_id_of(value: bytes, key: bytes | None) -> str:
    return msgspec.json.decode(value)["event_id"]


def assert_scores_match(
    scores: dict[str, list[bytes]], reference: dict[str, float], threshold: float
) -> dict[str, float]:
    """Every reference event scored, every delivery equal to the offline score."""
    missing = set(reference) - set(scores)
    assert not missing, f"{len(missing)} events were never scored, e.g. {sorted(missing)[:5]}"
    worst = 0.0
    streamed: dict[str, float] = {}
    for event_id, expected in reference.items():
        for raw in scores[event_id]:
            got = contracts.decode_score(raw).score
            worst = max(worst, abs(got - expected))
            streamed[event_id] = got
    assert worst <= TOLERANCE, f"largest difference stream vs offline: {worst:.3g}"
    return streamed


def assert_alerts_are_exactly_the_scores_over_threshold(
    env: StreamEnv, scores: dict[str, list[bytes]], threshold: float, model: str, version: str
) -> None:
    over = {
        event_id
        for event_id, raws in scores.items()
        if contracts.decode_score(raws[0]).score >= threshold
    }
    alerts = collect(
        env.settings(),
        env.settings().topics.alerts,
        lambda seen: set(seen) >= over,
        60,
        event_id_of,
    )
    assert set(alerts) == over
    for event_id, raws in alerts.items():
        for raw in raws:
            alert = contracts.decode_alert(raw)
            assert alert.alert_id == contracts.make_alert_id(model, version, event_id)
            assert alert.threshold == pytest.approx(threshold)
            assert alert.reasons, "an alert says which features drove it"


def replay_handbook(env: StreamEnv, path: Path) -> tuple[int, int, set[str]]:
    """Publish 2018-07-01 → 08-14 with fraud labels; returns (transactions, labels, test ids)."""
    history = load_transactions(path)
    rows = np.flatnonzero(history.between(REPLAY_FROM, TEST_TO))
    test_ids = {str(i) for i in history.transaction_id[history.between(TEST_FROM, TEST_TO)]}
    settings = env.settings()
    events = transaction_events(
        history, rows, settings.topics.transactions, settings.topics.labels, "fraud", 7.0
    )
    stats = asyncio.run(publish(settings, events, show_progress=False))
    return stats.transactions, stats.labels, test_ids


@pytest.fixture(scope="module")
def fraud_model() -> Path:
    return BUNDLED_MODELS / "fraud"


@pytest.fixture(scope="module")
def handbook_reference(fraud_model: Path, handbook_csv: Path, tmp_path_factory) -> dict[str, float]:
    return offline_scores(
        fraud_model,
        handbook_csv,
        tmp_path_factory.mktemp("offline"),
        "--from",
        TEST_FROM.isoformat(),
        "--to",
        TEST_TO.isoformat(),
        "--keep-known-compromised",
    )


def test_handbook_replay_scores_equal_offline_with_one_worker(
    kafka_bootstrap: str,
    handbook_csv: Path,
    fraud_model: Path,
    handbook_reference: dict[str, float],
    tmp_path: Path,
) -> None:
    env = StreamEnv(kafka_bootstrap, BUNDLED_MODELS, tmp_path)
    model = load_model(fraud_model)
    worker = WorkerProcess(env).start()
    try:
        worker.wait_assigned()
        sent, labels, test_ids = replay_handbook(env, handbook_csv)
        assert test_ids == set(handbook_reference)
        scores = collect(
            env.settings(),
            env.settings().topics.scores,
            lambda seen: len(seen) >= sent,
            1500,
            event_id_of,
            worker.assert_running,
        )
        assert len(scores) == sent, "every replayed transaction is scored"
        assert all(len(raws) == 1 for raws in scores.values()), "one score per delivery"
        assert_scores_match(scores, handbook_reference, model.threshold)
        assert_alerts_are_exactly_the_scores_over_threshold(
            env, scores, model.threshold, model.name, model.version
        )
        text = worker.metrics()
        topics = env.settings().topics
        assert (
            metric_value(
                text, "riskstream_events_total", topic=topics.transactions, outcome="scored"
            )
            == sent
        )
        assert (
            metric_value(
                text, "riskstream_events_total", topic=topics.transactions, outcome="forwarded"
            )
            == sent
        )
        assert (
            metric_value(text, "riskstream_events_total", topic=topics.labels, outcome="label")
            == labels
        )
        assert metric_value(text, "riskstream_events_total", outcome="dead_letter") == 0
    finally:
        worker.stop()


def test_handbook_parity_holds_when_a_second_worker_joins_mid_stream(
    kafka_bootstrap: str,
    handbook_csv: Path,
    fraud_model: Path,
    handbook_reference: dict[str, float],
    tmp_path: Path,
) -> None:
    env = StreamEnv(kafka_bootstrap, BUNDLED_MODELS, tmp_path)
    model = load_model(fraud_model)
    first, second = WorkerProcess(env, "first"), WorkerProcess(env, "second")
    try:
        first.start().wait_assigned()
        sent, _, _ = replay_handbook(env, handbook_csv)
        joined = []

        def join_when_a_third_is_scored(seen: dict[str, list[bytes]]) -> bool:
            if not joined and len(seen) >= sent // 3:
                second.start()
                joined.append(len(seen))
            return len(seen) >= sent

        scores = collect(
            env.settings(),
            env.settings().topics.scores,
            join_when_a_third_is_scored,
            1500,
            event_id_of,
            first.assert_running,
        )
        assert joined, "the second worker joined mid-stream"
        second.assert_running()
        assert len(scores) == sent
        assert_scores_match(scores, handbook_reference, model.threshold)
        scored_by_second = metric_value(
            second.metrics(), "riskstream_events_total", outcome="scored"
        )
        assert scored_by_second > 0, "the second worker took over partitions and scored"
    finally:
        second.stop()
        first.stop()


def test_market_replay_scores_equal_offline(
    kafka_bootstrap: str, market_csvs: tuple[Path, Path], tmp_path: Path
) -> None:
    gspc, vix = market_csvs
    model_dir = BUNDLED_MODELS / "market"
    reference = offline_scores(model_dir, gspc, tmp_path, "--vix", str(vix))
    env = StreamEnv(kafka_bootstrap, BUNDLED_MODELS, tmp_path, models="market")
    model = load_model(model_dir)
    worker = WorkerProcess(env).start()
    try:
        worker.wait_assigned()
        history = load_market(gspc, vix)
        settings = env.settings()
        rows = np.arange(len(history))
        asyncio.run(
            publish(
                settings, market_events(history, rows, settings.topics.market), show_progress=False
            )
        )
        scores = collect(
            settings,
            settings.topics.scores,
            lambda seen: len(seen) >= len(rows),
            600,
            event_id_of,
            worker.assert_running,
        )
        assert len(scores) == len(rows)
        assert_scores_match(scores, reference, model.threshold)
    finally:
        worker.stop()
