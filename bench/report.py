"""The printed table (rich) and the JSON file, from one run's results."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from common import Spread
from profiling import ACTIVITIES, LAYERS, summarise
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from throughput import WorkerRun

GIB = 1024**3
MIB = 1024**2
TARGET_RATIO = 0.5
TARGET_SCALING = 1.6
TARGET_P99_MS = {500.0: 25.0}  # by offered events/s; 50 ms at any other rate
TARGET_P99_DEFAULT_MS = 50.0
TARGET_CUSTOMERS = 1_000_000
TARGET_RSS = 2 * GIB
TARGET_RECOVERY = 50_000.0


def _ceiling_rates(results: dict) -> Spread:
    return Spread(tuple(r["events"] / r["seconds"] for r in results["ceiling"]))


def _ceiling_cpu_us(results: dict) -> Spread:
    return Spread(tuple(r["cpu_seconds"] / r["events"] * 1e6 for r in results["ceiling"]))


def _runs(results: dict, workers: int) -> list[WorkerRun]:
    return results[f"workers_{workers}"]


def _spread(runs: list[WorkerRun], value: Any) -> Spread:
    return Spread(tuple(value(run) for run in runs))


def _header(results: dict, console: Console) -> None:
    machine = results["machine"]
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    plan = results["plan"]
    console.print(
        f"[bold]riskstream benchmark[/] — {'quick' if plan['quick'] else 'full'} run, "
        f"{results['seconds']:.0f} s"
    )
    console.print(
        f"machine: {machine['cores']} cores {machine['cpu']}, {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}, Python {machine['python']}"
    )
    console.print(f"libraries: {libraries}")
    console.print(f"load: {results['load']}")
    published = results["published"]
    console.print(
        f"input: {published['events']:,} synthetic transactions (1,000 customers, 2,000 "
        f"terminals), 4 partitions, published once in {published['seconds']:.1f} s before any "
        f"consumer; {plan['repeat']} repetition(s): median (min–max)"
    )


def _throughput_table(results: dict) -> Table:
    table = Table(title="Throughput: draining the pre-produced events", title_justify="left")
    columns = (
        "setup",
        "events/s",
        "CPU µs/event",
        "of which kernel",
        "cores used",
        "broker CPU µs/event",
        "launch → first event s",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "setup" else "right")
    ceiling = results["ceiling"]

    def per_event(key: str) -> Spread:
        return Spread(tuple(r[key] / r["events"] * 1e6 for r in ceiling))

    table.add_row(
        "ceiling: plain aiokafka loop (one process)",
        _ceiling_rates(results).text(),
        per_event("cpu_seconds").text(),
        per_event("system_seconds").text(),
        Spread(tuple(r["cpu_seconds"] / r["seconds"] for r in ceiling)).text(".2f"),
        per_event("broker_cpu_seconds").text(),
        Spread(tuple(r["join_seconds"] for r in ceiling)).text(".1f"),
    )
    for workers in (1, 2):
        runs = _runs(results, workers)
        table.add_row(
            f"riskstream worker × {workers}",
            _spread(runs, lambda r: r.rate).text(),
            _spread(runs, lambda r: r.worker_cpu_us).text(),
            _spread(runs, lambda r: r.worker_system_seconds / r.events * 1e6).text(),
            _spread(runs, lambda r: r.worker_cpu_seconds / r.seconds).text(".2f"),
            _spread(runs, lambda r: r.broker_cpu_us).text(),
            _spread(runs, lambda r: r.start_to_first_event).text(".1f"),
        )
    pipeline = results["pipeline"]
    total = sum(pipeline[k] for k in ("stage1_us", "history_us", "features_us", "batch_us"))
    parts = (
        f"stage 1 {pipeline['stage1_us']:.0f} + terminal history {pipeline['history_us']:.0f}"
        f" + terminal features {pipeline['features_us']:.0f} + batch {pipeline['batch_us']:.0f} µs"
    )
    table.add_row(
        "riskstream per-event code alone (no Kafka, no Faust)",
        f"{1e6 / total:,.0f}",
        f"{total:,.0f}",
        "",
        "",
        "",
        "",
    )
    table.caption = (
        "cores used = CPU seconds / wall seconds of the measured window; per-event code alone "
        f"(one core, CPU time): {parts}"
    )
    return table


def _median_rate(results: dict, workers: int) -> float:
    return _spread(_runs(results, workers), lambda r: r.rate).median


def _targets(results: dict) -> list[tuple[str, str, str, bool]]:
    ceiling = _ceiling_rates(results).median
    one, two = _median_rate(results, 1), _median_rate(results, 2)
    cpu_ratio = (
        _ceiling_cpu_us(results).median
        / _spread(_runs(results, 1), lambda r: r.worker_cpu_us).median
    )
    rss = _projected_worker_rss(results)
    rows = [
        (
            f"riskstream ≥ {TARGET_RATIO} × ceiling (one worker)",
            f"{one / ceiling:.3f} × (by CPU per event: {cpu_ratio:.3f} ×)",
            f"{one:,.0f} vs {ceiling:,.0f} events/s",
            one / ceiling >= TARGET_RATIO,
        ),
        (
            f"two workers ≥ {TARGET_SCALING} × one",
            f"{two / one:.2f} ×",
            f"{two:,.0f} vs {one:,.0f} events/s",
            two / one >= TARGET_SCALING,
        ),
    ]
    floors = {floor.rate: floor for floor in results.get("relay_floor", [])}
    for latency in results["latency"]:
        target = TARGET_P99_MS.get(latency.rate, TARGET_P99_DEFAULT_MS)
        floor = floors.get(latency.rate)
        beside = f"; a relay doing nothing: p99 {floor.arrival_ms[1]:,.0f} ms" if floor else ""
        rows.append(
            (
                f"p99 event-to-score < {target:.0f} ms at {latency.rate:,.0f} events/s",
                f"{latency.arrival_ms[1]:,.0f} ms",
                f"p50 {latency.arrival_ms[0]:,.0f} ms, max {latency.arrival_ms[2]:,.0f} ms{beside}",
                latency.arrival_ms[1] < target and latency.missing == 0,
            )
        )
    recovery = results.get("recovery")
    if recovery is not None:
        rows.append(
            (
                f"table recovery ≥ {TARGET_RECOVERY:,.0f} records/s",
                f"{recovery.records_per_second:,.0f} records/s",
                f"{recovery.changelog_records:,} customers in {recovery.recovery_seconds:.0f} s; "
                f"a restarted worker serves {recovery.serving_after:.0f} s after launch",
                recovery.records_per_second >= TARGET_RECOVERY,
            )
        )
    rows.append(
        (
            "1,000,000 customers in < 2 GiB RSS",
            f"{rss / GIB:.2f} GiB",
            escape("worker RSS + 1,000,000 customers + 10,000 terminals as dict[bytes, bytes]"),
            rss < TARGET_RSS,
        )
    )
    return rows


def _targets_table(results: dict) -> Table:
    table = Table(title="Targets", title_justify="left")
    for column in ("target", "measured", "from", "met"):
        table.add_column(column)
    for name, measured, detail, met in _targets(results):
        table.add_row(name, measured, detail, "[green]yes[/]" if met else "[red]NO[/]")
    return table


def _latency_table(results: dict) -> Table:
    table = Table(
        title="Event-to-score latency at a fixed offered rate (one worker, after 1 s warm-up)",
        title_justify="left",
    )
    columns = (
        "offered/s",
        "achieved/s",
        "events",
        "unscored",
        "send → score arrives",
        "Kafka stamps: event → score sent",
        "relay doing nothing: send → arrives",
    )
    for column in columns:
        table.add_column(column, justify="right")
    floors = {floor.rate: floor for floor in results.get("relay_floor", [])}
    for r in results["latency"]:
        floor = floors.get(r.rate)
        table.add_row(
            f"{r.rate:,.0f}",
            f"{r.achieved_rate:,.0f}",
            f"{r.events:,}",
            f"{r.missing:,}",
            *(_ms(q) for q in (r.arrival_ms, r.stamped_ms)),
            _ms(floor.arrival_ms) if floor else "",
        )
    table.caption = "p50 / p99 / max, milliseconds"
    return table


def _ms(quantiles: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:,.0f}" for v in quantiles)


def _scale(results: dict) -> tuple[float, float]:
    """Factors from the measured counts to the target's 1,000,000 customers, 10,000 terminals."""
    memory = results["memory"]["bytes"]
    return TARGET_CUSTOMERS / memory["customers"], 10_000 / memory["terminals"]


