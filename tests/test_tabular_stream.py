"""A tabular model served by the worker: a table replayed as requests scores exactly as
`riskstream evaluate --scores-out`, bad requests become dead letters with stable codes, and
alerts carry reasons. Real broker, real worker process, a model trained by the CLI."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner
from stream_support import StreamEnv, WorkerProcess, collect
from test_reliability_input import MAX_REQUEST_BYTES, REQUESTS, generic_kinds
from test_tabular import LABEL, write_loans

from riskstream import contracts
from riskstream.replay import replay_command
from riskstream.scoring import load_model

SERVING_ROWS = 400
TOLERANCE = 1e-5

pytestmark = pytest.mark.timeout(600)


class TabularRun(msgspec.Struct):
    models: Path
    serving: Path
    offline: dict[str, float]  # event id -> score, from `riskstream evaluate --scores-out`


@pytest.fixture(scope="module")
def loans(tmp_path_factory: pytest.TempPathFactory) -> TabularRun:
    """A model trained by the CLI with only --data, --label, --name (and few epochs), and its
    offline scores on a serving file holding a region it never saw."""
    from riskstream.training.evaluate import evaluate_command
    from riskstream.training.train import train_command

    root = tmp_path_factory.mktemp("tabular-stream")
    data, serving, models = root / "loans.csv", root / "serving.csv", root / "models"
    write_loans(data, 3000, seed=1, regions=("north", "south", "east", "west"))
    write_loans(serving, SERVING_ROWS, seed=2, regions=("north", "south", "central"))
    runner = CliRunner(env={"RISKSTREAM_MODELS_DIR": str(models)})
    trained = runner.invoke(
        train_command,
        ["tabular", "--data", str(data), "--label", LABEL, "--name", "loans", "--epochs", "4"],
    )
    assert trained.exit_code == 0, trained.output
    scores_out = root / "offline.csv"
    evaluated = runner.invoke(
        evaluate_command,
        ["--model", str(models / "loans"), "--data", str(serving), "--scores-out", str(scores_out)],
    )
    assert evaluated.exit_code == 0, evaluated.output
    with scores_out.open() as handle:
        offline = {row["event_id"]: float(row["score"]) for row in csv.DictReader(handle)}
    assert len(offline) == SERVING_ROWS
    return TabularRun(models, serving, offline)


def _request(event_id: str, model: str, features: dict) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "timestamp": "2024-05-01T09:00:00Z",
            "entity_id": event_id,
            "model": model,
            "features": features,
        }
    ).encode()


GOOD = {"income": 2500.0, "utilisation": 0.4, "late": 1, "region": "north", "housing": "own"}
BAD_REQUESTS = {
    "bad-model": (_request("bad-model", "mortgage", GOOD), "unknown_model"),
    "bad-missing": (
        _request("bad-missing", "loans", {k: v for k, v in GOOD.items() if k != "late"}),
        "missing_feature",
    ),
    "bad-null": (_request("bad-null", "loans", GOOD | {"utilisation": None}), "null_feature"),
    "bad-text": (_request("bad-text", "loans", GOOD | {"income": "high"}), "wrong_type"),
    "bad-bool": (_request("bad-bool", "loans", GOOD | {"region": True}), "wrong_type"),
    "bad-json": (b'{"event_id": "bad-json", "features": ', "not_json"),
    "bad-shape": (_request("bad-shape", "loans", GOOD)[:-1] + b', "timestamp": 5}', "wrong_type"),
}


def test_the_request_catalogue_covers_every_code_a_request_can_cause() -> None:
    codes = {code for _, _, code in request_catalogue()}
    not_for_requests = {"internal_error", "key_mismatch", "inconsistent", "bad_format"}
    assert codes >= set(contracts.ERROR_CODES) - not_for_requests


def request_catalogue() -> list[tuple[str, bytes | None, str]]:
    """(case, value, expected code): every input topic's generic bad messages (the key is not
    checked: a request carries no per-entity state), then what only a model's card can judge."""
    generic = [
        (kind, value, code)
        for kind, value, code, _ in generic_kinds(REQUESTS)
        if code != "key_mismatch"
    ]
    return generic + [(case, raw, code) for case, (raw, code) in BAD_REQUESTS.items()]


