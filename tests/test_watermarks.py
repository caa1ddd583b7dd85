"""Watermarks between the fraud stages: the rules that keep the stream equal to offline."""

from __future__ import annotations

import asyncio
import math
import random
import types
from typing import Any

from faust.types import TP

from riskstream import pipeline
from riskstream.app import FraudStage
from riskstream.features import fraud
from riskstream.terminal_replica import TerminalReplica
from riskstream.watermarks import CAUGHT_UP, UNKNOWN, HoldQueue, SourceClocks

DAY = 86_400.0
D = float(fraud.LABEL_DELAY_SECONDS)
TX0, TX1, LB0 = ("transactions", 0), ("transactions", 1), ("labels", 0)


def test_a_partition_holds_until_every_source_has_reported() -> None:
    queue: HoldQueue[str] = HoldQueue([TX0, TX1, LB0], D)
    assert queue.safe_time == UNKNOWN
    assert not queue.ready(100 * DAY)
    queue.mark(TX0, 200 * DAY)
    queue.mark(TX1, 200 * DAY)
    assert not queue.ready(100 * DAY), "the label partition has not reported yet"
    queue.mark(LB0, CAUGHT_UP)
    assert queue.ready(100 * DAY)


def test_ready_means_every_source_passed_t_minus_the_label_delay_strictly() -> None:
    queue: HoldQueue[str] = HoldQueue([TX0], D)
    queue.mark(TX0, 10 * DAY)
    assert queue.ready(10 * DAY + D - 1)
    # A transaction at exactly t - d belongs to the window (t - d - w, t - d]: a source that
    # reached t - d may still send another one with that very timestamp.
    assert not queue.ready(10 * DAY + D)


def test_release_returns_ready_transactions_oldest_first_and_keeps_the_rest() -> None:
    queue: HoldQueue[str] = HoldQueue([TX0, TX1], D)
    for name, day in [("c", 30), ("a", 10), ("d", 40), ("b", 20), ("a2", 10)]:
        queue.hold(day * DAY + D, name)
    queue.mark(TX0, 100 * DAY)
    assert queue.release() == [], "TX1 has not reported"
    queue.mark(TX1, 25 * DAY)
    assert queue.release() == ["a", "a2", "b"], "event-time order, arrival order on ties"
    assert len(queue) == 2
    queue.mark(TX1, CAUGHT_UP)
    assert queue.release() == ["c", "d"]
    assert len(queue) == 0


def test_the_latest_report_wins_even_when_it_goes_back() -> None:
    queue: HoldQueue[str] = HoldQueue([TX0], D)
    queue.mark(TX0, CAUGHT_UP)
    assert queue.ready(1e12)
    queue.mark(TX0, 5 * DAY)  # the idle partition received events again
    assert not queue.ready(5 * DAY + D)


def test_reports_from_outside_the_topology_are_ignored() -> None:
    queue: HoldQueue[str] = HoldQueue([TX0], D)
    queue.mark(("elsewhere", 3), CAUGHT_UP)
    assert queue.safe_time == UNKNOWN


def test_a_source_is_caught_up_only_when_it_processed_up_to_the_high_water_mark() -> None:
    clocks = SourceClocks()
    assert clocks.value(TX0, 10) == UNKNOWN, "nothing known before the start offset"
    clocks.started_at(TX0, 4)
    assert clocks.caught_up(TX0, 4), "an empty remainder (committed offset = high water)"
    assert not clocks.caught_up(TX0, 6)
    clocks.processed(TX0, 4, 3 * DAY)
    assert clocks.value(TX0, 6) == 3 * DAY
    clocks.processed(TX0, 5, None)  # dead-lettered: counts as read, moves no event time
    assert clocks.value(TX0, 6) == CAUGHT_UP
    assert not clocks.caught_up(TX0, None), "an unknown high-water mark proves nothing"


def test_the_newest_event_time_never_goes_back_with_an_out_of_order_event() -> None:
    clocks = SourceClocks()
    clocks.processed(TX0, 0, 5 * DAY)
    clocks.processed(TX0, 1, 4 * DAY)
    assert clocks.value(TX0, 10) == 5 * DAY


def test_reports_are_sent_on_change_and_refreshed_for_new_partition_owners() -> None:
    clocks = SourceClocks(refresh_seconds=1.0)
    clocks.processed(TX0, 0, DAY)
    assert clocks.should_send(TX0, DAY, now=0.0)
    clocks.sent(TX0, DAY, now=0.0)
    assert not clocks.should_send(TX0, DAY, now=0.5)
    assert clocks.should_send(TX0, 2 * DAY, now=0.5), "changed"
    assert clocks.should_send(TX0, DAY, now=1.0), "refreshed"


def test_retain_forgets_partitions_that_moved_away() -> None:
    clocks = SourceClocks()
    clocks.processed(TX0, 7, DAY)
    clocks.processed(TX1, 7, DAY)
    clocks.retain([TX1])
    assert clocks.needs_start(TX0) and not clocks.needs_start(TX1)


def test_watermarks_make_drifting_partitions_give_the_offline_terminal_features() -> None:
    """Two customer partitions drifting weeks apart, stage 2 fed in arrival order: with the
    hold queue every transaction gets exactly the offline terminal features; without, not."""
    rng = random.Random(7)
    transactions = sorted(
        (rng.uniform(0, 60 * DAY), f"tx{i}", rng.choice(["T1", "T2"]), rng.randrange(2))
        for i in range(600)
    )
    offline = _offline_terminal_features(transactions)
    # Partition 1 runs 20 days behind partition 0: interleave by (event time + lag).
    arrivals = sorted(
        (
            (ts + (20 * DAY if part else 0.0), ts, tx, term, part)
            for ts, tx, term, part in transactions
        )
    )
    assert _streamed(arrivals, hold=True) == offline
    assert _streamed(arrivals, hold=False) != offline


