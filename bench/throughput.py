"""riskstream end to end: `riskstream worker` processes drain the pre-produced transactions.

The clock: stage 1 stamps every record it forwards to `<app>-fraud-by-terminal` at the moment
it handles the event, and the micro-batcher stamps every score record when it sends it; both
are Kafka CreateTime stamps taken by the worker's own producer (aiokafka stamps at `send`).
So the measured window runs from the first event consumed to the last score sent (its
acknowledgement follows within the producer's linger of 5 ms), and the group join before it
is excluded and reported apart. With two workers a window that opens before both workers own
partitions would mix one-worker and two-worker speed: the window then opens when the group is
complete (every worker assigned, none rebalancing, as polled on /healthz), and only events
first scored after that count.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import time
from pathlib import Path

import msgspec
from common import BenchTopics, WorkerProcess, WorkerSample, cpu_seconds, read_topic, stop_all

POLL_SECONDS = 0.5  # each poll costs the worker a /metrics scrape
PY_SPY_RATE = 200


class _EventId(msgspec.Struct):
    event_id: str


_decode_event_id = msgspec.json.Decoder(_EventId).decode


@dataclasses.dataclass(frozen=True)
class Poll:
    at: float
    broker_cpu: float
    workers: tuple[WorkerSample, ...]

    @property
    def scored(self) -> float:
        return sum(w.scored for w in self.workers)

    @property
    def group_complete(self) -> bool:
        return all(w.assigned > 0 and not w.rebalancing for w in self.workers)


@dataclasses.dataclass(frozen=True)
class WorkerRun:
    workers: int
    events: int  # events first scored inside the window
    seconds: float  # window length
    start_to_first_event: float  # process launch -> first event consumed (imports, join...)
    group_complete_after: float  # process launch -> every worker assigned
    worker_cpu_seconds: float
    worker_system_seconds: float  # the kernel's share of worker_cpu_seconds (socket I/O)
    broker_cpu_seconds: float
    duplicates: int  # score records beyond one per event (rebalances re-score)
    worker_rss: int  # largest worker RSS seen
    profile: Path | None

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def worker_cpu_us(self) -> float:
        return self.worker_cpu_seconds / self.events * 1e6

    @property
    def broker_cpu_us(self) -> float:
        return self.broker_cpu_seconds / self.events * 1e6


class Profiler:
    """py-spy sampling one worker in raw (collapsed stack) format until stopped."""

    def __init__(self, py_spy: Path, pid: int, out: Path) -> None:
        self.out = out
        # --gil: only the thread holding the GIL, so threads waiting in select are not counted
        options = ["-f", "raw", "-o", str(out), "-r", str(PY_SPY_RATE), "--gil"]
        self.process = subprocess.Popen(
            [str(py_spy), "record", "-p", str(pid), *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> Path:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=30)
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-2000:]}")
        return self.out


def _poll(workers: list[WorkerProcess], broker_pid: int, health: bool) -> Poll:
    samples = tuple(w.sample(health) for w in workers)
    return Poll(time.time(), cpu_seconds(broker_pid), samples)


def _drain(
    workers: list[WorkerProcess],
    broker_pid: int,
    events: int,
    timeout: float,
    profile: tuple[Path, Path] | None,
) -> tuple[list[Poll], Path | None]:
    """Poll until the workers report every event scored; profile the first worker meanwhile."""
    polls: list[Poll] = []
    profiler: Profiler | None = None
    deadline = time.monotonic() + timeout
    try:
        complete = False
        while True:
            poll = _poll(workers, broker_pid, health=not complete)
            complete = complete or poll.group_complete
            polls.append(poll)
            if profile and profiler is None and poll.workers[0].assigned > 0:
                profiler = Profiler(profile[0], workers[0].pid, profile[1])
            if poll.scored >= events:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{poll.scored:.0f} of {events} events scored after {timeout:.0f} s; "
                    f"see the logs in {workers[0].log_path.parent}"
                )
            time.sleep(POLL_SECONDS)
        time.sleep(POLL_SECONDS)  # one idle poll after the end bounds the CPU reading
        polls.append(_poll(workers, broker_pid, health=False))
    finally:
        written = profiler.stop() if profiler else None
    return polls, written


def _first_scores(bootstrap: str, topic: str) -> tuple[dict[str, int], int]:
    """Each event's first score timestamp (ms) and how many score records repeat one."""
    first: dict[str, int] = {}
    records = read_topic(bootstrap, topic)
    for record in records:
        event_id = _decode_event_id(record.value).event_id
        seen = first.get(event_id)
        if seen is None or record.timestamp_ms < seen:
            first[event_id] = record.timestamp_ms
    return first, len(records) - len(first)


def _cpu_between(polls: list[Poll], start: float, end: float) -> tuple[float, float, float]:
    """Worker user and system and broker CPU seconds between the last poll before `start` and
    the first poll after `end` (polls are POLL_SECONDS apart, idle at both ends)."""
    before = max((p for p in polls if p.at <= start), key=lambda p: p.at, default=polls[0])
    after = min((p for p in polls if p.at >= end), key=lambda p: p.at, default=polls[-1])
    pairs = list(zip(after.workers, before.workers, strict=True))
    user = sum(a.cpu_user - b.cpu_user for a, b in pairs)
    system = sum(a.cpu_system - b.cpu_system for a, b in pairs)
    return user, system, after.broker_cpu - before.broker_cpu


def run_workers(
    *,
    bootstrap: str,
    broker_pid: int,
    transactions: str,
    labels: str,
    events: int,
    n_workers: int,
    workdir: Path,
    timeout: float,
    profile: tuple[Path, Path] | None = None,
) -> WorkerRun:
    """Start `n_workers` workers in one fresh consumer group and measure them draining."""
    # Workers start within a second or two of each other: a longer join window lets them
    # form the group together instead of rebalancing mid-run.
    topics = BenchTopics(
        bootstrap, transactions, labels, rebalance_timeout_s=1.0 + 2 * (n_workers - 1)
    )
    workers = [WorkerProcess(topics, workdir, f"w{i}") for i in range(n_workers)]
    for worker in workers:
        worker.start()
    launched = min(w.started_at for w in workers)
    try:
        polls, profile_path = _drain(workers, broker_pid, events, timeout, profile)
    finally:
        stop_all(workers)
    forwarded = read_topic(bootstrap, topics.by_terminal)
    first_event = min(r.timestamp_ms for r in forwarded) / 1000.0
    first_scores, duplicates = _first_scores(bootstrap, topics.scores)
    if len(first_scores) < events:
        raise RuntimeError(f"only {len(first_scores)} of {events} events have a score")
    complete = next((p.at for p in polls if p.group_complete), polls[-1].at)
    start = max(first_event, complete) if n_workers > 1 else first_event
    end = max(first_scores.values()) / 1000.0
    counted = sum(1 for ms in first_scores.values() if ms / 1000.0 >= start)
    user, system, broker_cpu = _cpu_between(polls, start, end)
    return WorkerRun(
        workers=n_workers,
        events=counted,
        seconds=end - start,
        start_to_first_event=first_event - launched,
        group_complete_after=complete - launched,
        worker_cpu_seconds=user + system,
        worker_system_seconds=system,
        broker_cpu_seconds=broker_cpu,
        duplicates=duplicates,
        worker_rss=max(w.rss for p in polls for w in p.workers),
        profile=profile_path,
    )