async def _send(bootstrap: str, topic: str, values: list[bytes | None]) -> list[str]:
    """Send each value; returns where each one landed, as "partition:offset"."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=MAX_REQUEST_BYTES
    )
    await producer.start()
    try:
        landed = []
        for value in values:
            sent = await producer.send_and_wait(topic, value, key=b"entity")
            landed.append(f"{sent.partition}:{sent.offset}")
        return landed
    finally:
        await producer.stop()


def _event_id(value: bytes, _key: bytes | None) -> str:
    return json.loads(value)["event_id"]


def _source_position(value: bytes, _key: bytes | None) -> str:
    letter = json.loads(value)
    return f"{letter['partition']}:{letter['offset']}"


def test_a_replayed_table_scores_as_offline_and_bad_requests_are_dead_lettered(
    kafka_bootstrap: str, loans: TabularRun, tmp_path: Path
) -> None:
    # No window model: the worker finds the tabular model in its models folder on its own.
    env = StreamEnv(
        kafka_bootstrap, loans.models, tmp_path, models="", extra={"RISKSTREAM_TABULAR_MODELS": "*"}
    )
    settings = env.settings()
    worker = WorkerProcess(env).start()
    try:
        worker.wait_assigned()
        replayed = CliRunner().invoke(
            replay_command,
            [
                str(loans.serving),
                *("--model", "loans", "--models-dir", str(loans.models)),
                *("--topic", settings.topics.requests, "--bootstrap-servers", kafka_bootstrap),
            ],
        )
        assert replayed.exit_code == 0, replayed.output
        bad = request_catalogue()
        landed = asyncio.run(
            _send(kafka_bootstrap, settings.topics.requests, [value for _, value, _ in bad])
        )
        expected = {
            position: (case, code) for position, (case, _, code) in zip(landed, bad, strict=True)
        }
        scores = collect(
            settings,
            settings.topics.scores,
            lambda seen: len(seen) >= SERVING_ROWS,
            300,
            _event_id,
            stall_after=60,
            evidence=worker.evidence,
        )
        letters = collect(
            settings,
            settings.topics.dlq,
            lambda seen: len(seen) >= len(bad),
            120,
            _source_position,
            stall_after=60,
            evidence=worker.evidence,
        )
        alerts = collect(settings, settings.topics.alerts, lambda seen: False, 3, _event_id)
    finally:
        worker.stop()

    # Every row scored once, each score equal to the offline one.
    assert set(scores) == set(loans.offline)
    assert all(len(records) == 1 for records in scores.values())
    records = {key: contracts.decode_score(values[0]) for key, values in scores.items()}
    differences = {key: abs(r.score - loans.offline[key]) for key, r in records.items()}
    worst = max(differences, key=differences.__getitem__)
    assert differences[worst] <= TOLERANCE, (worst, records[worst], loans.offline[worst])
    assert {(r.model, r.event_type) for r in records.values()} == {("loans", "request")}

    # Alerts: exactly the scores at or above the card's threshold, with reasons by column name.
    model = load_model(loans.models / "loans")
    alerting = {key for key, r in records.items() if r.score >= model.threshold}
    assert alerting and set(alerts) == alerting
    for values in alerts.values():
        alert = contracts.decode_alert(values[0])
        assert alert.reasons and {reason.feature for reason in alert.reasons} <= set(model.features)

    # Bad requests: each one a dead letter with its stable code, nothing else dead-lettered.
    assert set(letters) == set(expected)
    wrong = {
        case: (code, contracts.decode_dead_letter(letters[position][0]).error)
        for position, (case, code) in expected.items()
        if contracts.decode_dead_letter(letters[position][0]).error != code
    }
    assert not wrong, wrong
    assert not set(scores) & set(BAD_REQUESTS)
