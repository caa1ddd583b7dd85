"""Where the worker's time goes, from a py-spy raw profile (one collapsed stack per line).

Each sample is charged to ONE layer: walking from the innermost frame outwards, the first
frame that belongs to a layer decides. Plumbing that serves whoever called it (asyncio,
mode's queues and futures, Faust's small types, aiokafka's connection and protocol encoding)
belongs to no layer, so a socket write made by aiokafka's sender counts as producing and the
changelog records `TableWrites.send_changes` queues count as producing (`Outbox.add`). A
sample with no layer frame at all is event-loop work (uvloop's C loop running callbacks).

The worker hands each fetched partition batch to one batch handler (riskstream.batch_hook),
which runs in a task of its own (`wait_first`): a handler's samples have the handler, not
`BatchDrain._drain_messages`, at the bottom of their stack.

Samples are taken with `--gil` (only the thread holding the GIL), which drops Faust's
consumer thread while it waits in `select` and the main thread while uvloop waits in epoll.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path

OURS_FEATURES = "riskstream: per-event steps (decode, features, state bytes)"
OURS_HANDLERS = "riskstream: batch handlers (stages, DLQ, watermarks)"
OURS_SCORING = "riskstream: scoring (ONNX, score records, metrics)"
TABLES = "table state (TableWrites; Faust stores, changelog recovery)"
FAUST_STREAM = "Faust machinery (app, agents, conductor, sensors, services)"
PRODUCER = "batched produce (outbox, aiokafka send_batch + sender)"
CONSUMER = "consumer fetch (aiokafka thread + batch hand-off, acks, commits)"
EVENT_LOOP = "event loop (uvloop, asyncio plumbing)"
SCRAPE = "/metrics and /healthz (the benchmark's polling)"
OTHER = "other"

LAYERS = (
    OURS_FEATURES,
    OURS_HANDLERS,
    OURS_SCORING,
    TABLES,
    FAUST_STREAM,
    PRODUCER,
    CONSUMER,
    EVENT_LOOP,
    SCRAPE,
    OTHER,
)

# (layer, file prefix, function prefix or "") — the first match wins, so specific rules first.
RULES: tuple[tuple[str, str, str], ...] = (
    (SCRAPE, "aiohttp/", ""),
    (SCRAPE, "prometheus_client/", ""),
    (SCRAPE, "stream/metrics.py", "MetricsServer"),
    (OURS_FEATURES, "stream/features/", ""),
    (OURS_FEATURES, "stream/pipeline.py", ""),
    (OURS_FEATURES, "stream/contracts.py", ""),
    (OURS_FEATURES, "stream/terminal_replica.py", ""),
    (OURS_SCORING, "stream/batching.py", ""),
    (OURS_SCORING, "stream/scoring.py", ""),
    (OURS_SCORING, "stream/alerts.py", ""),
    (OURS_SCORING, "stream/metrics.py", ""),
    (OURS_SCORING, "onnxruntime/", ""),
    (OURS_SCORING, "numpy/", ""),
    (TABLES, "stream/table_writes.py", ""),
    (OURS_HANDLERS, "stream/app.py", ""),
    (OURS_HANDLERS, "stream/watermarks.py", ""),
    (PRODUCER, "stream/outbox.py", ""),
    (PRODUCER, "faust/channels.py", "Channel.as_future_message"),
    (PRODUCER, "faust/channels.py", "Channel.publish_message"),
    (PRODUCER, "faust/topics.py", ""),
    (PRODUCER, "faust/transport/producer.py", ""),
    (PRODUCER, "faust/transport/drivers/aiokafka.py", "Producer"),
    (PRODUCER, "faust/transport/drivers/aiokafka.py", "ProducerBuffer"),
    (PRODUCER, "aiokafka/producer/", ""),
    (PRODUCER, "aiokafka/partitioner.py", ""),
    (PRODUCER, "aiokafka/record/default_records.py", "DefaultRecordBatchBuilder"),
    (PRODUCER, "aiokafka/record/", "_DefaultRecordBatchBuilder"),
    (CONSUMER, "stream/batch_hook.py", ""),
    (CONSUMER, "stream/faust_app.py", ""),
    (CONSUMER, "stream/fetch_wait.py", ""),
    (CONSUMER, "faust/transport/consumer.py", ""),
    (CONSUMER, "faust/transport/drivers/aiokafka.py", ""),
    (CONSUMER, "aiokafka/consumer/", ""),
    (CONSUMER, "aiokafka/record/", ""),
    (CONSUMER, "mode/threads.py", ""),
    (TABLES, "faust/tables/", ""),
    (TABLES, "faust/stores/", ""),
    (TABLES, "mode/utils/collections.py", "ManagedUserDict"),
    (FAUST_STREAM, "faust/streams.py", ""),
    (FAUST_STREAM, "faust/channels.py", ""),
    (FAUST_STREAM, "faust/agents/", ""),
    (FAUST_STREAM, "faust/transport/conductor.py", ""),
    (FAUST_STREAM, "faust/events.py", ""),
    (FAUST_STREAM, "faust/sensors/", ""),
    (FAUST_STREAM, "faust/serializers/", ""),
    (FAUST_STREAM, "faust/app/", ""),
    (FAUST_STREAM, "mode/services.py", ""),
)

# Frames that serve their caller and so never decide a sample's layer.
PLUMBING = (
    "asyncio/",
    "<frozen",
    "mode/utils/",
    "mode/timers.py",
    "faust/types/",
    "faust/utils/",
    "faust/transport/utils.py",
    "aiokafka/conn.py",
    "aiokafka/client.py",
    "aiokafka/cluster.py",
    "aiokafka/protocol/",
    "aiokafka/util.py",
    "aiokafka/structs.py",
    "selectors.py",
    "_weakrefset.py",
    "weakref.py",
    "typing.py",
    "functools.py",
    "contextlib.py",
    "enum.py",
    "collections/",
    "<string>",
)

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
ROOT_OF_LOOP = "Worker.execute_from_commandline"


@dataclasses.dataclass(frozen=True)
class Frame:
    function: str
    file: str


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text)
    if not match:
        return Frame(text, "")
    return Frame(match["func"], match["file"])


def layer_of_frame(frame: Frame) -> str | None:
    for layer, file_prefix, function_prefix in RULES:
        if frame.file.startswith(file_prefix) and frame.function.startswith(function_prefix):
            return layer
    return None


def layer_of_stack(frames: list[Frame]) -> str:
    """The innermost deciding frame's layer (see the module notes)."""
    for frame in reversed(frames):
        if frame.function.startswith(ROOT_OF_LOOP):
            return EVENT_LOOP  # reached the worker's main call: nothing above decided
        layer = layer_of_frame(frame)
        if layer is not None:
            return layer
        if not frame.file.startswith(PLUMBING):
            return OTHER
    return OTHER


