"""`riskstream demo`: the whole loop on one machine, with nothing but this package installed.

Starts the embedded broker, one worker process and a paced replay of synthetic (or given)
transactions, and shows a live view of throughput and the latest alerts until Ctrl-C; then
stops every child process it started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import click
import numpy as np

from riskstream.config import Settings

BUNDLED_MODELS = Path(__file__).resolve().parent / "models"


def default_models_dir(settings: Settings) -> Path:
    """The user's models when there are any, else the models shipped with the package."""
    if (settings.models_dir / "fraud").is_dir():
        return settings.models_dir
    return BUNDLED_MODELS


@dataclasses.dataclass
class LiveCounts:
    """What the live view shows, fed by a consumer of risk.scores and risk.alerts."""

    scores: int = 0
    alerts: int = 0
    by_model: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    started: float = dataclasses.field(default_factory=time.monotonic)
    recent: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=12)
    )
    window: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=64)
    )

    def rates(self) -> tuple[float, float]:
        """Scores/s and alerts/s over the last few seconds."""
        now = time.monotonic()
        self.window.append((now, self.scores, self.alerts))
        while len(self.window) > 2 and now - self.window[0][0] > 5.0:
            self.window.popleft()
        then, scores, alerts = self.window[0]
        span = max(now - then, 1e-9)
        return (self.scores - scores) / span, (self.alerts - alerts) / span


def _render(counts: LiveCounts, settings: Settings, metrics_url: str, replayed: list[int]):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    scores_rate, alerts_rate = counts.rates()
    head = Table.grid(padding=(0, 3))
    head.add_row(
        f"[bold]{replayed[0]:,}[/] events sent",
        f"[bold]{counts.scores:,}[/] scored ([cyan]{scores_rate:,.0f}/s[/])",
        f"[bold red]{counts.alerts:,}[/] alerts ([red]{alerts_rate:,.1f}/s[/])",
        f"up {time.monotonic() - counts.started:,.0f} s",
    )
    models = " · ".join(f"{name} {n:,}" for name, n in sorted(counts.by_model.items()))
    head.add_row(f"[dim]scores by model:[/] {models or '-'}", "", "", "")
    alerts = Table(expand=True, title="latest alerts", title_justify="left")
    widths = {"event time": 19, "model": 6, "severity": 8, "score": 5, "event": 9, "entity": 9}
    for column, width in widths.items():
        alerts.add_column(column, no_wrap=True, min_width=width)
    alerts.add_column("why", no_wrap=True, overflow="ellipsis", ratio=1)
    for alert in reversed(counts.recent):
        why = ", ".join(f"{r.feature}={_shown(r.value)}" for r in list(alert.reasons)[:2])
        alerts.add_row(
            alert.event_timestamp,
            alert.model,
            alert.severity,
            f"{alert.score:.3f}",
            alert.event_id,
            alert.entity_id,
            why,
        )
    footer = (
        f"[dim]broker {settings.kafka.bootstrap_servers} · metrics {metrics_url} · "
        f"`riskstream alerts --follow` in another shell · Ctrl-C to stop[/]"
    )
    return Panel(Group(head, alerts, footer), title="riskstream demo")


def _shown(value: float | None) -> str:
    return "null" if value is None else f"{value:.3g}"


