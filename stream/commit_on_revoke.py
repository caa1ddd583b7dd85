"""On a rebalance, commit what is done before the partitions go.

Why. Faust forgets a revoked partition's acknowledgements before any revoke handler runs
(`faust.transport.consumer.Consumer.on_partitions_revoked` pops `_acked`), so everything
processed since the last periodic commit (`RISKSTREAM_COMMIT_INTERVAL_S`) is read again by the
partition's next owner. At backlog speed that is thousands of transactions and a day or more of
event time: further back than a customer's allowed lateness keeps the entries a redelivery
needs to get its first features back (riskstream.features.fraud), so repeat scores differed
from the first ones and crossed the alert threshold in the handbook pair test.

Before Faust forgets, the producer is flushed (batches whose outputs were on their way get
acknowledged, riskstream.batch_hook.ack_when_delivered) and the acknowledged offsets are
committed, by riskstream's commit rule. Only the batches still in flight are read again. The
broker accepts the commit: the member's generation is still current while the group forms.

The same runs when the worker stops (SIGTERM: it leaves the group): Faust's own stop commits
only what was acknowledged by then, and the batches whose outputs were still on their way were
read again by the partitions' next owner (871 and 972 repeats in CI runs of the join/leave test,
where at most 301 are allowed).

Pinned by tests/test_faust_app.py::test_a_revoked_partition_commits_what_was_acknowledged and
by the join/leave test (tests/test_reliability_crash.py), which counts the repeats.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

_log = logging.getLogger(__name__)


class CommitOnRevoke:
    """Mixed into riskstream's Faust consumer; called first in its `on_partitions_revoked`."""

    app: Any

    async def commit_before_revoke(self) -> None:
        try:
            before = getattr(self.app, "riskstream_before_revoke", None)
            if before is not None:
                await before()
            await self.app.producer.flush()
            await asyncio.sleep(0)  # the delivery callbacks acknowledge their batches
            await self.maybe_wait_for_commit_to_finish()  # type: ignore[attr-defined]
            await self.commit()  # type: ignore[attr-defined]
        except Exception as exc:  # nothing is lost: the next owner reads from the last commit
            _log.warning(
                "could not commit before the rebalance (%r); the partitions' next "
                "owners read again from the last commit",
                exc,
            )
