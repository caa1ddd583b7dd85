"""riskstream on real data: the Fraud Detection Handbook's transactions, as a backlog and live.

Why: bench/run.py feeds the worker synthetic transactions (1,000 customers, 2,000 terminals)
and no labels, and that overstated the worker. Real traffic has customers sharing terminals
and carries fraud labels a week late, which the worker reads too and folds into its terminal
state. This script measures the worker as shipped (RISKSTREAM_MODELS=fraud, product defaults
otherwise) on the handbook's transactions, next to bench/ceiling.py's plain-aiokafka loop over
the very same transactions, in one run.

Phases, on an embedded Tansu broker of its own:
  1. publish: `--events` transactions from `--start` on, with their fraud labels 7 days of
     event time later, interleaved in event-time order by riskstream.replay.transaction_events
     (as `riskstream replay` does), before any consumer starts;
  2. ceiling: bench/ceiling.py reads the same transactions topic in a consumer group of its own
     (it reads no labels);
  3. backlog: one `riskstream worker` (bench/common.py's WorkerProcess) drains both topics
     while this process counts the score records on its scores topic until every transaction
     has one. events/s runs from the first score record's Kafka timestamp to the last one's
     (both stamped by the worker's producer) and counts the transactions first scored after
     the first stamp; the worker's CPU (/proc, sampled every 0.1 s, interpolated) over the
     same window is divided by the same count, so the labels' cost is included;
  4. live: right after the drain (1 s pause, as between latency.py's rates), the transactions
     that follow in the file, and the labels falling among them, at each `--rate`
     transactions/s, stamped at send; p50/p99/max event-to-score latency with
     bench/latency.py's clocks and warm-up (the first second of each rate is left out).

    .venv/bin/python bench/handbook.py --quick    # 5,000 transactions, 3 s per rate
    .venv/bin/python bench/handbook.py            # 150,000 transactions, 12 s per rate

Loading the 1.3 million-row CSV with riskstream.history comes first and takes a while. The
worker starts with empty state, and the first week of the backlog carries no labels (their
transactions lie before `--start`), as when `riskstream replay --from` starts a fresh worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import tempfile
import time
from datetime import UTC, date, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import click
import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from common import (
    BENCH_DIR,
    PARTITIONS,
    BenchTopics,
    WorkerProcess,
    cpu_seconds,
    events_option,
    quick_option,
    rates_option,
    results_out_option,
    rss_bytes,
    run_and_save,
    seconds_per_rate_option,
    short_id,
)
from latency import (
    DRAIN_TIMEOUT_SECONDS,
    READER_WAIT_MS,
    TICK_SECONDS,
    LatencyResult,
    _consume_scores,
    _decode_score,
    _forwarded_stamps,
    _Outgoing,
    _result,
    _Run,
)
from machine import LoadLog, describe
from rich.console import Console
from rich.status import Status
from rich.table import Table
from run import _ceiling as run_ceiling

from riskstream.config import Settings
from riskstream.fetch_wait import AdaptiveFetchWait
from riskstream.history import TransactionHistory, load_transactions
from riskstream.kafka import ensure_topics
from riskstream.replay import Outgoing, ReplayStats, publish, transaction_events

DEFAULT_DATA = (
    BENCH_DIR.parents[1]
    / "shared"
    / "data"
    / "fraud-handbook"
    / "transactions-2018-04-01_2018-08-14.csv.gz"
)
LABEL_DELAY_DAYS = 7.0
STALL_SECONDS = 120.0  # no new score record for this long: the drain has stalled
CPU_SAMPLE_SECONDS = 0.1
PAUSE_SECONDS = 1.0  # between the drain and the first rate, and between rates (latency.py's)


@dataclasses.dataclass(frozen=True)
class HandbookTopics(BenchTopics):
    """BenchTopics with the partition count of `--partitions` instead of common.PARTITIONS."""

    partitions: int = PARTITIONS

    def environ(self) -> dict[str, str]:
        return {**super().environ(), "RISKSTREAM_PARTITIONS": str(self.partitions)}

    def score_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.scores, p) for p in range(self.partitions)]


@dataclasses.dataclass(frozen=True)
class Plan:
    data: Path
    start: date
    events: int
    partitions: int
    rates: tuple[float, ...]
    live_seconds: float
    out: Path
    quick: bool

    def live_counts(self) -> list[int]:
        return [int(rate * self.live_seconds) for rate in self.rates]


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Input:
    """The messages to send: the backlog, then one part per live rate."""

    backlog: list[Outgoing]
    live: list[list[Outgoing]]
    customers: int
    terminals: int
    first_day: str
    last_day: str


def _day(history: TransactionHistory, row: int) -> str:
    return datetime.fromtimestamp(float(history.timestamp[row]), UTC).date().isoformat()


def _split(messages: list[Outgoing], transactions: str, sizes: list[int]) -> list[list[Outgoing]]:
    """Consecutive parts of `sizes` transactions each; a label goes with the part it opens."""
    positions = [i for i, m in enumerate(messages) if m.topic == transactions]
    cuts = [positions[end - 1] + 1 for end in np.cumsum(sizes)[:-1].tolist()]
    return [messages[a:b] for a, b in pairwise([0, *cuts, len(messages)])]


def load_input(plan: Plan, transactions: str, labels: str) -> Input:
    """The handbook's rows from `plan.start` on, as `riskstream replay` would publish them."""
    history = load_transactions(plan.data)
    rows = np.flatnonzero(history.between(plan.start, None))
    sizes = [plan.events, *plan.live_counts()]
    if len(rows) < sum(sizes):
        raise click.ClickException(
            f"{plan.data} has {len(rows):,} transactions from {plan.start}; this run needs "
            f"{sum(sizes):,} (backlog and live): choose an earlier --start or fewer events"
        )
    rows = rows[: sum(sizes)]
    messages = list(
        transaction_events(history, rows, transactions, labels, "fraud", LABEL_DELAY_DAYS)
    )
    parts = _split(messages, transactions, sizes)
    backlog_rows = rows[: plan.events]
    return Input(
        backlog=parts[0],
        live=parts[1:],
        customers=len(np.unique(history.customer_id[backlog_rows])),
        terminals=len(np.unique(history.terminal_id[backlog_rows])),
        first_day=_day(history, int(backlog_rows[0])),
        last_day=_day(history, int(backlog_rows[-1])),
    )


