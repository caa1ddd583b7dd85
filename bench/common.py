"""What every benchmark phase shares: worker processes, /proc readings, reading topics back,
and the command-line options and result files of the benchmark scripts (run.py, handbook.py).

Kept free of the test suite's helpers on purpose: the benchmark must keep working while tests
change, and it needs CPU-time and RSS readings that tests have no use for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from riskstream.broker import free_port
from riskstream.demo import BUNDLED_MODELS

BENCH_DIR = Path(__file__).resolve().parent
PARTITIONS = 4
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

F = TypeVar("F", bound=Callable[..., Any])


def short_id() -> str:
    return uuid.uuid4().hex[:8]


def cpu_times(pid: int | str = "self") -> tuple[float, float]:
    """User and system CPU seconds of a process so far (from /proc, no psutil needed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int | str = "self") -> float:
    return sum(cpu_times(pid))


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


@dataclasses.dataclass(frozen=True)
class Spread:
    """Median and range of repeated measurements."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def text(self, fmt: str = ",.0f") -> str:
        if len(self.values) == 1:
            return format(self.median, fmt)
        return f"{self.median:{fmt}} ({self.low:{fmt}}–{self.high:{fmt}})"


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            total += float(value)
    return total


@dataclasses.dataclass(frozen=True)
class BenchTopics:
    """One worker deployment's names: its own consumer group and outputs, shared inputs."""

    bootstrap: str
    transactions: str
    labels: str
    app_id: str = dataclasses.field(default_factory=lambda: f"bench-{short_id()}")
    # Tansu completes a group join only after the rebalance timeout: long enough for workers
    # started together to join in one generation, short enough not to matter.
    rebalance_timeout_s: float = 1.0

    @property
    def scores(self) -> str:
        return f"{self.app_id}-scores"

    @property
    def by_terminal(self) -> str:
        """Stage 1's output: its records' timestamps say when stage 1 handled each event."""
        return f"{self.app_id}-fraud-by-terminal"

    def environ(self) -> dict[str, str]:
        """Like the tests' StreamEnv: short group timeouts so joins take about a second."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "RISKSTREAM_MODELS_DIR": str(BUNDLED_MODELS),
            "RISKSTREAM_MODELS": "fraud",
            "RISKSTREAM_TABULAR_MODELS": "",  # fraud alone, as the ceiling does
            "RISKSTREAM_APP_ID": self.app_id,
            "RISKSTREAM_PARTITIONS": str(PARTITIONS),
            "RISKSTREAM_TOPIC_TRANSACTIONS": self.transactions,
            "RISKSTREAM_TOPIC_LABELS": self.labels,
            "RISKSTREAM_TOPIC_MARKET": f"{self.app_id}-market",
            "RISKSTREAM_TOPIC_SCORES": self.scores,
            "RISKSTREAM_TOPIC_ALERTS": f"{self.app_id}-alerts",
            "RISKSTREAM_TOPIC_DLQ": f"{self.app_id}-dlq",
            "RISKSTREAM_SESSION_TIMEOUT_S": "6",
            "RISKSTREAM_REBALANCE_TIMEOUT_S": str(self.rebalance_timeout_s),
            "RISKSTREAM_HEARTBEAT_INTERVAL_S": "0.5",
            "RISKSTREAM_LOG_LEVEL": "info",
        }


@dataclasses.dataclass(frozen=True)
class WorkerSample:
    """One poll of one worker: what it had done and spent by then."""

    at: float
    cpu_user: float
    cpu_system: float
    rss: int
    scored: float
    assigned: int
    rebalancing: bool

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_system


class WorkerProcess:
    """A `python -m riskstream worker` child with its own metrics port and log file."""

    def __init__(self, topics: BenchTopics, workdir: Path, name: str) -> None:
        self.topics = topics
        self.name = name
        self.metrics_port = free_port()
        self.log_path = workdir / f"{topics.app_id}-{name}.log"
        self.data_dir = workdir / f"{topics.app_id}-{name}-data"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    def start(self) -> WorkerProcess:
        environ = {
            **os.environ,
            **self.topics.environ(),
            "RISKSTREAM_METRICS_PORT": str(self.metrics_port),
            "RISKSTREAM_METRICS_HOST": "127.0.0.1",
            "RISKSTREAM_DATA_DIR": str(self.data_dir),
        }
        command = [sys.executable, "-m", "riskstream", "worker"]
        with self.log_path.open("ab") as log:
            self.started_at = time.time()
            self.process = subprocess.Popen(
                command,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def check_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker {self.name} exited early; log {self.log_path}:\n{tail}")

    def _get(self, path: str) -> str | None:
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{self.metrics_port}{path}"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        return None

    def health(self) -> dict | None:
        """The /healthz details (answered with 200 or 503), None while it does not listen."""
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())
        except OSError:
            return None

    def metrics(self) -> str:
        return self._get("/metrics") or ""

    def sample(self, health: bool = True) -> WorkerSample:
        """CPU, RSS and scored count; with `health`, also what /healthz says about partitions."""
        self.check_running()
        details = (self.health() or {}) if health else {}
        scored = metric_value(self.metrics(), "riskstream_events_total", outcome="scored")
        user, system = cpu_times(self.pid)
        return WorkerSample(
            at=time.time(),
            cpu_user=user,
            cpu_system=system,
            rss=rss_bytes(self.pid),
            scored=scored,
            assigned=int(details.get("assigned_partitions", 0)),
            rebalancing=bool(details.get("rebalancing", False)),
        )

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclasses.dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes
    timestamp_ms: int
    partition: int


async def _read_topic(bootstrap: str, topic: str) -> list[Record]:
    from riskstream.config import KafkaSettings
    from riskstream.kafka import read_to_end

    messages = await read_to_end(KafkaSettings(bootstrap_servers=bootstrap), topic)
    return [Record(m.key, m.value, m.timestamp, m.partition) for m in messages]


def read_topic(bootstrap: str, topic: str) -> list[Record]:
    """Every record in `topic` up to its current end (not a live tail)."""
    return asyncio.run(_read_topic(bootstrap, topic))


def stop_all(processes: Sequence[WorkerProcess]) -> None:
    for process in processes:
        process.stop()


# ------------------------------------------------------------------ the scripts' command lines
# run.py and handbook.py take the same kinds of options (worded for what each measures) and save
# their results the same way, so a reader of one script's output can read the other's.


def quick_option(help: str) -> Callable[[F], F]:
    return click.option("--quick", is_flag=True, help=help)


def events_option(help: str) -> Callable[[F], F]:
    return click.option("--events", type=click.IntRange(min=1000), help=help)


def rates_option(help: str) -> Callable[[F], F]:
    """--rate, repeatable: one offered rate a timed phase per value."""
    return click.option("--rate", "rates", type=click.FloatRange(min=1), multiple=True, help=help)


def seconds_per_rate_option(name: str, help: str) -> Callable[[F], F]:
    return click.option(name, type=click.FloatRange(min=3), help=help)


def results_out_option(help: str) -> Callable[[F], F]:
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), help=help)


def run_and_save(
    out: Path,
    measure: Callable[[Console], dict[str, Any]],
    render: Callable[[dict[str, Any], Console], None],
    as_json: Callable[[dict[str, Any]], str],
    what_is_kept: str,
) -> None:
    """Run `measure`, print its table and keep both the table (report.txt) and the numbers
    (results.json) in `out`: a run is only worth its cost if it can be compared later."""
    console = Console(record=True, width=160)
    started = time.monotonic()
    results = measure(console)
    results["seconds"] = time.monotonic() - started
    render(results, console)
    (out / "results.json").write_text(as_json(results))
    console.save_text(str(out / "report.txt"))
    console.print(f"\n[dim]{what_is_kept} in {out}[/]")
