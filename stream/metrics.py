"""Prometheus metrics of a riskstream worker, and the small HTTP server that exposes them.

Every metric lives on a `CollectorRegistry` owned by one `WorkerMetrics`, never on the
process-global default registry, so tests (and a process hosting several apps) can keep
independent sets. The metric names, types and labels are a fixed interface: dashboards,
alert rules and the operator's README (deploy/README.md) depend on them.

The worker records once per micro-batch, not per event: histograms of many values are
updated with one numpy pass (`BatchHistogram`), and labelled children are cached so the hot
path never re-validates label values.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from riskstream.config import Settings

# Latency buckets, seconds. 0.25 s is a bucket boundary on purpose: the end-to-end latency
# objective (p99 <= 250 ms) is judged exactly at a bucket edge instead of interpolated.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# One onnxruntime call takes 6.5 µs (1 row) to 54 µs (1,024 rows) on the reference machine,
# so inference needs finer buckets below 0.5 ms or every observation lands in the first one.
INFERENCE_BUCKETS: tuple[float, ...] = (0.00002, 0.00005, 0.0001, 0.00025, *LATENCY_BUCKETS)
# Scores: 0.05 steps, plus finer steps near 1 where alert thresholds usually sit.
SCORE_BUCKETS: tuple[float, ...] = (
    *(round(0.05 * step, 2) for step in range(1, 20)),
    0.99,
    0.999,
    1.0,
)
BATCH_SIZE_BUCKETS: tuple[float, ...] = (
    1,
    2,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2000,
    5000,
    10000,
)

EVENT_OUTCOMES: tuple[str, ...] = ("scored", "dead_letter", "label", "forwarded", "duplicate")
METRICS_CONTENT_PATH = "/metrics"
HEALTH_PATH = "/healthz"


class _HistogramChild:
    """Bucket counts of one label combination; adds whole arrays of observations at once."""

    def __init__(self, upper_bounds: np.ndarray) -> None:
        self._upper_bounds = upper_bounds
        self._counts = np.zeros(len(upper_bounds), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        self.observe_many(np.asarray([value], dtype=np.float64))

    def observe_many(self, values: Sequence[float] | np.ndarray) -> None:
        """Add every value; NaN is dropped (it belongs to no bucket and would poison the sum)."""
        array = np.asarray(values, dtype=np.float64).ravel()
        if array.size == 0:
            return
        if np.isnan(array).any():
            array = array[~np.isnan(array)]
        # side="left": the first bound >= value, i.e. Prometheus' "le" (less or equal) rule.
        slots = np.searchsorted(self._upper_bounds, array, side="left")
        added = np.bincount(slots, minlength=len(self._upper_bounds))
        total = float(array.sum())
        with self._lock:
            self._counts += added
            self._sum += total

    def snapshot(self) -> tuple[np.ndarray, float]:
        with self._lock:
            return self._counts.copy(), self._sum


class BatchHistogram:
    """A Prometheus histogram whose observations arrive in batches (a numpy pass per batch).

    prometheus_client's Histogram takes one value per call under a lock; a micro-batch of
    2,000 scores would cost 2,000 calls. This collector exposes the same series
    (`_bucket{le}`, `_count`, `_sum`) through the public custom-collector API.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(bound) for bound in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"buckets of {name} must be strictly increasing")
        if bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._upper_bounds = np.asarray(bounds, dtype=np.float64)
        self._le = [floatToGoString(bound) for bound in bounds]
        self._children: dict[tuple[str, ...], _HistogramChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> _HistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(value) for value in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, _HistogramChild(self._upper_bounds))
        return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            counts, total = child.snapshot()
            cumulative = np.cumsum(counts)
            buckets = [(le, float(count)) for le, count in zip(self._le, cumulative, strict=True)]
            family.add_metric(list(key), buckets, total)
        yield family


def default_worker_id() -> str:
    """hostname-pid: unique per process, stable for the process' lifetime."""
    return f"{socket.gethostname()}-{os.getpid()}"


def package_version() -> str:
    from riskstream import __version__

    return __version__