async def _publish(topics: HandbookTopics, backlog: list[Outgoing]) -> ReplayStats:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap,
            "RISKSTREAM_PARTITIONS": str(topics.partitions),
            "RISKSTREAM_TOPIC_TRANSACTIONS": topics.transactions,
            "RISKSTREAM_TOPIC_LABELS": topics.labels,
        }
    )
    # The scores topic too, so this process can read it from the start before the worker runs.
    names = (topics.transactions, topics.labels, topics.scores)
    await ensure_topics(settings.kafka, dict.fromkeys(names, topics.partitions))
    return await publish(settings, iter(backlog), total=len(backlog), show_progress=False)


# --------------------------------------------------------------------------- backlog drain


@dataclasses.dataclass
class CpuSampler:
    """Worker and broker CPU seconds every CPU_SAMPLE_SECONDS, to interpolate at any moment."""

    worker_pid: int
    broker_pid: int
    samples: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)
    running: bool = True

    def sample(self) -> None:
        now = time.time()
        with contextlib.suppress(OSError):  # a worker that exited: the drain reports it
            self.samples.append((now, cpu_seconds(self.worker_pid), cpu_seconds(self.broker_pid)))

    async def run(self) -> None:
        while self.running:
            self.sample()
            await asyncio.sleep(CPU_SAMPLE_SECONDS)

    def between(self, start: float, end: float) -> tuple[float, float]:
        """Worker and broker CPU seconds spent from `start` to `end` (epoch seconds)."""
        at, worker, broker = (np.array(column) for column in zip(*self.samples, strict=True))
        spent = [float(np.interp(end, at, c) - np.interp(start, at, c)) for c in (worker, broker)]
        return spent[0], spent[1]


