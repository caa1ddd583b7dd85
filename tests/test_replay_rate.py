"""`riskstream replay --rate R` paces the events at R per second against a real broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from stream_support import StreamEnv

from riskstream.demo import BUNDLED_MODELS
from riskstream.replay import Outgoing, publish


def test_a_paced_replay_keeps_its_rate_instead_of_waiting_for_each_acknowledgement(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """It used to wait for every record's acknowledgement when paced, which capped a replay
    near 1 / (linger + round trip): about 200 events/s whatever rate was asked for."""
    settings = StreamEnv(kafka_bootstrap, BUNDLED_MODELS, tmp_path).settings()
    events = [
        Outgoing(float(n), settings.topics.transactions, f"c{n}".encode(), b"{}")
        for n in range(1_500)
    ]
    started = time.monotonic()
    stats = asyncio.run(publish(settings, iter(events), rate=1_000.0, show_progress=False))
    seconds = time.monotonic() - started
    assert stats.transactions == 1_500
    assert 1.3 <= seconds <= 6.0, f"1,500 events at 1,000/s took {seconds:.1f} s"
