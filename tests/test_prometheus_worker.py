"""A real Prometheus scrapes a real worker during a short replay: every dashboard and rule
expression evaluates, and the panels an operator relies on show data."""

from __future__ import annotations

import asyncio
import time
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_support import (
    CORE_PANELS,
    assert_expressions_evaluate,
    dashboard_expressions,
    panels_with_data,
    prometheus_binary,
    rule_expressions,
    running_prometheus,
)
from stream_support import StreamEnv, WorkerProcess, collect, metric_value

from riskstream.demo import BUNDLED_MODELS
from riskstream.replay import publish, transaction_events
from riskstream.simulate import generate_transactions

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(prometheus_binary() is None, reason="prometheus is not installed"),
]

BAD_MESSAGES = [b"not json", b'{"transaction_id": 1}', b"\xff\xfe", b"[]"]


async def _send_bad(env: StreamEnv) -> None:
    settings = env.settings()
    producer = AIOKafkaProducer(**settings.kafka.aiokafka_kwargs())
    await producer.start()
    try:
        for value in BAD_MESSAGES:
            await producer.send_and_wait(settings.topics.transactions, value, key=b"c1")
    finally:
        await producer.stop()


def test_dashboard_and_rules_work_against_a_real_worker(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = StreamEnv(kafka_bootstrap, BUNDLED_MODELS, tmp_path)
    worker = WorkerProcess(env).start()
    try:
        worker.wait_assigned()
        with running_prometheus([f"127.0.0.1:{worker.metrics_port}"]) as prom:
            prom.wait_for_targets_up()
            history = generate_transactions(300, 600, date(2025, 1, 1), 10, seed=11)
            settings = env.settings()
            events = transaction_events(
                history,
                np.arange(len(history)),
                settings.topics.transactions,
                settings.topics.labels,
                "fraud",
                7.0,
            )
            asyncio.run(publish(settings, events, rate=2000, show_progress=False))
            asyncio.run(_send_bad(env))
            collect(
                settings,
                settings.topics.dlq,
                lambda seen: len(seen) >= 1,
                60,
                lambda value, key: "dlq",
                worker.assert_running,
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                scored = metric_value(worker.metrics(), "riskstream_events_total", outcome="scored")
                if scored >= len(history):
                    break
                time.sleep(1)
            time.sleep(3)  # two more scrapes after the last events
            assert_expressions_evaluate(prom, dashboard_expressions() + rule_expressions())
            with_data = panels_with_data(prom)
            empty = [title for title in CORE_PANELS if not with_data.get(title)]
            assert not empty, f"core panels without data: {empty}"
            assert prom.has_data('riskstream_dead_letters_total{reason="not_json"}')
    finally:
        worker.stop()