async def _watch(settings: Settings, counts: LiveCounts, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer

    from riskstream import contracts

    consumer = AIOKafkaConsumer(
        settings.topics.scores,
        settings.topics.alerts,
        **settings.kafka.aiokafka_kwargs(),
        group_id=None,
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for tp, messages in batches.items():
                if tp.topic == settings.topics.scores:
                    counts.scores += len(messages)
                    for message in messages:
                        with contextlib.suppress(contracts.ContractError):
                            counts.by_model[contracts.decode_score(message.value).model] += 1
                    continue
                counts.alerts += len(messages)
                for message in messages[-12:]:
                    with contextlib.suppress(contracts.ContractError):
                        counts.recent.append(contracts.decode_alert(message.value))
    finally:
        await consumer.stop()


def _synthetic_events(settings: Settings, seed: int) -> Iterator:
    from riskstream.replay import transaction_events
    from riskstream.simulate import generate_transactions

    history = generate_transactions(
        n_customers=2000, n_terminals=4000, start=date(2025, 1, 1), days=60, seed=seed
    )
    rows = np.arange(len(history))
    return transaction_events(
        history, rows, settings.topics.transactions, settings.topics.labels, "fraud", 7.0
    )


def _file_events(settings: Settings, path: Path) -> Iterator:
    from riskstream.history import load_transactions
    from riskstream.replay import transaction_events

    history = load_transactions(path)
    rows = np.arange(len(history))
    return transaction_events(
        history, rows, settings.topics.transactions, settings.topics.labels, "fraud", 7.0
    )


REQUEST_EVERY = 20  # one credit request among this many transactions
DEMO_BORROWERS = 2_000


def with_credit_requests(
    settings: Settings, models_dir: Path, events: Iterator, seed: int, workdir: Path
) -> Iterator:
    """Interleave requests to the `credit` model (when the models folder has one) with the
    transactions: synthetic borrowers, one per REQUEST_EVERY events, round and round."""
    from riskstream.credit_table import simulate_credit, write_credit
    from riskstream.replay import request_events
    from riskstream.scoring import tabular_model_names

    if "credit" not in tabular_model_names(models_dir):
        yield from events
        return
    borrowers = workdir / "borrowers.csv"
    write_credit(borrowers, simulate_credit(DEMO_BORROWERS, seed))
    _, first = request_events(borrowers, models_dir, "credit", settings.topics.requests)
    requests = list(first)
    for i, outgoing in enumerate(events):
        yield outgoing
        if i % REQUEST_EVERY == REQUEST_EVERY - 1:
            yield requests[(i // REQUEST_EVERY) % len(requests)]


def _start_worker(settings: Settings, models_dir: Path, log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RISKSTREAM_MODELS_DIR": str(models_dir),
        "RISKSTREAM_MODELS": "fraud",
        "RISKSTREAM_METRICS_PORT": str(settings.metrics_port),
        "RISKSTREAM_DATA_DIR": str(log_path.parent / "worker-data"),
        "RISKSTREAM_REBALANCE_TIMEOUT_S": "2",
        "RISKSTREAM_SESSION_TIMEOUT_S": "10",
        "RISKSTREAM_HEARTBEAT_INTERVAL_S": "1",
    }
    log = log_path.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "riskstream", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def _run(
    settings: Settings, events: Iterator, rate: float, worker_log: Path, worker: subprocess.Popen
) -> None:
    from rich.live import Live

    from riskstream.replay import publish

    counts = LiveCounts()
    stop = asyncio.Event()
    replayed = [0]
    metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"

    def counted() -> Iterator:
        for outgoing in events:
            replayed[0] += 1
            yield outgoing

    watcher = asyncio.create_task(_watch(settings, counts, stop))
    replay = asyncio.create_task(publish(settings, counted(), rate=rate, show_progress=False))
    try:
        with Live(_render(counts, settings, metrics_url, replayed), refresh_per_second=4) as live:
            while True:
                await asyncio.sleep(0.5)
                if worker.poll() is not None:
                    raise click.ClickException(
                        f"the worker stopped (exit {worker.returncode}); see {worker_log}"
                    )
                if watcher.done() and watcher.exception():
                    raise watcher.exception()  # type: ignore[misc]
                live.update(_render(counts, settings, metrics_url, replayed))
    finally:
        stop.set()
        replay.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await replay
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher


@click.command("demo")
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Transactions CSV to replay instead of synthetic data.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Transactions per second to replay.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Broker port [default: a free one]."
)
@click.option("--seed", type=int, default=7, show_default=True, help="Synthetic data seed.")
def demo_command(data_path: Path | None, rate: float, port: int, seed: int) -> None:
    """Run the whole loop: embedded broker, worker, event stream and a live view of alerts.

    Uses the models in RISKSTREAM_MODELS_DIR when it holds a fraud model, otherwise the
    models shipped with riskstream (trained by its own code on synthetic data). When a
    tabular `credit` model is among them, synthetic borrowers' credit requests go out beside
    the transactions (one per twenty) and are scored on risk.requests.
    """
    from rich.console import Console

    from riskstream.broker import EmbeddedBroker, free_port, stop_process
    from riskstream.cli import stop_on_sigterm

    console = Console(stderr=True)
    stop_on_sigterm()
    broker = EmbeddedBroker("127.0.0.1", port or free_port())
    worker: subprocess.Popen | None = None
    workdir = Path(tempfile.mkdtemp(prefix="riskstream-demo-"))
    try:
        broker.start()
        settings = Settings.from_env(
            bootstrap_servers=broker.bootstrap_servers, metrics_port=free_port()
        )
        models_dir = default_models_dir(settings)
        console.print(f"broker on {broker.bootstrap_servers}; models from {models_dir}")
        worker_log = workdir / "worker.log"
        worker = _start_worker(settings, models_dir, worker_log)
        console.print(f"worker pid {worker.pid} (log: {worker_log}); preparing events…")
        events = (
            _file_events(settings, data_path) if data_path else _synthetic_events(settings, seed)
        )
        events = with_credit_requests(settings, models_dir, events, seed, workdir)
        asyncio.run(_run(settings, events, rate, worker_log, worker))
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan a child
        stop_process(worker, timeout=10.0)
        broker.stop()
    console.print("[green]demo stopped[/]: broker and worker are down.")