@dataclasses.dataclass(frozen=True)
class Drain:
    transactions: int  # in the backlog, all scored
    labels: int  # in the backlog
    counted: int  # first scored after the first score record's stamp
    seconds: float  # first to last score record stamp
    worker_cpu_seconds: float
    broker_cpu_seconds: float
    duplicates: int  # score records beyond one per transaction
    launch_to_first_score: float
    worker_rss: int

    @property
    def rate(self) -> float:
        return self.counted / self.seconds

    @property
    def worker_cpu_us(self) -> float:
        return self.worker_cpu_seconds / self.counted * 1e6

    @property
    def broker_cpu_us(self) -> float:
        return self.broker_cpu_seconds / self.counted * 1e6


def _drain_consumer(bootstrap: str) -> AIOKafkaConsumer:
    """Few, full fetches: this process shares the 2 cores with the worker and the broker, and
    the stamps it reads do not depend on when it reads them."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_min_bytes=1024 * 1024,
        fetch_max_wait_ms=500,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )


async def _first_scores(
    consumer: AIOKafkaConsumer, worker: WorkerProcess, expected: int
) -> tuple[dict[str, int], int]:
    """Each transaction's first score stamp (ms), and how many score records were read."""
    first: dict[str, int] = {}
    records = 0
    progressed = time.monotonic()
    while len(first) < expected:
        batches = await consumer.getmany(timeout_ms=500, max_records=50_000)
        for messages in batches.values():
            records += len(messages)
            for message in messages:
                first.setdefault(_decode_score(message.value).event_id, message.timestamp)
        worker.check_running()
        if batches:
            progressed = time.monotonic()
        elif time.monotonic() - progressed > STALL_SECONDS:
            raise RuntimeError(
                f"{len(first):,} of {expected:,} transactions scored, none for "
                f"{STALL_SECONDS:.0f} s; see {worker.log_path}"
            )
    return first, records


async def _drain(
    topics: HandbookTopics, worker: WorkerProcess, sampler: CpuSampler, expected: int
) -> tuple[dict[str, int], int]:
    consumer = _drain_consumer(topics.bootstrap)
    await consumer.start()
    sampling = asyncio.create_task(sampler.run())
    try:
        partitions = topics.score_partitions()
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        return await _first_scores(consumer, worker, expected)
    finally:
        sampler.running = False
        await sampling
        sampler.sample()  # bounds the last interpolation
        await consumer.stop()


def measure_drain(
    topics: HandbookTopics, worker: WorkerProcess, broker_pid: int, published: ReplayStats
) -> Drain:
    sampler = CpuSampler(worker.pid, broker_pid)
    first, records = asyncio.run(_drain(topics, worker, sampler, published.transactions))
    stamps = np.array(list(first.values()), dtype=np.int64)
    start, end = stamps.min() / 1000.0, stamps.max() / 1000.0
    worker_cpu, broker_cpu = sampler.between(start, end)
    return Drain(
        transactions=published.transactions,
        labels=published.labels,
        counted=int((stamps > stamps.min()).sum()),
        seconds=end - start,
        worker_cpu_seconds=worker_cpu,
        broker_cpu_seconds=broker_cpu,
        duplicates=records - len(first),
        launch_to_first_score=start - worker.started_at,
        worker_rss=rss_bytes(worker.pid),
    )


# --------------------------------------------------------------------------- live


@dataclasses.dataclass
class LiveRaw:
    """One rate's sends and arrivals, before the stage 1 stamps are known."""

    rate: float
    achieved: float
    run: _Run
    transactions: int
    labels: int
    worker_cpu_seconds: float


@dataclasses.dataclass(frozen=True)
class Live:
    latency: LatencyResult
    transactions: int
    labels: int
    worker_cpu_seconds: float

    @property
    def worker_cpu_us(self) -> float:
        return self.worker_cpu_seconds / self.transactions * 1e6


