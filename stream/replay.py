"""`riskstream replay`: publish history as JSON events, in event-time order, with late labels.

Fraud labels are published to `risk.labels` at transaction time + label delay (7 days by
default, as chargebacks arrive), interleaved with the transactions by event time; so a
worker sees a label before any transaction that is entitled to know it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

import click
import msgspec
import numpy as np

from riskstream.config import Settings
from riskstream.history import MarketHistory, TransactionHistory

LabelMode = Literal["fraud", "all", "none"]
DAY = 86400.0


@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish."""

    event_time: float
    topic: str
    key: bytes
    value: bytes


@dataclasses.dataclass
class ReplayStats:
    transactions: int = 0
    labels: int = 0
    market: int = 0
    requests: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.transactions + self.labels + self.market + self.requests


_encoder = msgspec.json.Encoder()


def timestamp_text(epoch_seconds: float) -> str:
    """RFC 3339 in UTC with a `Z`, whole seconds when the time has no fraction."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    spec = "seconds" if moment.microsecond == 0 else "microseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def transaction_events(
    history: TransactionHistory,
    rows: np.ndarray,
    transactions_topic: str,
    labels_topic: str,
    labels: LabelMode,
    label_delay_days: float,
) -> Iterator[Outgoing]:
    """Transactions and their delayed labels, merged in event-time order."""
    delay = label_delay_days * DAY
    pending: list[tuple[float, int, Outgoing]] = []
    for i in rows:
        ts = float(history.timestamp[i])
        while pending and pending[0][0] <= ts:
            yield heapq.heappop(pending)[2]
        tx_id = str(history.transaction_id[i])
        customer = str(history.customer_id[i])
        terminal = str(history.terminal_id[i])
        event = {
            "transaction_id": tx_id,
            "timestamp": timestamp_text(ts),
            "customer_id": customer,
            "terminal_id": terminal,
            "amount": float(history.amount[i]),
        }
        currency = str(history.currency[i]) if history.currency is not None else ""
        if currency:
            event["currency"] = currency
        yield Outgoing(ts, transactions_topic, customer.encode(), _encoder.encode(event))
        if history.fraud is None or labels == "none":
            continue
        fraud = bool(history.fraud[i])
        if fraud or labels == "all":
            label = {
                "transaction_id": tx_id,
                "timestamp": timestamp_text(ts + delay),
                "transaction_timestamp": timestamp_text(ts),
                "customer_id": customer,
                "terminal_id": terminal,
                "fraud": fraud,
            }
            outgoing = Outgoing(ts + delay, labels_topic, tx_id.encode(), _encoder.encode(label))
            heapq.heappush(pending, (ts + delay, int(i), outgoing))
    last = float(history.timestamp[rows[-1]]) if len(rows) else 0.0
    while pending and pending[0][0] <= last:
        yield heapq.heappop(pending)[2]


def market_events(history: MarketHistory, rows: np.ndarray, topic: str) -> Iterator[Outgoing]:
    key = history.instrument.encode()
    for i in rows:
        event: dict[str, object] = {
            "instrument": history.instrument,
            "timestamp": timestamp_text(float(history.timestamp[i])),
            "open": float(history.open[i]),
            "high": float(history.high[i]),
            "low": float(history.low[i]),
            "close": float(history.close[i]),
            "volume": float(history.volume[i]),
        }
        if history.vix is not None:
            event["indicators"] = {"vix": float(history.vix[i])}
        yield Outgoing(float(history.timestamp[i]), topic, key, _encoder.encode(event))


def request_events(
    path: Path, models_dir: Path, name: str, topic: str
) -> tuple[int, Iterator[Outgoing]]:
    """A labelled table's rows as requests to tabular model `name`, read with the model's own
    input schema (the rows `riskstream evaluate --scores-out` scores, named the same way: the
    model's --id column, or the 1-based row number). Timestamps: the model's --time column,
    else now."""
    from riskstream.features.tabular import schema_from_card
    from riskstream.scoring import load_model
    from riskstream.training.tabular_data import TableSpec, load_scoring_rows

    card = load_model(models_dir, name).card
    if card.get("kind") != "tabular":
        raise ValueError(f"model {name!r} is not a tabular model: replay its history instead")
    rows, _ = load_scoring_rows(path, TableSpec.from_card(card), schema_from_card(card))
    now = float(int(time.time()))  # whole seconds: a request time, not a measurement

    def events() -> Iterator[Outgoing]:
        for i in range(len(rows)):
            event_time = float(rows.timestamps[i]) if rows.timestamps is not None else now
            event_id = str(rows.event_ids[i])
            request = {
                "event_id": event_id,
                "timestamp": timestamp_text(event_time),
                "entity_id": event_id,
                "model": name,
                "features": rows.record(i),
            }
            yield Outgoing(event_time, topic, event_id.encode(), _encoder.encode(request))

    return len(rows), events()


class RateLimiter:
    """Paces publishing at `rate` messages per second (0: as fast as possible)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.sent = 0

    async def wait(self, n: int = 1) -> None:
        self.sent += n
        if self.rate > 0:
            ahead = self.sent / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                await asyncio.sleep(ahead)


async def publish(
    settings: Settings,
    events: Iterator[Outgoing],
    *,
    rate: float = 0.0,
    total: int | None = None,
    show_progress: bool = True,
    chunk: int = 2000,
) -> ReplayStats:
    """Send the events with one producer, waiting for every acknowledgement."""
    from aiokafka import AIOKafkaProducer
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from riskstream.kafka import ensure_topics

    stats = ReplayStats()
    producer = AIOKafkaProducer(**settings.kafka.aiokafka_kwargs(), linger_ms=5, acks="all")
    await producer.start()
    limiter = RateLimiter(rate)
    started = time.monotonic()
    topics_seen: set[str] = set()
    progress = Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f} events/s"),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=False,
    )
    try:
        with progress:
            task = progress.add_task("replay", total=total, rate=0.0)
            batch: list[asyncio.Future] = []
            # Wait for acknowledgements per chunk; when paced, every ~50 ms worth of events
            # (waiting for each one would cap the rate near 1 / (linger + round trip)).
            every = chunk if rate <= 0 else max(1, min(chunk, int(rate * 0.05)))
            for outgoing in events:
                if outgoing.topic not in topics_seen:
                    await ensure_topics(
                        settings.kafka, {outgoing.topic: settings.worker.partitions}
                    )
                    topics_seen.add(outgoing.topic)
                batch.append(await producer.send(outgoing.topic, outgoing.value, key=outgoing.key))
                _count(stats, settings, outgoing.topic)
                await limiter.wait()
                if len(batch) >= every:
                    await asyncio.gather(*batch)
                    elapsed = max(time.monotonic() - started, 1e-9)
                    progress.update(task, advance=len(batch), rate=stats.total / elapsed)
                    batch = []
            await asyncio.gather(*batch)
            progress.update(task, advance=len(batch))
    finally:
        await producer.stop()
    stats.seconds = time.monotonic() - started
    return stats


