"""Where the worker's time goes, from a py-spy raw profile (one collapsed stack per line).

Each sample is charged to ONE layer: walking from the innermost frame outwards, the first
frame that belongs to a layer decides. Plumbing that serves whoever called it (asyncio,
mode's queues and futures, Faust's small types, aiokafka's connection and protocol encoding)
belongs to no layer, so a socket write made by aiokafka's sender counts as producing and
`FutureMessage.__init__` called by a changelog write counts as table bookkeeping. A sample
with no layer frame at all is event-loop work (uvloop's C loop running callbacks).

Samples are taken with `--gil` (only the thread holding the GIL), which drops Faust's
consumer thread while it waits in `select` and the main thread while uvloop waits in epoll.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path

OURS_FEATURES = "riskstream: per-event steps (decode, features, state bytes)"
OURS_BATCH = "riskstream: micro-batch (ONNX, score records)"
OURS_GLUE = "riskstream: agent glue (app.py)"
FAUST_STREAM = "Faust stream machinery (agents, streams, conductor, acks)"
FAUST_TABLES = "Faust tables (changelog bookkeeping)"
PRODUCER = "producing (Faust producer + aiokafka sender)"
CONSUMER = "consumer fetch (aiokafka thread + hand-off)"
EVENT_LOOP = "event loop (uvloop, asyncio plumbing)"
SCRAPE = "/metrics and /healthz (the benchmark's polling)"
OTHER = "other"

LAYERS = (
    OURS_FEATURES,
    OURS_BATCH,
    OURS_GLUE,
    FAUST_STREAM,
    FAUST_TABLES,
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
    (OURS_BATCH, "stream/batching.py", ""),
    (OURS_BATCH, "stream/scoring.py", ""),
    (OURS_BATCH, "stream/alerts.py", ""),
    (OURS_BATCH, "stream/metrics.py", ""),
    (OURS_BATCH, "onnxruntime/", ""),
    (OURS_BATCH, "numpy/", ""),
    (OURS_GLUE, "stream/app.py", ""),
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
    (CONSUMER, "faust/transport/consumer.py", ""),
    (CONSUMER, "faust/transport/drivers/aiokafka.py", ""),
    (CONSUMER, "aiokafka/consumer/", ""),
    (CONSUMER, "aiokafka/record/", ""),
    (CONSUMER, "mode/threads.py", ""),
    (FAUST_TABLES, "faust/tables/", ""),
    (FAUST_TABLES, "faust/stores/", ""),
    (FAUST_TABLES, "mode/utils/collections.py", "ManagedUserDict"),
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
CUSTOMER_WRITE = "  its customer-table write + changelog"
TERMINAL_WRITE = "  its terminal-table write + changelog"
ACTIVITIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "stage 1 agent body (fraud_customer_stage)": (
        ("_wire_fraud.<locals>.fraud_customer_stage",),
        (),
    ),
    "  its per-event step (ingest_transaction)": (("ingest_transaction",), ()),
    CUSTOMER_WRITE: ((), ()),
    "  its forward to the by-terminal topic": (("_wire_fraud.<locals>.forward",), ()),
    "stage 2 agent body (fraud_terminal_stage)": (
        ("_wire_fraud.<locals>.fraud_terminal_stage",),
        (),
    ),
    "  its per-event step (terminal_stage)": (("terminal_stage",), ()),
    TERMINAL_WRITE: ((), ()),
    "micro-batch flush (stage 2 or timer): ONNX, score sends, acks": (("MicroBatcher.flush",), ()),
    "Faust stream iteration in both agents (Stream._c_aiter)": (("Stream._c_aiter",), ()),
    "Faust fetch hand-off in the main thread (Consumer._drain_messages)": (
        ("Consumer._drain_messages",),
        (),
    ),
    "aiokafka consumer thread (WorkerThread.run)": (("WorkerThread.run",), ()),
    "Faust sensors (Monitor: per-message statistics)": ((), ("faust/sensors/",)),
    "all table writes incl. changelog (ManagedUserDict.__setitem__)": (
        ("ManagedUserDict.__setitem__",),
        (),
    ),
    "Faust changelog buffer task (ProducerBuffer._handle_pending)": (
        ("ProducerBuffer._handle_pending",),
        (),
    ),
    "every record sent: aiokafka AIOKafkaProducer.send": (("AIOKafkaProducer.send",), ()),
    "aiokafka sender task: produce requests (Sender)": (
        ("Sender._sender_routine", "Sender._send_produce_req"),
        (),
    ),
    "  of which socket writes (StreamWriter.write)": (("StreamWriter.write",), ()),
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
    # A table write is the customer's or the terminal's by the pipeline function above it.
    if "ManagedUserDict.__setitem__" in functions:
        if "ingest_transaction" in functions:
            found.add(CUSTOMER_WRITE)
        if "terminal_stage" in functions:
            found.add(TERMINAL_WRITE)
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
