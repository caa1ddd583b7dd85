"""Shared fixtures. The broker fixture prefers, in order: KAFKA_BOOTSTRAP_SERVERS, a real
Apache Kafka through testcontainers when a Docker engine answers, the embedded Tansu broker."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HANDBOOK_CSV = SHARED_DATA / "fraud-handbook" / "transactions-2018-04-01_2018-08-14.csv.gz"
SP500_CSV = SHARED_DATA / "market-sp500-vix" / "GSPC.csv"
VIX_CSV = SHARED_DATA / "market-sp500-vix" / "VIX.csv"


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka-protocol broker for this test session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from riskstream.broker import EmbeddedBroker, free_port

    with EmbeddedBroker("127.0.0.1", free_port()) as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def unique_topic() -> str:
    """A topic name no other test uses, so tests can share one broker."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def handbook_csv() -> Path:
    if not HANDBOOK_CSV.exists():
        pytest.skip(f"the handbook data is not at {HANDBOOK_CSV}")
    return HANDBOOK_CSV


@pytest.fixture(scope="session")
def market_csvs() -> tuple[Path, Path]:
    if not (SP500_CSV.exists() and VIX_CSV.exists()):
        pytest.skip(f"the S&P 500 / VIX data is not under {SHARED_DATA}")
    return SP500_CSV, VIX_CSV
