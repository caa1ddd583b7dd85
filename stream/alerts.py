"""Alerts: the records built from scores over threshold, and the `riskstream alerts` reader."""

from __future__ import annotations

import asyncio
import contextlib

import click

from riskstream import contracts


def build_alert(
    score: contracts.ScoreRecord,
    threshold: float,
    severity: str,
    reasons: list[contracts.Reason],
) -> contracts.AlertRecord:
    """The alert record for a score at or above the model's threshold."""
    return contracts.AlertRecord(
        alert_id=contracts.make_alert_id(score.model, score.model_version, score.event_id),
        event_id=score.event_id,
        event_type=score.event_type,
        entity_id=score.entity_id,
        model=score.model,
        model_version=score.model_version,
        score=score.score,
        event_timestamp=score.event_timestamp,
        scored_at=score.scored_at,
        severity=severity,
        threshold=threshold,
        reasons=reasons,
    )


_SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow"}


def _format_reasons(alert: contracts.AlertRecord, limit: int = 3) -> str:
    return ", ".join(
        f"{reason.feature}={reason.value:.4g}" for reason in list(alert.reasons)[:limit]
    )


async def _read_alerts(follow: bool, limit: int | None, from_beginning: bool) -> None:
    from aiokafka import AIOKafkaConsumer
    from rich.console import Console

    from riskstream.config import Settings
    from riskstream.kafka import BrokerUnavailable, partition_counts

    settings = Settings.from_env()
    console = Console()
    try:
        await partition_counts(settings.kafka, [settings.topics.alerts], timeout=5)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    consumer = AIOKafkaConsumer(
        settings.topics.alerts,
        **settings.kafka.aiokafka_kwargs(),
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    shown = 0
    try:
        console.print(
            f"[dim]alerts from {settings.topics.alerts} at {settings.kafka.bootstrap_servers}"
            f"{' (following; Ctrl-C to stop)' if follow else ''}[/]"
        )
        while limit is None or shown < limit:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches and not follow:
                break
            for messages in batches.values():
                for message in messages:
                    try:
                        alert = contracts.decode_alert(message.value)
                    except contracts.ContractError as exc:
                        console.print(f"[red]unreadable alert at offset {message.offset}:[/] {exc}")
                        continue
                    style = _SEVERITY_STYLE.get(alert.severity, "")
                    console.print(
                        f"{alert.event_timestamp}  [{style}]{alert.severity:<8}[/]  "
                        f"{alert.model}/{alert.model_version}  score {alert.score:.3f} "
                        f"(≥ {alert.threshold:.3f})  {alert.event_type} {alert.event_id}  "
                        f"entity {alert.entity_id}  [dim]{_format_reasons(alert)}[/]"
                    )
                    shown += 1
    finally:
        await consumer.stop()
    if not follow:
        console.print(f"[dim]{shown} alert(s)[/]")


@click.command("alerts")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new alerts (Ctrl-C to stop).")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many alerts.")
@click.option(
    "--new-only", is_flag=True, help="Only alerts published from now on (default: from the start)."
)
def alerts_command(follow: bool, limit: int | None, new_only: bool) -> None:
    """Print the alerts on risk.alerts for a person to read, one line each."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_read_alerts(follow, limit, from_beginning=not new_only))
