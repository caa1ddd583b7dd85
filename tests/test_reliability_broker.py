"""Broker trouble: not there at start, frozen mid-stream, killed and back empty.

Each test runs its own embedded broker (the session broker must stay up for the others).

- Not there at start: the worker retries with exponential backoff, saying why, answers
  /healthz with 503 "waiting for broker"; once a broker listens there it joins and scores.
- Frozen (SIGSTOP) mid-stream, then thawed: /healthz turns 503 and the log says the broker does
  not answer; afterwards every event is scored exactly as offline, by the same process.
- Killed and restarted: the embedded broker keeps everything in memory, so it comes back
  without topics, committed offsets or changelogs. The worker logs the outage, reports
  unhealthy, then exits with code 4 naming the lost topics; restarted (as a supervisor would),
  it recreates the topics and scores the events that follow exactly as offline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from stream_support import StreamEnv, WorkerProcess, collect, metric_value
from test_reliability_crash import (
    assert_all_scored_as_offline,
    event_id_of,
    own_terminals,
    reference,
    replay_labels_first,
)

from riskstream.app import EXIT_TOPICS_LOST
from riskstream.broker import EmbeddedBroker, free_port
from riskstream.demo import BUNDLED_MODELS
from riskstream.history import TransactionHistory
from riskstream.replay import publish
from riskstream.scoring import load_model
from riskstream.simulate import generate_transactions

pytestmark = [pytest.mark.broker, pytest.mark.crash, pytest.mark.slow]


def healthz(worker: WorkerProcess) -> tuple[int | None, dict]:
    url = f"http://127.0.0.1:{worker.metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return None, {}


def wait_for(what: str, condition: Callable[[], bool], timeout: float, worker: WorkerProcess):
    deadline = time.monotonic() + timeout
    while not condition():
        worker.assert_running()
        assert time.monotonic() < deadline, f"{what} within {timeout} s:\n{worker.log()[-4000:]}"
        time.sleep(0.3)


def rows_of(history: TransactionHistory, rows: np.ndarray) -> TransactionHistory:
    return dataclasses.replace(
        history,
        **{
            field.name: getattr(history, field.name)[rows]
            for field in dataclasses.fields(history)
            if isinstance(getattr(history, field.name), np.ndarray)
        },
    )


def replay(env: StreamEnv, history: TransactionHistory, worker: WorkerProcess) -> None:
    """Labels first, then the transactions (see test_reliability_crash for why)."""
    transactions, _ = replay_labels_first(env, history, worker)
    asyncio.run(publish(env.settings(), iter(transactions), show_progress=False))


def scores_of(env: StreamEnv, n: int, worker: WorkerProcess) -> dict[str, list[bytes]]:
    settings = env.settings()
    return collect(
        settings,
        settings.topics.scores,
        lambda seen: len(seen) >= n,
        600,
        event_id_of,
        worker.assert_running,
    )


def scored(worker: WorkerProcess) -> float:
    try:
        return metric_value(worker.metrics(), "riskstream_events_total", outcome="scored")
    except OSError:
        return 0.0


def test_a_worker_started_before_its_broker_retries_with_backoff_then_scores(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = StreamEnv(f"127.0.0.1:{port}", BUNDLED_MODELS, tmp_path)
    history = own_terminals(generate_transactions(n_customers=40, n_terminals=80, days=30, seed=3))
    model = load_model(BUNDLED_MODELS / "fraud")
    worker = WorkerProcess(env)
    broker = EmbeddedBroker("127.0.0.1", port)
    try:
        worker.start()
        expected = reference(history, model)
        wait_for("three retries", lambda: worker.log().count("retrying in") >= 3, 60, worker)
        retries = re.findall(
            r"WARNING .*no Kafka broker answers at (\S+): .*\((\w+).*retrying in ([\d.]+) s",
            worker.log(),
        )
        assert retries[0][0] == f"127.0.0.1:{port}"
        assert all(cause for _, cause, _ in retries), "each retry line names the cause"
        delays = [float(delay) for _, _, delay in retries[:3]]
        assert delays == sorted(delays) and delays[2] >= 4 * delays[0], f"backoff: {delays}"
        status, body = healthz(worker)
        assert status == 503 and body["state"] == "waiting for broker", body
        assert metric_value(worker.metrics(), "riskstream_worker_healthy") == 0
        broker.start()
        worker.wait_assigned(120)
        replay(env, history, worker)
        scores = scores_of(env, len(history), worker)
        assert_all_scored_as_offline(scores, expected)
        wait_for("healthy", lambda: healthz(worker)[0] == 200, 30, worker)
        assert worker.log().count("topics ready") == 1, "the same process did it all"
    finally:
        worker.stop()
        broker.stop()


def test_broker_frozen_then_killed_mid_stream(tmp_path: Path) -> None:
    port = free_port()
    broker = EmbeddedBroker("127.0.0.1", port)
    env = StreamEnv(f"127.0.0.1:{port}", BUNDLED_MODELS, tmp_path)
    history = own_terminals(  # dense, see test_reliability_crash
        generate_transactions(n_customers=4_000, n_terminals=8_000, days=2, seed=5)
    )
    model = load_model(BUNDLED_MODELS / "fraud")
    middle = len(history) // 2
    first = rows_of(history, np.arange(middle))
    worker = WorkerProcess(env)
    restarted = WorkerProcess(env, "restarted")
    try:
        broker.start()
        worker.start()
        expected_first = reference(first, model)
        worker.wait_assigned(120)
        assert worker.process is not None
        pid = worker.process.pid

        # --- frozen: unhealthy and logged, then everything scored by the same process ---------
        replay(env, first, worker)
        wait_for("a third scored", lambda: scored(worker) >= middle / 3, 300, worker)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            wait_for("503 while frozen", lambda: healthz(worker)[0] == 503, 60, worker)
            reasons = healthz(worker)[1]["reasons"]
            wait_for(
                "the outage in the log",
                lambda: "cannot reach the broker" in worker.log(),
                60,
                worker,
            )
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert "no answer from the Kafka broker" in reasons[0]
        scores = scores_of(env, middle, worker)
        assert_all_scored_as_offline(scores, expected_first)
        assert worker.process.pid == pid and worker.log().count("topics ready") == 1
        wait_for("healthy again", lambda: healthz(worker)[0] == 200, 60, worker)

        # --- killed, back empty: exit 4, restart, new events scored ---------------------------
        broker.kill()
        wait_for(
            "unhealthy",
            lambda: metric_value(worker.metrics(), "riskstream_worker_healthy") == 0,
            30,
            worker,
        )
        assert re.search(r"ERROR .*(Unable connect|Connection|NodeNotReady)", worker.log())
        broker.start()
        exit_code = worker.process.wait(90)
        assert exit_code == EXIT_TOPICS_LOST
        # Which of its topics the broker still lacks depends on which ones the clients' metadata
        # requests recreated first (Tansu auto-creates a topic a request names).
        lost = r"CRITICAL .*no longer has topics \[.*(transactions|labels|scores|alerts|dlq)-"
        assert re.search(lost, worker.log())

        # --- the restarted worker recreates the topics and scores the events that follow ---
        # Tansu took the old worker's last writes without listing the topics; the recreated
        # topics' offsets collide with them (UnknownError) until the retries pass them.
        second = rows_of(history, np.arange(middle, len(history)))
        expected_second = reference(second, model)
        restarted.start()
        restarted.wait_assigned(120)
        replay(env, second, restarted)
        scores = scores_of(env, len(second), restarted)
        assert_all_scored_as_offline(scores, expected_second)
        assert restarted.log().count("topics ready") == 1, "no exit 5 and restart in between"
        wait_for("healthy", lambda: healthz(restarted)[0] == 200, 60, restarted)
    finally:
        worker.stop()
        restarted.stop()
        broker.stop()
