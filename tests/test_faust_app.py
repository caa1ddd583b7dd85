"""The Faust app riskstream runs: the commit rule for out-of-order acknowledgements, the
consumer's fetch wait, and the settings that reach Faust."""

from __future__ import annotations

import pytest

from riskstream.config import Settings
from riskstream.faust_app import RiskstreamApp, _Consumer, committable_end, faust_app


@pytest.mark.parametrize(
    ("acked", "committed", "lowest_unacked", "expected"),
    [
        ([5, 6, 7], 5, None, 8),  # in order: the whole run
        ([5, 6, 8, 9], 5, None, 7),  # 7 still in flight: up to it
        ([6, 7, 8], 5, None, None),  # 5 held: nothing (Faust's own rule committed 9 here)
        ([7, 8], 5, None, None),
        ([0, 1, 2], None, None, 3),  # before the first commit
        ([1, 2, 3], None, 0, None),  # before the first commit, 0 held (Faust: committed 4)
        ([0, 1, 2, 3], None, 2, 2),  # never past an unacknowledged message
        ([0, 1, 3], None, None, 2),
        ([3, 4], None, 7, 5),  # a partition read from offset 3 (earliest after retention)
    ],
)
def test_a_commit_never_passes_an_unacknowledged_message(
    acked: list[int], committed: int | None, lowest_unacked: int | None, expected: int | None
) -> None:
    assert committable_end(acked, committed, lowest_unacked) == expected


def test_the_app_uses_the_fixed_consumer_and_the_configured_fetch_wait() -> None:
    settings = Settings.from_env(
        {"RISKSTREAM_FETCH_MAX_WAIT_MS": "25", "RISKSTREAM_LINGER_MS": "40"}
    )
    app = faust_app(settings, partitions=4)
    assert isinstance(app, RiskstreamApp)
    assert app.transport.Consumer is _Consumer
    assert app.riskstream_fetch_max_wait_ms == 25
    assert app.conf.producer_linger == pytest.approx(0.040)
    assert app.conf.stream_wait_empty is False, "a rebalance must not wait for held events"
