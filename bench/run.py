"""riskstream benchmark: ceiling vs worker throughput, latency, state memory, table recovery
speed, and a profile.

    .venv/bin/python bench/run.py            # full run, about 6-10 minutes
    .venv/bin/python bench/run.py --quick    # smoke run, under a minute

Everything runs against an embedded Tansu broker on a free port, with the bundled fraud model
and one set of synthetic transactions published once before any consumer starts. See
bench/README.md for the method and for what the numbers mean.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from common import (
    BENCH_DIR,
    events_option,
    quick_option,
    rates_option,
    results_out_option,
    run_and_save,
    seconds_per_rate_option,
)
from rich.console import Console

if TYPE_CHECKING:
    from dataset import Dataset, Published
    from throughput import WorkerRun

    from riskstream.broker import EmbeddedBroker

PY_SPY = Path(sys.executable).parent / "py-spy"


@dataclasses.dataclass(frozen=True)
class Plan:
    events: int
    repeat: int
    rates: tuple[float, ...]
    latency_seconds: float
    customers: int
    terminals: int
    out: Path
    quick: bool

    @property
    def drain_timeout(self) -> float:
        return max(120.0, self.events / 50.0)


def _plan(
    quick: bool,
    events: int | None,
    repeat: int | None,
    rates: tuple[float, ...],
    latency_seconds: float | None,
    out: Path | None,
) -> Plan:
    folder = out or Path(tempfile.mkdtemp(prefix="riskstream-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    return Plan(
        events=events or (2_000 if quick else 20_000),
        repeat=repeat or (1 if quick else 3),
        rates=rates or ((500.0,) if quick else (100.0, 500.0)),
        latency_seconds=latency_seconds or (3.0 if quick else 12.0),
        customers=100_000 if quick else 1_000_000,
        terminals=1_000 if quick else 10_000,
        out=folder,
        quick=quick,
    )


def _state_memory(plan: Plan, form: str) -> dict:
    sizes = ["--customers", str(plan.customers), "--terminals", str(plan.terminals)]
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "state_memory.py"), *sizes, "--form", form],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise click.ClickException(f"state_memory.py failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def _ceiling(bootstrap: str, topic: str, events: int, broker_pid: int) -> dict:
    arguments = [bootstrap, topic, str(events), str(broker_pid)]
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "ceiling.py"), *arguments],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode:
        raise click.ClickException(f"ceiling.py failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def run(plan: Plan, console: Console) -> dict:
    """Every phase in order; memory first, while no broker or worker competes for RAM."""
    from dataset import make_dataset, publish_once
    from machine import LoadLog, describe
    from pipeline_cost import measure_pipeline

    from riskstream.broker import EmbeddedBroker, free_port

    load = LoadLog()
    load.mark("start")
    results: dict = {"machine": describe(), "plan": dataclasses.asdict(plan)}
    with console.status("state memory (fresh processes)…"):
        results["memory"] = {form: _state_memory(plan, form) for form in ("bytes", "objects")}
    load.mark("memory")
    dataset = make_dataset(plan.events)
    with console.status("per-event code alone…"):
        results["pipeline"] = dataclasses.asdict(measure_pipeline(dataset))
    with EmbeddedBroker(port=free_port()) as broker:
        assert broker.pid is not None
        with console.status("publishing the events once…"):
            published = publish_once(broker.bootstrap_servers, dataset)
        results["published"] = dataclasses.asdict(published)
        results["ceiling"] = [
            _ceiling(broker.bootstrap_servers, published.transactions, plan.events, broker.pid)
            for _ in _counted(console, "ceiling", plan.repeat)
        ]
        load.mark("ceiling")
        for workers in (1, 2):
            results[f"workers_{workers}"] = _worker_runs(plan, console, broker, published, workers)
            load.mark(f"{workers} worker{'s' if workers > 1 else ''}")
        results["latency"] = _latency(plan, console, broker.bootstrap_servers, dataset)
        load.mark("latency")
        with console.status("the broker's own latency: a relay doing nothing…"):
            from relay_floor import run_relay_floor

            results["relay_floor"] = run_relay_floor(
                broker.bootstrap_servers, plan.rates, plan.latency_seconds
            )
        load.mark("relay floor")
    with EmbeddedBroker(port=free_port()) as broker, console.status("table recovery…"):
        from recovery import measure_recovery  # a broker of its own: no other topic's batches

        results["recovery"] = measure_recovery(broker.bootstrap_servers, plan.customers, plan.out)
        load.mark("recovery")
    results["load"] = load.summary()
    return results


def _counted(console: Console, what: str, repeat: int) -> Iterator[int]:
    for i in range(repeat):
        with console.status(f"{what} {i + 1}/{repeat}…"):
            yield i


def _worker_runs(
    plan: Plan, console: Console, broker: EmbeddedBroker, published: Published, workers: int
) -> list[WorkerRun]:
    """The first one-worker run is profiled (when py-spy is there)."""
    from throughput import run_workers

    if not PY_SPY.exists():
        console.print(f"[yellow]no py-spy at {PY_SPY}: the worker will not be profiled[/]")
    runs = []
    for i in _counted(console, f"riskstream, {workers} worker(s)", plan.repeat):
        profiled = workers == 1 and i == 0 and PY_SPY.exists()
        runs.append(
            run_workers(
                bootstrap=broker.bootstrap_servers,
                broker_pid=broker.pid or 0,
                transactions=published.transactions,
                labels=published.labels,
                events=plan.events,
                n_workers=workers,
                workdir=plan.out,
                timeout=plan.drain_timeout,
                profile=(PY_SPY, plan.out / "worker-profile.txt") if profiled else None,
            )
        )
    return runs


def _latency(plan: Plan, console: Console, bootstrap: str, dataset: Dataset) -> list:
    """The product as shipped, one worker, at each offered rate."""
    from latency import run_latency

    rates = ", ".join(f"{r:.0f}" for r in plan.rates)
    with console.status(f"latency at {rates} events/s…"):
        return run_latency(
            bootstrap=bootstrap,
            dataset=dataset,
            rates=list(plan.rates),
            seconds=plan.latency_seconds,
            workdir=plan.out,
        )


@click.command()
@quick_option("Smoke run: few events, one repetition (< 1 min).")
@events_option("Events per throughput run [20000; quick 2000].")
@click.option(
    "--repeat", type=click.IntRange(min=1), help="Repetitions per throughput setup [3; quick 1]."
)
@rates_option("Offered events/s for the latency run; repeat for several [100 and 500; quick 500].")
@seconds_per_rate_option("--latency-seconds", "Seconds of traffic per latency rate [12; quick 3].")
@results_out_option(
    "Folder for results.json, report.txt, worker logs, the raw profile [new temp folder]."
)
def main(
    quick: bool,
    events: int | None,
    repeat: int | None,
    rates: tuple[float, ...],
    latency_seconds: float | None,
    out: Path | None,
) -> None:
    """Measure riskstream against a plain-aiokafka ceiling and print one table."""
    from report import render, to_json

    plan = _plan(quick, events, repeat, rates, latency_seconds, out)
    run_and_save(
        plan.out,
        functools.partial(run, plan),
        render,
        lambda results: json.dumps(to_json(results), indent=2),
        "results, worker logs and the raw profile",
    )


if __name__ == "__main__":
    main()
