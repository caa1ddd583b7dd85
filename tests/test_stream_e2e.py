"""End to end on a real broker: replayed history in, the stream's scores equal offline evaluation.

Real parts only: the embedded (or configured) Kafka broker, `riskstream worker` processes,
the shipped ONNX models, `riskstream evaluate` as the offline reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import json
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import msgspec
import numpy as np
import pytest
from stream_support import (
    StreamEnv,
    WorkerProcess,
    collect,
    evidence_of,
    metric_value,
    watching,
)

from riskstream import contracts
from riskstream.demo import BUNDLED_MODELS
from riskstream.history import load_market, load_transactions
from riskstream.replay import market_events, publish, transaction_events
from riskstream.scoring import load_model

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]

REPLAY_FROM, TEST_FROM, TEST_TO = date(2018, 7, 1), date(2018, 8, 8), date(2018, 8, 14)
TOLERANCE = 1e-5
STALL_AFTER = 180.0  # seconds without a new score record: the replay has stalled


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
    streamed: dict[str, float] = {}
    differing: list[tuple[float, str, float, float]] = []
    for event_id, expected in reference.items():
        for raw in scores[event_id]:
            got = contracts.decode_score(raw).score
            streamed[event_id] = got
            if abs(got - expected) > TOLERANCE:
                differing.append((abs(got - expected), event_id, got, expected))
    differing.sort(reverse=True)
    assert not differing, (
        f"{len(differing)} of {len(reference)} scores differ from offline by more than "
        f"{TOLERANCE}; worst (difference, event, stream, offline): {differing[:5]}"
    )
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


def _start_when_a_third_is_scored(
    watched: WorkerProcess, joining: WorkerProcess, sent: int, joined: list[float]
) -> threading.Thread:
    def watch() -> None:
        while not joined:
            with contextlib.suppress(OSError):
                scored = metric_value(
                    watched.metrics(), "riskstream_events_total", outcome="scored"
                )
                if scored >= sent // 3:
                    joining.start()
                    joined.append(scored)
                    return
            time.sleep(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@dataclasses.dataclass
class HandbookRun:
    """One replay of the handbook, consumed by two consumer groups at once: `single` has one
    worker; in `pair` a second worker joins when a third of the events are scored."""

    sent: int
    labels: int
    test_ids: set[str]
    single: StreamEnv
    pair: StreamEnv
    single_scores: dict[str, list[bytes]]
    pair_scores: dict[str, list[bytes]]
    single_metrics: str
    pair_metrics: list[str]
    joined_at: list[float]


@pytest.fixture(scope="module")
def handbook_run(kafka_bootstrap: str, handbook_csv: Path, tmp_path_factory) -> HandbookRun:
    workdir = tmp_path_factory.mktemp("handbook-stream")
    # A replay is throughput work: fuller produce requests save CPU in the workers and the
    # broker (docs/configuration.md); latency is not what these tests measure. (With the
    # default 5 ms linger the lone worker's fixture takes 629 s instead of 388 s: the embedded
    # broker lists a partition's batches on every fetch. The starvation that small batches
    # caused is pinned by tests/test_fetch_wait.py and tests/test_stall_health.py.)
    single = StreamEnv(
        kafka_bootstrap, BUNDLED_MODELS, workdir, extra={"RISKSTREAM_LINGER_MS": "50"}
    )
    pair = single.sibling()
    alone = WorkerProcess(single, "alone")
    first, second = WorkerProcess(pair, "first"), WorkerProcess(pair, "second")
    try:
        alone.start()
        first.start()
        alone.wait_assigned()
        first.wait_assigned()
        sent, labels, test_ids = replay_handbook(single, handbook_csv)
        joined: list[float] = []
        _start_when_a_third_is_scored(first, second, sent, joined)

        # A stall fails at once, with the workers' own account of it: /healthz turns 503
        # after RISKSTREAM_STALL_SECONDS, and no new score for STALL_AFTER ends the wait.
        def all_progressing() -> None:  # the second worker counts once it was started
            watching(alone, first, *([second] if joined else []))()

        single_scores = collect(
            single.settings(),
            single.settings().topics.scores,
            lambda seen: len(seen) >= sent,
            1400,
            event_id_of,
            all_progressing,
            STALL_AFTER,
            evidence_of(alone, first, second),
        )
        pair_scores = collect(
            pair.settings(),
            pair.settings().topics.scores,
            lambda seen: len(seen) >= sent,
            600,
            event_id_of,
            watching(first, second),
            STALL_AFTER,
            evidence_of(first, second),
        )
        second.assert_running()
        return HandbookRun(
            sent,
            labels,
            test_ids,
            single,
            pair,
            single_scores,
            pair_scores,
            alone.metrics(),
            [first.metrics(), second.metrics()],
            joined,
        )
    finally:
        for worker in (second, first, alone):
            worker.stop()


def test_handbook_replay_scores_equal_offline_with_one_worker(
    handbook_run: HandbookRun, fraud_model: Path, handbook_reference: dict[str, float]
) -> None:
    run, model = handbook_run, load_model(fraud_model)
    assert run.test_ids == set(handbook_reference)
    assert len(run.single_scores) == run.sent, "every replayed transaction is scored"
    assert all(len(raws) == 1 for raws in run.single_scores.values()), "one score per delivery"
    assert_scores_match(run.single_scores, handbook_reference, model.threshold)
    assert_alerts_are_exactly_the_scores_over_threshold(
        run.single, run.single_scores, model.threshold, model.name, model.version
    )
    topics = run.single.settings().topics
    text = run.single_metrics
    assert (
        metric_value(text, "riskstream_events_total", topic=topics.transactions, outcome="scored")
        == run.sent
    )
    assert (
        metric_value(
            text, "riskstream_events_total", topic=topics.transactions, outcome="forwarded"
        )
        == run.sent
    )
    assert (
        metric_value(text, "riskstream_events_total", topic=topics.labels, outcome="label")
        == run.labels
    )
    assert metric_value(text, "riskstream_events_total", outcome="dead_letter") == 0


def test_handbook_parity_holds_when_a_second_worker_joins_mid_stream(
    handbook_run: HandbookRun, fraud_model: Path, handbook_reference: dict[str, float]
) -> None:
    run, model = handbook_run, load_model(fraud_model)
    assert run.joined_at and run.joined_at[0] < run.sent, "the second worker joined mid-stream"
    assert len(run.pair_scores) == run.sent, "nothing lost across the rebalance"
    assert_scores_match(run.pair_scores, handbook_reference, model.threshold)
    first, second = (
        metric_value(text, "riskstream_events_total", outcome="scored") for text in run.pair_metrics
    )
    assert second > 0, "the second worker took partitions over and scored"
    records = sum(len(raws) for raws in run.pair_scores.values())
    assert first + second == records, "every score record was counted by the worker that made it"
    assert_alerts_are_exactly_the_scores_over_threshold(
        run.pair, run.pair_scores, model.threshold, model.name, model.version
    )


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