def _count(stats: ReplayStats, settings: Settings, topic: str) -> None:
    if topic == settings.topics.labels:
        stats.labels += 1
    elif topic == settings.topics.market:
        stats.market += 1
    elif topic == settings.topics.requests:
        stats.requests += 1
    else:
        stats.transactions += 1


def _selected(
    mask_source: TransactionHistory | MarketHistory, start: date | None, end: date | None
):
    return np.flatnonzero(mask_source.between(start, end))


def _detect_kind(path: Path) -> Literal["transactions", "market"]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        header = handle.readline().lower()
    return "market" if "close" in header and "open" in header else "transactions"


@click.command("replay")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--topic",
    help="Topic to publish to [default: transactions or market.indicators, "
    "from the file's columns, or their RISKSTREAM_TOPIC_* overrides].",
)
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), help="First day (inclusive).")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), help="Last day (inclusive).")
@click.option(
    "--labels",
    type=click.Choice(["fraud", "all", "none"]),
    default="fraud",
    show_default=True,
    help="Which labels to publish to risk.labels: fraud only "
    "(chargebacks), every transaction's, or none.",
)
@click.option(
    "--label-delay-days",
    type=click.FloatRange(min=0),
    default=7.0,
    show_default=True,
    help="Event-time delay between a transaction and its label.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Messages per second; 0 publishes as fast as the broker takes them.",
)
@click.option(
    "--vix",
    "vix_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Market only: a VIX CSV whose close becomes the `vix` indicator.",
)
@click.option("--instrument", help="Market only: instrument name [default: the file name].")
@click.option(
    "--model",
    "model_name",
    help="A labelled table: send each row as a request to this tabular model (a folder of "
    "--models-dir), to risk.requests, named by the model's --id column or the row number.",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --model: where the model lives [env RISKSTREAM_MODELS_DIR, default models].",
)
@click.option("--bootstrap-servers", help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS].")
def replay_command(
    path: Path,
    topic: str | None,
    start: datetime | None,
    end: datetime | None,
    labels: LabelMode,
    label_delay_days: float,
    rate: float,
    vix_path: Path | None,
    instrument: str | None,
    model_name: str | None,
    models_dir: Path | None,
    bootstrap_servers: str | None,
) -> None:
    """Publish a CSV of history to Kafka as JSON events, in event-time order.

    PATH is our own CSV format, the Fraud Detection Handbook's columns, or a daily OHLCV CSV
    (plain or gzipped). Transactions go out keyed by customer_id with, optionally, their fraud
    labels to risk.labels after --label-delay-days of event time. With --model, PATH is a
    labelled table (the kind `riskstream train tabular` reads) and every row becomes a request
    to that tabular model.
    """
    from rich.console import Console

    from riskstream.history import load_market, load_transactions
    from riskstream.kafka import BrokerUnavailable

    console = Console(stderr=True)
    settings = Settings.from_env(bootstrap_servers=bootstrap_servers, models_dir=models_dir)
    first = start.date() if start else None
    last = end.date() if end else None
    try:
        if model_name is not None:
            from riskstream.scoring import ModelError
            from riskstream.training.tabular_data import TableError

            try:
                total, events = request_events(
                    path, settings.models_dir, model_name, topic or settings.topics.requests
                )
            except (ModelError, TableError) as exc:
                raise ValueError(str(exc)) from exc
            rows = np.arange(total)
        elif _detect_kind(path) == "market":
            market = load_market(path, vix_path, instrument)
            rows = _selected(market, first, last)
            events = market_events(market, rows, topic or settings.topics.market)
            total: int | None = len(rows)
        else:
            history = load_transactions(path)
            rows = _selected(history, first, last)
            events = transaction_events(
                history,
                rows,
                topic or settings.topics.transactions,
                settings.topics.labels,
                labels,
                label_delay_days,
            )
            total = None
        console.print(
            f"replaying {len(rows):,} rows of {path} to {settings.kafka.bootstrap_servers}"
        )
        stats = asyncio.run(publish(settings, events, rate=rate, total=total))
    except (ValueError, BrokerUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        console.print("[yellow]replay interrupted[/]")
        return
    console.print(
        f"[green]published[/] {stats.transactions:,} transactions, {stats.labels:,} labels, "
        f"{stats.market:,} market events, {stats.requests:,} requests in {stats.seconds:.1f} s "
        f"({stats.total / max(stats.seconds, 1e-9):,.0f} events/s)"
    )
