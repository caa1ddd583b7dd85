"""Helpers for tests that run real `riskstream worker` processes against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from riskstream.broker import free_port
from riskstream.config import Settings


@dataclasses.dataclass
class StreamEnv:
    """Unique topic names and app id, so tests can share one broker without interfering."""

    bootstrap: str
    models_dir: Path
    workdir: Path
    models: str = "fraud"
    partitions: int = 4
    suffix: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:8])
    inputs: str = ""  # suffix of the input topics; empty: the same as `suffix`
    extra: dict[str, str] = dataclasses.field(default_factory=dict)  # more worker settings

    def sibling(self) -> StreamEnv:
        """Another consumer group on the same input topics, with outputs of its own."""
        return dataclasses.replace(
            self, suffix=uuid.uuid4().hex[:8], inputs=self.inputs or self.suffix
        )

    def environ(self) -> dict[str, str]:
        s = self.suffix
        i = self.inputs or self.suffix
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "RISKSTREAM_MODELS_DIR": str(self.models_dir),
            "RISKSTREAM_MODELS": self.models,
            # The window models alone unless a test asks for tabular ones (the shipped models
            # include one); tests/test_tabular_stream.py serves what it finds.
            "RISKSTREAM_TABULAR_MODELS": "",
            "RISKSTREAM_APP_ID": f"riskstream-test-{s}",
            "RISKSTREAM_PARTITIONS": str(self.partitions),
            "RISKSTREAM_TOPIC_TRANSACTIONS": f"transactions-{i}",
            "RISKSTREAM_TOPIC_MARKET": f"market-{i}",
            "RISKSTREAM_TOPIC_LABELS": f"labels-{i}",
            "RISKSTREAM_TOPIC_REQUESTS": f"requests-{i}",
            "RISKSTREAM_TOPIC_SCORES": f"scores-{s}",
            "RISKSTREAM_TOPIC_ALERTS": f"alerts-{s}",
            "RISKSTREAM_TOPIC_DLQ": f"dlq-{s}",
            "RISKSTREAM_SESSION_TIMEOUT_S": "6",
            "RISKSTREAM_REBALANCE_TIMEOUT_S": "1",
            "RISKSTREAM_HEARTBEAT_INTERVAL_S": "0.5",
            "RISKSTREAM_LOG_LEVEL": "info",
            # A partition that stands still this long makes /healthz 503, and the tests fail
            # at once with the worker's own account (see WorkerProcess.assert_not_stalled).
            "RISKSTREAM_STALL_SECONDS": "120",
            **self.extra,
        }

    def settings(self) -> Settings:
        return Settings.from_env(self.environ())


class WorkerProcess:
    """One `riskstream worker` child process with its own metrics port and log file."""

    def __init__(self, env: StreamEnv, name: str = "worker") -> None:
        self.env = env
        self.name = name
        self.metrics_port = free_port()
        self.log_path = env.workdir / f"{name}-{self.metrics_port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        environ = {
            **os.environ,
            **self.env.environ(),
            "RISKSTREAM_METRICS_PORT": str(self.metrics_port),
            "RISKSTREAM_DATA_DIR": str(self.env.workdir / f"data-{self.name}"),
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "riskstream", "worker"],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_assigned(self, timeout: float = 60.0) -> None:
        """Until /healthz reports partitions assigned (the group join has finished)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running()
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.metrics_port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as response:
                    body = response.read().decode()
                    if re.search(r'"assigned_partitions":\s*[1-9]', body):
                        return
            time.sleep(0.3)
        raise AssertionError(f"{self.name} got no partitions within {timeout} s:\n{self.log()}")

    def assert_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise AssertionError(f"{self.name} is not running (exit {code}):\n{self.log()[-5000:]}")

    def health(self) -> tuple[int, dict]:
        """/healthz: (status code, body); (0, {}) when it does not answer."""
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")
        except (OSError, ValueError):
            return 0, {}

    def assert_not_stalled(self) -> None:
        """Running, and not reporting partitions that stopped moving (RISKSTREAM_STALL_SECONDS)."""
        self.assert_running()
        status, body = self.health()
        if status == 503 and body.get("stalled_partitions"):
            raise AssertionError(f"{self.name} stalled:\n{self.evidence()}")

    def evidence(self) -> str:
        """What the worker says about its progress: /healthz, stall warnings, recovery."""
        lines = self.log().splitlines()
        stalls = [line for line in lines if "has not moved" in line][-8:]
        recovery = _last_recovery_report(lines)
        status, body = self.health()
        return "\n".join(
            [
                f"--- {self.name} /healthz {status}: {json.dumps(body)[:2000]}",
                f"--- {self.name} last stall warnings:",
                *stalls,
                f"--- {self.name} last recovery report:",
                *recovery,
                f"--- {self.name} log tail:",
                *lines[-15:],
            ]
        )

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _last_recovery_report(lines: list[str]) -> list[str]:
    """Faust's last "still fetching changelog topics" line and the table that follows it."""
    starts = [i for i, line in enumerate(lines) if "fetching changelog" in line.lower()]
    if not starts:
        return ["(none)"]
    return lines[starts[-1] : starts[-1] + 25]


def watching(*workers: WorkerProcess) -> Callable[[], None]:
    """An on-idle check for `collect`: every worker runs and none reports a stall."""

    def check() -> None:
        for worker in workers:
            worker.assert_not_stalled()

    return check


def evidence_of(*workers: WorkerProcess) -> Callable[[], str]:
    return lambda: "\n".join(worker.evidence() for worker in workers)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            total += float(value)
    return total


async def _collect(
    settings: Settings,
    topic: str,
    done: Callable[[dict[str, list[bytes]]], bool],
    timeout: float,
    key_of: Callable[[bytes, bytes | None], str],
    on_idle: Callable[[], None] | None = None,
    stall_after: float | None = None,
    evidence: Callable[[], str] | None = None,
) -> dict[str, list[bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        **settings.kafka.aiokafka_kwargs(),
        group_id=None,
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    seen: dict[str, list[bytes]] = {}
    try:
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline and not done(seen):
            batches = await consumer.getmany(timeout_ms=500, max_records=20000)
            if batches:
                last_new = time.monotonic()
            elif on_idle is not None:
                on_idle()
            if stall_after is not None and time.monotonic() - last_new > stall_after:
                raise AssertionError(
                    f"no new record on {topic} for {stall_after:.0f} s ({len(seen)} keys so "
                    f"far):\n{evidence() if evidence else ''}"
                )
            for messages in batches.values():
                for message in messages:
                    seen.setdefault(key_of(message.value, message.key), []).append(message.value)
    finally:
        await consumer.stop()
    return seen


def collect(
    settings: Settings,
    topic: str,
    done: Callable[[dict[str, list[bytes]]], bool],
    timeout: float,
    key_of: Callable[[bytes, bytes | None], str],
    on_idle: Callable[[], None] | None = None,
    stall_after: float | None = None,
    evidence: Callable[[], str] | None = None,
) -> dict[str, list[bytes]]:
    """Read `topic` from the start until `done(records by key)` or the timeout; with
    `stall_after`, fail as soon as that many seconds pass without a new record, with
    `evidence()` in the message."""
    return asyncio.run(
        _collect(settings, topic, done, timeout, key_of, on_idle, stall_after, evidence)
    )


@contextlib.contextmanager
def running(*workers: WorkerProcess) -> Iterator[tuple[WorkerProcess, ...]]:
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()
