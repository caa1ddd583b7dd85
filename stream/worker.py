"""`riskstream worker`: load the models, reach the broker, then run the Faust application.

Exit codes: 0 stopped (SIGTERM/SIGINT); 2 the metrics port cannot be served; 3 a model is
missing, broken or does not match the feature code; 4 the broker lost the worker's topics (see
riskstream.app); 5 a record could not be published and the worker stopped without committing
(riskstream.app); anything else is a crash. A supervisor (Kubernetes, compose `restart:`)
should restart the worker on 4, 5 and crashes, and alert on 2 and 3, which a restart does not fix.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import click

from riskstream.config import Settings

log = logging.getLogger("riskstream.worker")


EXIT_METRICS_PORT = 2
EXIT_BAD_MODEL = 3
EXIT_UNSUPPORTED = 6
PROGRESS_REPORT_SECONDS = 5.0


def load_models(settings: Settings) -> dict[str, Any]:
    """The newest version of every configured model; ModelError says what is wrong."""
    from riskstream.scoring import check_model, load_model

    names = list(dict.fromkeys([*settings.worker.models, *_tabular_names(settings)]))
    models = {name: load_model(settings.models_dir, name) for name in names}
    for model in models.values():
        check_model(model)
    return models


def _tabular_names(settings: Settings) -> list[str]:
    """Every tabular model in MODELS_DIR is served, unless RISKSTREAM_TABULAR_MODELS says
    otherwise (see WorkerSettings.tabular_models)."""
    from riskstream.scoring import tabular_model_names

    chosen = settings.worker.tabular_models
    return tabular_model_names(settings.models_dir) if chosen == ("*",) else list(chosen)


def input_topics(settings: Settings, models: Collection[str]) -> dict[str, int]:
    """The topics this worker reads or writes, with the partition count to create them with
    (`models`: the names of the models it serves)."""
    topics = settings.topics
    wanted = {
        topics.scores: settings.worker.partitions,
        topics.shadow_scores: settings.worker.partitions,
        topics.alerts: settings.worker.partitions,
        topics.dlq: settings.worker.partitions,
    }
    if "fraud" in settings.worker.models:
        wanted[topics.transactions] = settings.worker.partitions
        wanted[topics.labels] = settings.worker.partitions
    if "market" in settings.worker.models:
        wanted[topics.market] = 1
    if any(name not in ("fraud", "market") for name in models):
        wanted[topics.requests] = settings.worker.partitions
    return wanted


async def wait_for_topics(
    settings: Settings,
    wanted: dict[str, int],
    written_only_by_us: Collection[str],
    max_backoff: float = 30.0,
    configs: dict[str, dict[str, str]] | None = None,
) -> dict[str, int]:
    """Retry with exponential backoff until the broker answers; never give up on our own."""
    from riskstream.kafka import BrokerUnavailable, ensure_topics

    delay = 0.5
    while True:
        try:
            return await ensure_topics(
                settings.kafka, wanted, written_only_by_us=written_only_by_us, configs=configs
            )
        except BrokerUnavailable as exc:
            cause = exc.__cause__  # refused, timed out, TLS or SASL failure: say which
            why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
            log.warning("%s%s; retrying in %.1f s", exc, why, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)


def refuse_unsupported(settings: Settings) -> None:
    """Exit with EXIT_UNSUPPORTED before anything starts on a setup the worker is not built for."""
    from riskstream.faust_app import untested_versions

    problems = [
        f"{found}: riskstream overrides parts of Faust's consumer and was not tested with this "
        "release; install the tested one (pip install -e . does)"
        for found in untested_versions()
    ]
    if settings.worker.store != "memory://":
        problems.append(
            f"RISKSTREAM_STORE={settings.worker.store}: the worker writes its tables a batch at "
            "a time into Faust's in-memory store; use memory:// (the changelog topics keep "
            "the state durable)"
        )
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(EXIT_UNSUPPORTED)


def run_worker(settings: Settings) -> None:
    """Blocks until the worker is stopped (SIGINT/SIGTERM); exits non-zero on a bad model."""
    import faust
    from mode import Service

    from riskstream.app import build_app, internal_topics, report_progress, worker_id
    from riskstream.metrics import MetricsServer, MetricsServerError, WorkerMetrics
    from riskstream.scoring import ModelError
    from riskstream.terminal_replica import HISTORY_TOPIC_CONFIG

    logging.basicConfig(
        level=settings.worker.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A flush that outlasts its timer's interval is expected under load, not news.
    logging.getLogger("mode.timers").setLevel(logging.ERROR)
    refuse_unsupported(settings)
    try:
        models = load_models(settings)
    except ModelError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_MODEL)
    for model in models.values():
        log.info(
            "model %s version %s from %s (threshold %.4f)",
            model.name,
            model.version,
            model.path,
            model.threshold,
        )
    loop = new_event_loop()
    asyncio.set_event_loop(loop)  # Faust, the metrics server and the checks below share one loop

    metrics = WorkerMetrics()
    metrics.set_worker(worker_id(), _version())
    for model in models.values():
        metrics.set_model(model.name, model.version)
    metrics.set_healthy(False)
    health = WorkerHealth(settings.kafka.bootstrap_servers, settings.worker.stall_seconds)
    # Served before the broker is reached, so /healthz says why the worker is not ready yet.
    server = MetricsServer(settings.metrics_host, settings.metrics_port, metrics.registry, health)
    try:
        loop.run_until_complete(server.start())
    except MetricsServerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_METRICS_PORT)
    log.info("metrics at http://%s:%s/metrics", settings.metrics_host, settings.metrics_port)

    topics = settings.topics
    outputs = {topics.scores, topics.shadow_scores, topics.alerts, topics.dlq}
    partitions = loop.run_until_complete(
        wait_for_topics(settings, input_topics(settings, models), written_only_by_us=outputs)
    )
    log.info("topics ready: %s", partitions)
    health.app = build_app(settings, models, metrics, partitions)
    # Created here rather than by Faust, so that leftovers of a lost topic are cleared first.
    internal = internal_topics(health.app)
    histories = {name: dict(HISTORY_TOPIC_CONFIG) for name in health.app.riskstream_internal_topics}
    loop.run_until_complete(
        wait_for_topics(settings, internal, written_only_by_us=internal, configs=histories)
    )

    class Supervision(Service):
        """Progress, stalls and health every few seconds, from the worker's start on (Faust's
        own timers wait for the first table recovery); stops the metrics server last."""

        @Service.timer(PROGRESS_REPORT_SECONDS)
        async def _report_progress(self) -> None:
            try:
                await report_progress(health.app, settings, metrics)
            except Exception:  # supervision must never stop the worker it watches
                log.exception("progress report failed; the next one follows shortly")

        async def on_stop(self) -> None:
            await server.stop()

    worker = faust.Worker(
        health.app,
        Supervision(),
        loglevel=settings.worker.log_level,
        quiet=True,
        override_logging=False,
        loop=loop,
    )
    worker.execute_from_commandline()


class WorkerHealth:
    """/healthz: 'waiting for broker' until the Faust app exists, then app_health()."""

    def __init__(self, bootstrap_servers: str, stall_seconds: float) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.stall_seconds = stall_seconds
        self.app: Any = None

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        if self.app is None:
            return False, {
                "state": "waiting for broker",
                "reasons": [f"no Kafka broker has answered at {self.bootstrap_servers} yet"],
            }
        return app_health(self.app, self.stall_seconds)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed: the worker's cost is mostly per-message event-loop work."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def app_health(app: Any, stall_seconds: float) -> tuple[bool, dict[str, Any]]:
    """Healthy when the worker reached the broker recently and no partition with records to
    read (or table partition to recover) has stood still for `stall_seconds`: a stalled worker
    answers 503 so that a supervisor restarts it."""
    import time

    progress = app.riskstream_progress
    since_contact = time.monotonic() - progress.last_broker_contact
    stalls = progress.longest_stalls(stall_seconds)
    details: dict[str, Any] = {
        "assigned_partitions": len(app.consumer.assignment()) if app.consumer else 0,
        "seconds_since_broker_contact": round(since_contact, 1),
        "rebalancing": bool(app.rebalancing),
        "in_recovery": bool(app.in_recovery),
    }
    reasons = []
    if since_contact >= 20.0:
        reasons.append(
            f"no answer from the Kafka broker for {since_contact:.0f} s"
            if progress.last_broker_contact
            else "the Kafka broker has not answered since the worker started"
        )
    if stalls:
        details["stalled_partitions"] = stalls
        reasons.append(
            f"{len(stalls)} partition(s) with records to read have not moved for "
            f"{stall_seconds:.0f} s or more (RISKSTREAM_STALL_SECONDS); restart the worker"
        )
    if reasons:
        details["reasons"] = reasons
    return not reasons, details


def _version() -> str:
    from riskstream import __version__

    return __version__


@click.command("worker")
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with one sub-folder per model [env RISKSTREAM_MODELS_DIR, default models].",
)
@click.option(
    "--models",
    "model_names",
    help="Comma-separated models to serve [env RISKSTREAM_MODELS, default fraud,market].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Port for /metrics and /healthz [env RISKSTREAM_METRICS_PORT, default 9108].",
)
@click.option("--bootstrap-servers", help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS].")
def worker_command(
    models_dir: Path | None,
    model_names: str | None,
    metrics_port: int | None,
    bootstrap_servers: str | None,
) -> None:
    """Run the stream processor with the newest version of each model.

    Consumes transactions, risk.labels and market.indicators; publishes risk.scores,
    risk.alerts and risk.dlq. Refuses to start (exit 3) when a model is missing or does not
    match the feature code, exit 4 when the broker lost its topics (restart it then). Stop
    with Ctrl-C or SIGTERM.
    """
    import dataclasses

    settings = Settings.from_env(
        models_dir=models_dir, metrics_port=metrics_port, bootstrap_servers=bootstrap_servers
    )
    if model_names:
        names = tuple(n.strip() for n in model_names.split(",") if n.strip())
        settings = dataclasses.replace(
            settings, worker=dataclasses.replace(settings.worker, models=names)
        )
    run_worker(settings)
