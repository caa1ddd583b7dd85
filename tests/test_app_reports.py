"""A lost watermark report is logged once, not left for asyncio to report as never retrieved."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from riskstream.app import _note_lost_report


def test_a_failed_watermark_report_is_logged_and_its_failure_retrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unretrieved: list[dict[str, Any]] = []

    async def fail_one_report() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
        delivery = loop.create_future()
        delivery.add_done_callback(_note_lost_report)
        delivery.set_exception(ConnectionError("broker gone"))
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
        del delivery
        gc.collect()

    with caplog.at_level(logging.WARNING, logger="riskstream.worker"):
        asyncio.run(fail_one_report())

    assert [r.getMessage() for r in caplog.records] == [
        "a watermark report was not delivered (ConnectionError('broker gone')); "
        "the next one replaces it"
    ]
    assert unretrieved == []