def _state_bytes(memory: dict, customers: int, terminals: int) -> float:
    return memory["customer_bytes_each"] * customers + memory["terminal_bytes_each"] * terminals


def _projected_worker_rss(results: dict) -> float:
    worker = max(run.worker_rss for run in _runs(results, 1))
    return worker + _state_bytes(results["memory"]["bytes"], TARGET_CUSTOMERS, 10_000)


def _memory_table(results: dict) -> Table:
    customer_scale, _ = _scale(results)
    note = "" if customer_scale == 1 else f" (measured at {customer_scale:.0f}× fewer, scaled)"
    table = Table(
        title=f"Feature state memory: 1,000,000 customers, 10,000 terminals{note}",
        title_justify="left",
    )
    for column in (
        "form",
        "RSS B/customer",
        "payload B/customer",
        "RSS B/terminal",
        "payload B/terminal",
        "state for 1M + 10k",
        "process RSS",
    ):
        table.add_column(column, justify="right" if column != "form" else "left")
    for form, label in (
        ("bytes", escape("dict[bytes, bytes] (Faust memory store)")),
        ("objects", escape("dict[str, State] (objects)")),
    ):
        memory = results["memory"][form]
        state = _state_bytes(memory, TARGET_CUSTOMERS, 10_000)
        table.add_row(
            label,
            f"{memory['customer_bytes_each']:,.0f}",
            f"{memory['customer_payload_bytes_each']:,.0f}",
            f"{memory['terminal_bytes_each']:,.0f}",
            f"{memory['terminal_payload_bytes_each']:,.0f}",
            f"{state / MIB:,.0f} MiB",
            f"{(memory['baseline_rss'] + state) / MIB:,.0f} MiB",
        )
    worker = max(run.worker_rss for run in _runs(results, 1))
    recovery = results["memory"]["bytes"]["recovery_index_bytes_each"]
    table.caption = (
        f"worker RSS while draining (no customers yet to speak of): {worker / MIB:,.0f} MiB; "
        f"worker + state: {_projected_worker_rss(results) / MIB:,.0f} MiB. After a changelog "
        f"recovery Faust's memory store also keeps key → partition: +{recovery:,.0f} B/customer."
    )
    return table