@dataclasses.dataclass
class ProfileSummary:
    samples: int
    by_layer: dict[str, int]
    top_leaf_by_layer: dict[str, list[tuple[str, int]]]
    inclusive: dict[str, int]

    def share(self, layer: str) -> float:
        return self.by_layer.get(layer, 0) / self.samples if self.samples else 0.0

    def activity_share(self, activity: str) -> float:
        return self.inclusive.get(activity, 0) / self.samples if self.samples else 0.0


# Activities whose inclusive cost motivates a concrete optimisation (see bench/README.md):
# a sample counts for an activity when one of its functions is on the sample's stack, or
# (second element) a frame of one of its files. Rows overlap: they are not meant to add up.
# Function names are py-spy's qualified names (Python 3.11+: `Class.method`, `f.<locals>.g`).
CUSTOMER_STAGE = "FraudStage.customer_stage_handler.<locals>.customer_stage"
HISTORY_READER = "HistoryReader._read"
CUSTOMER_WRITE = "  its customer-table writes + changelog records (TableWrites)"
ACTIVITIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "stage 1 batch handler (FraudStage: customer_stage)": ((CUSTOMER_STAGE,), ()),
    "  its per-event step (ingest_transaction)": (("ingest_transaction",), ()),
    CUSTOMER_WRITE: ((), ()),
    "  its forwards to the history topic (FraudStage.forward)": (("FraudStage.forward",), ()),
    "  its terminal features from the replica (TerminalReplica.score)": (
        ("TerminalReplica.score",),
        (),
    ),
    "  its scoring: ONNX, score records, alerts (BatchScorer.score_into)": (
        ("BatchScorer.score_into",),
        (),
    ),
    "terminal history read into the replica (HistoryReader._read)": ((HISTORY_READER,), ()),
    "  of which storing forwards (TerminalReplica.apply)": (("TerminalReplica.apply",), ()),
    "  of which held transactions scored (FraudStage.release)": (
        ("FraudStage.release",),
        (),
    ),
    "labels batch handler (FraudStage: label_forwarder)": (
        ("FraudStage.label_handler.<locals>.label_forwarder",),
        (),
    ),
    "dead letters (Stages.dead_letter)": (("Stages.dead_letter",), ()),
    "publishing a batch: outbox send + ack callbacks (Stages.publish)": (
        ("Stages.publish",),
        (),
    ),
    "records queued in outboxes (Outbox.add, partitioner included)": (("Outbox.add",), ()),
    "  of which choosing key partitions (_KeyPartitions.__call__)": (
        ("_KeyPartitions.__call__",),
        (),
    ),
    "outbox batches built and handed to aiokafka (Outbox._send_partition)": (
        ("Outbox._send_partition",),
        (),
    ),
    "per-record sends left (AIOKafkaProducer.send: watermark reports)": (
        ("AIOKafkaProducer.send",),
        (),
    ),
    "aiokafka sender task: produce requests (Sender)": (
        ("Sender._sender_routine", "Sender._send_produce_req"),
        (),
    ),
    "  of which socket writes (StreamWriter.write)": (("StreamWriter.write",), ()),
    "batch drain loop in the main thread, handlers apart (BatchDrain._drain_messages)": (
        ("BatchDrain._drain_messages",),
        (),
    ),
    "  of which fetch hand-off from the consumer thread (BatchDrain._next_batches)": (
        ("BatchDrain._next_batches",),
        (),
    ),
    "  of which hand-off to a handler (BatchDrain._deliver_batch)": (
        ("BatchDrain._deliver_batch",),
        (),
    ),
    "offset acks once delivered (ack_when_delivered, BatchDrain.ack_offsets)": (
        (
            "ack_when_delivered",
            "ack_when_delivered.<locals>.done",
            "ack_when_delivered.<locals>.finish",
            "BatchDrain.ack_offsets",
        ),
        (),
    ),
    "aiokafka consumer thread (WorkerThread.run)": (("WorkerThread.run",), ()),
    "Faust sensors (Monitor)": ((), ("faust/sensors/",)),
    "all table writes (TableWrites.__setitem__)": (("TableWrites.__setitem__",), ()),
    "all changelog records queued (TableWrites.send_changes)": (
        ("TableWrites.send_changes",),
        (),
    ),
}


def _activities(frames: list[Frame]) -> set[str]:
    functions = {frame.function for frame in frames}
    files = {frame.file for frame in frames}
    found = {
        name
        for name, (wanted_functions, wanted_files) in ACTIVITIES.items()
        if functions.intersection(wanted_functions)
        or any(file.startswith(wanted_files) for file in files if wanted_files)
    }
    # A table write or changelog record is the customer's by the handler it runs under.
    writes = ("TableWrites.__setitem__", "TableWrites.send_changes")
    if functions.intersection(writes) and CUSTOMER_STAGE in functions:
        found.add(CUSTOMER_WRITE)
    return found


def summarise(path: Path, top: int = 4) -> ProfileSummary:
    by_layer: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(text) for text in stack.split(";")]
        layer = layer_of_stack(frames)
        samples += count
        by_layer[layer] += count
        leaf = frames[-1]
        leaves[layer][f"{leaf.function} ({leaf.file})"] += count
        for activity in _activities(frames):
            inclusive[activity] += count
    return ProfileSummary(
        samples=samples,
        by_layer=dict(by_layer),
        top_leaf_by_layer={layer: counter.most_common(top) for layer, counter in leaves.items()},
        inclusive=dict(inclusive),
    )
