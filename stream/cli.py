"""The `riskstream` command line: one click group, each command importing its work lazily.

Lazy imports keep `riskstream --help` instant and keep TensorFlow out of every command
except `train`.
"""

from __future__ import annotations

import importlib
import signal
import sys
from types import FrameType

import click
from rich.console import Console

console = Console(stderr=True)

# name -> "module:attribute" of a click command; modules load only when their command runs
# (or when --help lists them), so TensorFlow is imported by `train` alone.
LAZY_COMMANDS: dict[str, str] = {
    "simulate": "riskstream.simulate:simulate",
    "train": "riskstream.training.train:train_command",
    "evaluate": "riskstream.training.evaluate:evaluate_command",
    "worker": "riskstream.worker:worker_command",
    "replay": "riskstream.replay:replay_command",
    "alerts": "riskstream.alerts:alerts_command",
    "demo": "riskstream.demo:demo_command",
    "promote": "riskstream.promote:promote_command",
    "compare": "riskstream.compare:compare_command",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """Treat SIGTERM and SIGHUP (terminal closed) like Ctrl-C, so that `finally` blocks shut
    children down cleanly."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGHUP, _raise_keyboard_interrupt)


def fail(message: str) -> None:
    """Print an actionable error and exit with status 2 (usage/environment problem)."""
    console.print(f"[bold red]error:[/] {message}")
    sys.exit(2)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="riskstream")
def main() -> None:
    """riskstream: score card transactions and market indicators for risk, as they stream.

    Configuration comes from environment variables (KAFKA_BOOTSTRAP_SERVERS,
    RISKSTREAM_MODELS_DIR, RISKSTREAM_METRICS_PORT, RISKSTREAM_TOPIC_*); flags override them.
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=9092,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="TCP port to listen on.",
)
def broker(host: str, port: int) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground.

    Data is kept in memory only: use it for development, demos and tests. Stop with Ctrl-C.
    """
    from riskstream.broker import BrokerError, EmbeddedBroker

    stop_on_sigterm()
    embedded = EmbeddedBroker(host, port, quiet=False)
    try:
        embedded.start()
    except BrokerError as exc:
        fail(str(exc))
    console.print(
        f"[green]broker ready[/] on [bold]{embedded.bootstrap_servers}[/] "
        f"(in memory; Ctrl-C to stop) — export KAFKA_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}"
    )
    try:
        code = embedded.wait()
        if code != 0:
            fail(f"the broker exited with code {code}")
    except KeyboardInterrupt:
        console.print("stopping broker…")
    finally:
        embedded.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