def _profile_tables(results: dict) -> list[Table]:
    run: WorkerRun = _runs(results, 1)[0]
    if run.profile is None or not Path(run.profile).exists():
        return []
    summary = summarise(Path(run.profile))
    cpu_us = run.worker_cpu_us
    layers = Table(
        title=(
            f"Where the worker's time goes (py-spy --gil, {summary.samples:,} samples, run 1 "
            f"of one worker: {cpu_us:,.0f} CPU µs/event)"
        ),
        title_justify="left",
    )
    for column in ("layer (innermost deciding frame)", "share", "≈ µs/event", "top leaf frames"):
        layers.add_column(column, justify="right" if column in ("share", "≈ µs/event") else "left")
    for layer in LAYERS:
        share = summary.share(layer)
        if not share:
            continue
        leaves = ", ".join(
            f"{name.split(' (')[0]} {count / summary.samples:.0%}"
            for name, count in summary.top_leaf_by_layer.get(layer, [])[:3]
        )
        layers.add_row(layer, f"{share:.1%}", f"{share * cpu_us:,.0f}", leaves)
    activities = Table(title="Inclusive cost of activities (same samples)", title_justify="left")
    for column in ("activity", "share", "≈ µs/event"):
        activities.add_column(column, justify="left" if column == "activity" else "right")
    for activity in ACTIVITIES:
        share = summary.activity_share(activity)
        activities.add_row(activity, f"{share:.1%}", f"{share * cpu_us:,.0f}")
    return [layers, activities]


def render(results: dict, console: Console) -> None:
    _header(results, console)
    for table in (
        _throughput_table(results),
        _targets_table(results),
        _latency_table(results),
        _memory_table(results),
        *_profile_tables(results),
    ):
        console.print()
        console.print(table)


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {k: to_json(v) for k, v in dataclasses.asdict(value).items()}
        extras = {"rate": value.rate} if isinstance(value, WorkerRun) else {}
        if hasattr(value, "records_per_second"):
            extras = {"records_per_second": value.records_per_second}
        return {**fields, **extras}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