class WorkerMetrics:
    """All metrics of one worker process, with the handful of calls the worker makes."""

    def __init__(
        self,
        worker_id: str | None = None,
        version: str | None = None,
        *,
        process_metrics: bool = True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.worker_id = worker_id or default_worker_id()
        self.version = version or package_version()
        if process_metrics:
            # CPU seconds and memory per worker: one Faust worker saturates one core.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self._create_metrics()
        self._event_children: dict[tuple[str, str], Any] = {}
        self._dead_letter_children: dict[tuple[str, str], Any] = {}
        self._alert_children: dict[tuple[str, str], Any] = {}
        self._publish_error_children: dict[str, Any] = {}
        self._lag_children: dict[tuple[str, int], Any] = {}
        self._model_versions: dict[str, str] = {}
        self._challenger_versions: dict[str, str] = {}
        self._batch_children: dict[str, tuple[_HistogramChild, ...]] = {}
        self.worker_info.labels(worker_id=self.worker_id, version=self.version).set(1)
        self.worker_healthy.set(0)

    def set_worker(self, worker_id: str, version: str) -> None:
        """Name this worker (e.g. once the Faust app knows its id); keeps one info series."""
        if (worker_id, version) == (self.worker_id, self.version):
            return
        self.worker_info.remove(self.worker_id, self.version)
        self.worker_id, self.version = worker_id, version
        self.worker_info.labels(worker_id=worker_id, version=version).set(1)

    def _create_metrics(self) -> None:
        registry = self.registry
        self.events = Counter(
            "riskstream_events",
            "Events consumed, by source topic and what became of them.",
            ["topic", "outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "riskstream_dead_letters",
            "Messages sent to the dead-letter topic, by source topic and contract error code.",
            ["topic", "reason"],
            registry=registry,
        )
        self.alerts = Counter(
            "riskstream_alerts",
            "Alerts published, by model and severity.",
            ["model", "severity"],
            registry=registry,
        )
        self.publish_errors = Counter(
            "riskstream_publish_errors",
            "Records that could not be published (after retries), by destination topic.",
            ["topic"],
            registry=registry,
        )
        self.model_refusals = Counter(
            "riskstream_model_refusals",
            "Model versions found in the models folder and refused (load or check failed); "
            "the version in service kept serving.",
            ["model", "version"],
            registry=registry,
        )
        self.label_outcomes = Counter(
            "riskstream_label_outcomes",
            "Alerts and labels joined (riskstream.label_join): true_positive, false_positive "
            "(a genuine label, or no fraud label within the label window), false_negative (a "
            "fraud label without an alert), by model and version.",
            ["model", "version", "outcome"],
            registry=registry,
        )
        self.alerts_awaiting_label = Gauge(
            "riskstream_alerts_awaiting_label",
            "Alerts whose label has not come yet and whose label window is still open.",
            ["model"],
            registry=registry,
        )
        self.feature_psi = Gauge(
            "riskstream_feature_psi",
            "Population stability index of one input of a model over the last "
            "RISKSTREAM_DRIFT_WINDOW rows scored, against its training distribution (card).",
            ["model", "feature"],
            registry=registry,
        )
        self.score_psi = Gauge(
            "riskstream_score_psi",
            "Population stability index of a model's scores over the last RISKSTREAM_DRIFT_WINDOW "
            "rows, against its validation scores (card).",
            ["model"],
            registry=registry,
        )
        self.challenger_info = Gauge(
            "riskstream_challenger_info",
            "The model version scoring in shadow beside the one in service (value 1).",
            ["model", "version"],
            registry=registry,
        )
        self.model_info = Gauge(
            "riskstream_model_info",
            "The model version this worker scores with (value 1).",
            ["model", "version"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "riskstream_consumer_lag",
            "Messages between this worker's position and the log end, per assigned partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.held_transactions = Gauge(
            "riskstream_held_transactions",
            "Transactions waiting for slower source partitions to pass their event time "
            "(see riskstream.watermarks); grows only while a worker catches up on a backlog.",
            registry=registry,
        )
        self.worker_healthy = Gauge(
            "riskstream_worker_healthy",
            "1 when the worker is connected, assigned and scoring; 0 otherwise.",
            registry=registry,
        )
        self.stalled_partitions = Gauge(
            "riskstream_stalled_partitions",
            "Partitions with records to read (or table partitions to recover) that have not "
            "moved for RISKSTREAM_STALL_SECONDS; /healthz answers 503 while this is above 0.",
            registry=registry,
        )
        self.worker_info = Gauge(
            "riskstream_worker_info",
            "One series per running worker (value 1); count() of it is the worker count.",
            ["worker_id", "version"],
            registry=registry,
        )
        self.inference_seconds = BatchHistogram(
            "riskstream_inference_seconds",
            "Duration of one onnxruntime call (one micro-batch).",
            ["model"],
            INFERENCE_BUCKETS,
            registry,
        )
        self.event_to_score_seconds = BatchHistogram(
            "riskstream_event_to_score_seconds",
            "From the Kafka message timestamp to the score being acknowledged by the broker.",
            ["model"],
            LATENCY_BUCKETS,
            registry,
        )
        self.batch_size = BatchHistogram(
            "riskstream_batch_size",
            "Rows per inference call.",
            ["model"],
            BATCH_SIZE_BUCKETS,
            registry,
        )
        self.score = BatchHistogram(
            "riskstream_score",
            "Distribution of the scores produced, per model.",
            ["model"],
            SCORE_BUCKETS,
            registry,
        )

    # -- per micro-batch -------------------------------------------------------------------

    def observe_batch(
        self,
        model: str,
        size: int,
        inference_seconds: float,
        scores: Sequence[float] | np.ndarray,
        latencies: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """One inference call: its duration, its row count, its scores and (when the batch's
        scores are acknowledged) the event-to-score latencies in seconds."""
        batch, inference, score, _ = self._model_children(model)
        batch.observe(float(size))
        inference.observe(float(inference_seconds))
        score.observe_many(scores)
        if latencies is not None:
            self.observe_latencies(model, latencies)

    def observe_latencies(self, model: str, latencies: Sequence[float] | np.ndarray) -> None:
        """Event-to-score latencies, for workers that learn them after the publish is acked."""
        self._model_children(model)[3].observe_many(latencies)

    def _model_children(self, model: str) -> tuple[_HistogramChild, ...]:
        children = self._batch_children.get(model)
        if children is None:
            children = (
                self.batch_size.labels(model),
                self.inference_seconds.labels(model),
                self.score.labels(model),
                self.event_to_score_seconds.labels(model),
            )
            self._batch_children[model] = children
        return children

    def count_events(self, topic: str, outcome: str, n: int = 1) -> None:
        if n <= 0:
            return
        key = (topic, outcome)
        child = self._event_children.get(key)
        if child is None:
            if outcome not in EVENT_OUTCOMES:
                raise ValueError(f"unknown event outcome {outcome!r}; use one of {EVENT_OUTCOMES}")
            child = self._event_children[key] = self.events.labels(topic=topic, outcome=outcome)
        child.inc(n)

    def dead_letter(self, topic: str, reason: str, n: int = 1) -> None:
        """Count dead letters by contract error code. The event outcome is counted separately
        (`count_events(topic, "dead_letter")`), so each call site says what it counts."""
        key = (topic, reason)
        child = self._dead_letter_children.get(key)
        if child is None:
            child = self.dead_letters.labels(topic=topic, reason=reason)
            self._dead_letter_children[key] = child
        child.inc(n)

    def alert(self, model: str, severity: str, n: int = 1) -> None:
        key = (model, severity)
        child = self._alert_children.get(key)
        if child is None:
            child = self._alert_children[key] = self.alerts.labels(model=model, severity=severity)
        child.inc(n)

    def publish_error(self, topic: str, n: int = 1) -> None:
        child = self._publish_error_children.get(topic)
        if child is None:
            child = self._publish_error_children[topic] = self.publish_errors.labels(topic=topic)
        child.inc(n)

    # -- state -----------------------------------------------------------------------------

    def label_outcome(self, model: str, version: str, outcome: str) -> None:
        self.label_outcomes.labels(model=model, version=version, outcome=outcome).inc()

    def set_awaiting_label(self, model: str, alerts: int) -> None:
        self.alerts_awaiting_label.labels(model=model).set(alerts)

    def set_drift(self, model: str, features: dict[str, float], score: float) -> None:
        for feature, index in features.items():
            self.feature_psi.labels(model=model, feature=feature).set(index)
        self.score_psi.labels(model=model).set(score)

    def set_challenger(self, model: str, version: str | None) -> None:
        """The version scoring in shadow (None: none any more)."""
        previous = self._challenger_versions.pop(model, None)
        if previous is not None:
            self.challenger_info.remove(model, previous)
        if version is not None:
            self.challenger_info.labels(model=model, version=version).set(1)
            self._challenger_versions[model] = version

    def refused_model(self, model: str, version: str) -> None:
        self.model_refusals.labels(model=model, version=version).inc()

    def set_model(self, model: str, version: str) -> None:
        """Announce the version in service; a reload replaces the previous version's series."""
        previous = self._model_versions.get(model)
        if previous == version:
            return
        if previous is not None:
            self.model_info.remove(model, previous)
        self.model_info.labels(model=model, version=version).set(1)
        self._model_versions[model] = version

    def set_lag(self, topic: str, partition: int, lag: int | float) -> None:
        key = (topic, int(partition))
        child = self._lag_children.get(key)
        if child is None:
            child = self.consumer_lag.labels(topic=topic, partition=str(int(partition)))
            self._lag_children[key] = child
        child.set(max(float(lag), 0.0))

    def retain_partitions(self, assigned: Iterable[tuple[str, int]]) -> None:
        """After a rebalance: drop the lag series of partitions this worker no longer owns, so
        two workers never both report the same partition."""
        keep = {(topic, int(partition)) for topic, partition in assigned}
        for key in [key for key in self._lag_children if key not in keep]:
            del self._lag_children[key]
            self.consumer_lag.remove(key[0], str(key[1]))

    def set_held(self, count: int) -> None:
        self.held_transactions.set(count)

    def set_stalled(self, partitions: int) -> None:
        self.stalled_partitions.set(partitions)

    def set_healthy(self, healthy: bool) -> None:
        self.worker_healthy.set(1 if healthy else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of this worker's registry."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def describe_settings(settings: Settings) -> dict[str, Any]:
    """A summary of Settings that is safe to publish (health details, logs): no credentials.

    Built field by field on purpose: a new secret field added to Settings stays private
    until someone decides to publish it.
    """
    kafka = settings.kafka
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
        "sasl_mechanism": kafka.sasl_mechanism,
        "sasl_credentials": kafka.sasl_username is not None,
        "topics": {
            "transactions": settings.topics.transactions,
            "market": settings.topics.market,
            "labels": settings.topics.labels,
            "scores": settings.topics.scores,
            "alerts": settings.topics.alerts,
            "dlq": settings.topics.dlq,
        },
        "app_id": settings.worker.app_id,
        "models": list(settings.worker.models),
        "models_dir": str(settings.models_dir),
        "metrics_port": settings.metrics_port,
    }


class MetricsServerError(RuntimeError):
    """The metrics server could not start; the message says what to do."""


HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


@dataclass
class _Listening:
    runner: Any
    sock: socket.socket


class MetricsServer:
    """`/metrics` (Prometheus exposition) and `/healthz` (200 or 503 JSON) over aiohttp.

    `health()` returns `(healthy, details)`; when unhealthy, `details["reasons"]` should list
    why in words an operator can act on. Port 0 picks a free port (see `.port`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: HealthCheck,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.registry = registry
        self.health = health
        self._listening: _Listening | None = None

    @property
    def port(self) -> int:
        if self._listening is None:
            return self.requested_port
        return int(self._listening.sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        from aiohttp import web
        from prometheus_client.aiohttp import make_aiohttp_handler

        if self._listening is not None:
            return
        sock = self._bind()
        app = web.Application()
        app.router.add_get(METRICS_CONTENT_PATH, make_aiohttp_handler(self.registry))
        app.router.add_get(HEALTH_PATH, self._health_handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._listening = _Listening(runner, sock)

    def _bind(self) -> socket.socket:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host or None,
                self.requested_port,
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )[0]
        except socket.gaierror as exc:
            raise MetricsServerError(
                f"cannot resolve metrics host {self.host!r}: {exc}; use an IP address"
            ) from exc
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise MetricsServerError(
                f"cannot serve metrics on {self.host}:{self.requested_port} ({exc.strerror}): "
                "another process is using that port — stop it or choose another port with "
                "RISKSTREAM_METRICS_PORT"
            ) from exc
        sock.setblocking(False)
        return sock

    async def stop(self) -> None:
        if self._listening is None:
            return
        listening, self._listening = self._listening, None
        await listening.runner.cleanup()
        listening.sock.close()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _health_handler(self, request: Any) -> Any:
        from aiohttp import web

        try:
            healthy, details = self.health()
        except Exception as exc:  # a broken check must read as unhealthy, not as a 500
            healthy, details = False, {"reasons": [f"health check failed: {exc!r}"]}
        body = {"status": "ok" if healthy else "unavailable", **details}
        return web.Response(
            status=200 if healthy else 503,
            text=json.dumps(body, default=str),
            content_type="application/json",
        )