_decode_transaction_id = msgspec.json.Decoder(dict).decode


def _live_messages(part: list[Outgoing], transactions: str) -> list[_Outgoing]:
    """latency.py's _Outgoing; labels carry no transaction id (key_id "") and are not timed."""

    def key_id(message: Outgoing) -> str:
        if message.topic != transactions:
            return ""
        return _decode_transaction_id(message.value)["transaction_id"]

    return [_Outgoing(o.topic, o.key, o.value, key_id(o)) for o in part]


async def _send(producer: AIOKafkaProducer, message: _Outgoing, run: _Run) -> asyncio.Future:
    now = time.time()
    stamp = int(now * 1000)
    if message.key_id:
        run.sent_at[message.key_id], run.sent_ms[message.key_id] = now, stamp
    return await producer.send(message.topic, message.value, key=message.key, timestamp_ms=stamp)


async def _produce_live(
    producer: AIOKafkaProducer, outgoing: list[_Outgoing], rate: float, run: _Run
) -> float:
    """latency.py's ticks, paced by transactions: a label goes out as soon as it is reached,
    ahead of the transaction that follows it in event time. Returns transactions/s achieved."""
    total = sum(1 for message in outgoing if message.key_id)
    started = time.time()
    sent = index = 0
    deliveries = []
    while index < len(outgoing):
        due = min(total, int((time.time() - started) * rate) + 1)
        while index < len(outgoing) and (sent < due or not outgoing[index].key_id):
            deliveries.append(await _send(producer, outgoing[index], run))
            if outgoing[index].key_id:
                sent += 1
            index += 1
        await asyncio.sleep(TICK_SECONDS)
    elapsed = time.time() - started
    await asyncio.gather(*deliveries)
    return total / elapsed


async def _one_rate(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    worker_pid: int,
    rate: float,
    outgoing: list[_Outgoing],
) -> LiveRaw:
    run = _Run()
    stop = asyncio.Event()
    reader = asyncio.create_task(_consume_scores(consumer, run, stop))
    cpu_before = cpu_seconds(worker_pid)
    achieved = await _produce_live(producer, outgoing, rate, run)
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    while len(run.arrived_at) < len(run.sent_at) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    cpu = cpu_seconds(worker_pid) - cpu_before
    stop.set()
    await reader
    transactions = len(run.sent_at)
    return LiveRaw(rate, achieved, run, transactions, len(outgoing) - transactions, cpu)


async def _live(
    topics: HandbookTopics, worker_pid: int, batches: list[tuple[float, list[_Outgoing]]]
) -> list[LiveRaw]:
    """latency.py's _measure with its own producing: one scores reader at the end of the topic."""
    bootstrap = topics.bootstrap
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        fetch_max_wait_ms=READER_WAIT_MS,
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await consumer.start()
    AdaptiveFetchWait(READER_WAIT_MS).install(consumer)  # see latency.py's _measure
    await producer.start()
    raws = []
    try:
        partitions = topics.score_partitions()
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for rate, outgoing in batches:
            await asyncio.sleep(PAUSE_SECONDS)
            raws.append(await _one_rate(consumer, producer, worker_pid, rate, outgoing))
    finally:
        await producer.stop()
        await consumer.stop()
    return raws


def finish_live(topics: HandbookTopics, raws: list[LiveRaw]) -> list[Live]:
    """Split the stamped latency at stage 1 (its stamps are read once the worker stopped)."""
    forwarded = _forwarded_stamps(topics.bootstrap, topics)
    results = []
    for raw in raws:
        raw.run.forwarded_ms = forwarded
        latency = _result(raw.rate, raw.achieved, raw.run)
        results.append(Live(latency, raw.transactions, raw.labels, raw.worker_cpu_seconds))
    return results


# --------------------------------------------------------------------------- the run


def _stage(console: Console, text: str, load: LoadLog, finished: str) -> Status:
    """Marks the load average at the end of the phase `finished`, shows the next one."""
    load.mark(finished)
    return console.status(text)


