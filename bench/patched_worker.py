"""What-if worker: `riskstream worker` with Faust's consumer fetch wait shortened. NOT the product.

faust-streaming 0.15.3 creates its aiokafka consumer with a hard-coded `fetch_max_wait_ms=1500`
(faust/transport/drivers/aiokafka.py). The embedded Tansu broker holds a fetch for part of
that wait even when records arrive meanwhile (a plain aiokafka consumer there sees a median
delay of about a quarter of `fetch_max_wait_ms`), and a score takes two fetches (transactions,
then the by-terminal topic). This wrapper replaces the value for consumers that belong to a
group (Faust's) with BENCH_FETCH_MAX_WAIT_MS and then runs the unchanged worker, so the
benchmark can measure what the change would buy before anyone changes the product.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import aiokafka

FETCH_MAX_WAIT_MS = int(os.environ["BENCH_FETCH_MAX_WAIT_MS"])


class ShortFetchWaitConsumer(aiokafka.AIOKafkaConsumer):
    def __init__(self, *topics: str, **kwargs: Any) -> None:
        if kwargs.get("group_id"):
            kwargs["fetch_max_wait_ms"] = FETCH_MAX_WAIT_MS
        super().__init__(*topics, **kwargs)


def main() -> None:
    aiokafka.AIOKafkaConsumer = ShortFetchWaitConsumer  # Faust looks it up at call time
    from riskstream.cli import main as riskstream

    sys.argv = ["riskstream", "worker"]
    riskstream()


if __name__ == "__main__":
    main()