def _offline_terminal_features(
    transactions: list[tuple[float, str, str, int]],
) -> dict[str, tuple[float, ...]]:
    states: dict[str, fraud.TerminalState] = {}
    return {
        tx: fraud.terminal_step(states.setdefault(term, fraud.TerminalState()), tx, ts)
        for ts, tx, term, _ in transactions
    }


def _streamed(
    arrivals: list[tuple[float, float, str, str, int]], *, hold: bool
) -> dict[str, tuple[float, ...]]:
    sources = [TX0, TX1]
    queue: HoldQueue[tuple[float, str, str]] = HoldQueue(sources, D)
    states: dict[str, fraud.TerminalState] = {}
    features: dict[str, tuple[float, ...]] = {}
    newest = {TX0: -math.inf, TX1: -math.inf}

    def score(ts: float, tx: str, term: str) -> None:
        state = states.setdefault(term, fraud.TerminalState())
        features[tx] = fraud.terminal_step(state, tx, ts)

    for _, ts, tx, term, part in arrivals:
        source = sources[part]
        if not hold or queue.ready(ts):
            score(ts, tx, term)
        else:
            queue.hold(ts, (ts, tx, term), term)
        newest[source] = max(newest[source], ts)
        queue.mark(source, newest[source])  # a report after every forward
        for held in queue.release():
            score(*held)
    for source in sources:
        queue.mark(source, CAUGHT_UP)
    for held in queue.release():
        score(*held)
    return features


def test_watermark_records_round_trip_through_the_internal_topic_format() -> None:
    mark = pipeline.ForwardedWatermark("transactions", 3, CAUGHT_UP)
    assert pipeline.decode_forwarded(pipeline.encode_forwarded(mark)) == mark


def test_a_too_late_transaction_waits_behind_those_held_before_it_at_its_terminal() -> None:
    """Scored first, a too-late transaction would meet a terminal state without the ones that
    arrived before it (seen: the bad-input run's late event changed a neighbour by 0.000246)."""
    queue: HoldQueue[str] = HoldQueue([TX0], D)
    queue.mark(TX0, 10 * DAY)
    queue.hold(30 * DAY, "on time, T1", "T1")
    assert queue.ready(2 * DAY, "T2"), "another terminal is not held back"
    assert not queue.ready(2 * DAY, "T1"), "it arrived after a held one at T1"
    assert queue.ready(2 * DAY), "on-time transactions go by event time alone"
    queue.hold(2 * DAY, "too late, T1", "T1", behind_group=True)
    queue.hold(25 * DAY, "on time, T1, older", "T1")
    assert queue.release() == []
    queue.mark(TX0, CAUGHT_UP)
    assert queue.release() == ["on time, T1, older", "on time, T1", "too late, T1"]
    assert queue.ready(2 * DAY, "T1"), "nothing held at T1 any more"


def test_a_new_reader_withdraws_its_predecessors_report_before_its_first_forward() -> None:
    """A "caught up" sent before a crash stayed the latest word on its partition while the
    restarted worker forwarded the backlog, so transactions were scored before the labels of
    a slower partition (28 scores off in a SIGKILL run). The first thing a new reader sends is
    UNKNOWN; forwards follow it, and each reading signs its reports anew."""
    sent: list[tuple[str, Any]] = []

    class Producer:
        async def send(self, topic: str, key: Any, value: bytes, *rest: Any) -> Any:
            report = pipeline.decode_forwarded(value)
            sent.append(("report", report.time, report.reader))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    class Stages:
        app = types.SimpleNamespace(producer=Producer())
        progress = types.SimpleNamespace(saw=lambda *args: None)
        metrics = types.SimpleNamespace(set_held=lambda held: None)

        async def publish(self, tp: Any, offsets: list[int], outbox: Any, then: Any) -> None:
            sent.append(("forwards", offsets))

    replica: TerminalReplica[Any] = TerminalReplica(1, [TX0])
    stage = FraudStage(Stages(), "by-terminal", 1, replica, None, None)  # type: ignore[arg-type]
    tp, offsets = TP("transactions", 0), [5, 6]

    async def two_batches_then_a_revocation_then_one() -> None:
        await stage._forwarded(tp, offsets, offsets, [DAY, 2 * DAY], None)  # type: ignore[arg-type]
        await stage._forwarded(tp, offsets, offsets, [3 * DAY, None], None)  # type: ignore[arg-type]
        stage.forget([tp])
        await stage._forwarded(tp, offsets, [5], [DAY, None], None)  # type: ignore[arg-type]

    asyncio.run(two_batches_then_a_revocation_then_one())
    first, second = sent[0][2], sent[3][2]
    assert sent == [
        ("report", UNKNOWN, first),
        ("forwards", [5, 6]),
        ("forwards", [5, 6]),
        ("report", UNKNOWN, second),
        ("forwards", [5]),
    ]
    assert first != second, "the second reading does not trust the first one's reports"
    assert stage.clocks.announced(TX0)
    mark = pipeline.ForwardedWatermark(*TX0, CAUGHT_UP, first)
    replica.apply(0, pipeline.encode_forwarded(mark))
    assert replica.holds.safe_time == UNKNOWN, "the earlier reading's word is ignored"
    replica.apply(0, pipeline.encode_forwarded(pipeline.ForwardedWatermark(*TX0, 9.0, second)))
    assert replica.holds.safe_time == 9.0