def _serve(
    plan: Plan, topics: HandbookTopics, data: Input, published: ReplayStats, broker_pid: int
) -> tuple[Drain, list[LiveRaw]]:
    """One worker: the backlog drain, then the live rates without a restart."""
    worker = WorkerProcess(topics, plan.out, "handbook").start()
    try:
        drain = measure_drain(topics, worker, broker_pid, published)
        batches = [
            (rate, _live_messages(part, topics.transactions))
            for rate, part in zip(plan.rates, data.live, strict=True)
        ]
        raws = asyncio.run(_live(topics, worker.pid, batches))
    finally:
        worker.stop()
    return drain, raws


def run(plan: Plan, console: Console) -> dict[str, Any]:
    from riskstream.broker import EmbeddedBroker, free_port

    load = LoadLog()
    results: dict[str, Any] = {"machine": describe(), "plan": plan}
    transactions, labels = f"bench-handbook-{short_id()}", f"bench-handbook-labels-{short_id()}"
    with _stage(console, f"loading {plan.data.name}…", load, "start"):
        data = load_input(plan, transactions, labels)
    with EmbeddedBroker(port=free_port()) as broker:
        assert broker.pid is not None
        topics = HandbookTopics(
            broker.bootstrap_servers, transactions, labels, partitions=plan.partitions
        )
        with _stage(console, "publishing the backlog…", load, "load"):
            published = asyncio.run(_publish(topics, data.backlog))
        with _stage(console, "ceiling: plain aiokafka loop…", load, "publish"):
            ceiling = run_ceiling(
                broker.bootstrap_servers, topics.transactions, published.transactions, broker.pid
            )
        with _stage(console, "riskstream: backlog drain, then live rates…", load, "ceiling"):
            drain, raws = _serve(plan, topics, data, published, broker.pid)
        load.mark("worker")
        with console.status("reading stage 1 stamps…"):
            live = finish_live(topics, raws)
    results.update(
        data={
            "customers": data.customers,
            "terminals": data.terminals,
            "first_day": data.first_day,
            "last_day": data.last_day,
        },
        published=published,
        ceiling=ceiling,
        drain=drain,
        live=live,
        load=load.summary(),
    )
    return results


# --------------------------------------------------------------------------- report


def _ms(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:,.0f}" for v in values)


def _table(results: dict[str, Any]) -> Table:
    ceiling, drain = results["ceiling"], results["drain"]
    ceiling_rate = ceiling["events"] / ceiling["seconds"]
    ceiling_cpu_us = ceiling["cpu_seconds"] / ceiling["events"] * 1e6
    table = Table(
        title="riskstream on the Fraud Detection Handbook (one worker)",
        title_justify="left",
        caption=(
            "ratio: events/s ÷ the ceiling's (CPU: the ceiling's CPU µs ÷ the worker's); for "
            "live rows, offered ÷ backlog drain rate. Latency: p50 / p99 / max ms, after 1 s "
            "warm-up per rate. Worker CPU includes reading and applying the labels."
        ),
    )
    columns = ("setup", "transactions/s", "CPU µs/tx", "ratio", "send → score arrives", "stamps")
    for column in columns:
        table.add_column(column, justify="left" if column == "setup" else "right")
    table.add_row(
        "ceiling: plain aiokafka loop, same transactions (no state, no labels)",
        f"{ceiling_rate:,.0f}",
        f"{ceiling_cpu_us:,.0f}",
        "1 ×",
    )
    table.add_row(
        f"riskstream: backlog drain ({drain.transactions:,} tx + {drain.labels:,} labels)",
        f"{drain.rate:,.0f}",
        f"{drain.worker_cpu_us:,.0f}",
        f"{drain.rate / ceiling_rate:.3f} × (CPU: {ceiling_cpu_us / drain.worker_cpu_us:.3f} ×)",
    )
    for live in results["live"]:
        _live_row(table, live, drain)
    return table


def _live_row(table: Table, live: Live, drain: Drain) -> None:
    result = live.latency
    unscored = f", {result.missing:,} unscored" if result.missing else ""
    table.add_row(
        f"riskstream: live at {result.rate:,.0f} tx/s offered ({live.labels} labels{unscored})",
        f"{result.achieved_rate:,.0f}",
        f"{live.worker_cpu_us:,.0f}",
        f"{result.rate / drain.rate:.0%} of drain",
        _ms(result.arrival_ms),
        _ms(result.stamped_ms),
    )


def render(results: dict[str, Any], console: Console) -> None:
    machine, plan, data = results["machine"], results["plan"], results["data"]
    published, drain = results["published"], results["drain"]
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    console.print(
        f"[bold]riskstream handbook benchmark[/] — {'quick' if plan.quick else 'full'} run, "
        f"{results['seconds']:.0f} s"
    )
    console.print(
        f"machine: {machine['cores']} cores {machine['cpu']}, {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}, Python {machine['python']}"
    )
    console.print(f"libraries: {libraries}")
    console.print(f"load: {results['load']}")
    console.print(
        f"input: {published.transactions:,} handbook transactions {data['first_day']} → "
        f"{data['last_day']} ({data['customers']:,} customers, {data['terminals']:,} terminals) "
        f"+ {published.labels:,} fraud labels ({LABEL_DELAY_DAYS:.0f} days late), "
        f"{plan.partitions} partitions, published in {published.seconds:.1f} s before any "
        f"consumer; worker: first score {drain.launch_to_first_score:.1f} s after launch, "
        f"{drain.duplicates} duplicate scores, RSS {drain.worker_rss / 1024**2:,.0f} MiB, "
        f"broker {drain.broker_cpu_us:,.0f} CPU µs/tx while draining"
    )
    console.print()
    console.print(_table(results))


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        extras = {
            name: getattr(value, name)
            for name in ("rate", "worker_cpu_us", "broker_cpu_us")
            if hasattr(value, name)
        }
        return {**dataclasses.asdict(value), **extras}
    if isinstance(value, Path | date):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- CLI


def _plan(
    *,
    quick: bool,
    data: Path,
    start: datetime,
    events: int | None,
    partitions: int,
    rates: tuple[float, ...],
    live_seconds: float | None,
    out: Path | None,
) -> Plan:
    if not data.exists():
        raise click.ClickException(f"the handbook data is not at {data} (see --data)")
    folder = out or Path(tempfile.mkdtemp(prefix="riskstream-handbook-"))
    folder.mkdir(parents=True, exist_ok=True)
    return Plan(
        data=data,
        start=start.date(),
        events=events or (5_000 if quick else 150_000),
        partitions=partitions,
        rates=rates or (500.0, 2000.0),
        live_seconds=live_seconds or (3.0 if quick else 12.0),
        out=folder,
        quick=quick,
    )


@click.command()
@quick_option("Smoke run: 5,000 transactions, 3 s per rate.")
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="The handbook's transactions CSV (plain or gzipped).",
)
@click.option(
    "--start",
    type=click.DateTime(["%Y-%m-%d"]),
    default="2018-06-01",
    show_default=True,
    help="First day of the backlog (UTC).",
)
@events_option("Transactions in the backlog [150000; quick 5000].")
@click.option(
    "--partitions", type=click.IntRange(min=1), default=4, show_default=True, help="Per topic."
)
@rates_option("Offered transactions/s in the live phase; repeat for several [500 and 2000].")
@seconds_per_rate_option("--live-seconds", "Seconds of traffic per live rate [12; quick 3].")
@results_out_option("Folder for results.json, report.txt and the worker's log [new temp folder].")
def main(**options: Any) -> None:
    """Measure one riskstream worker on the handbook's transactions against the ceiling."""
    plan = _plan(**options)  # the options are _plan's parameters, typed there
    run_and_save(
        plan.out,
        functools.partial(run, plan),
        render,
        lambda results: json.dumps(results, indent=2, default=_json_default),
        "results and the worker's log",
    )


if __name__ == "__main__":
    main()
