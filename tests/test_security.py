"""Security basics: TLS/SASL reach the Kafka clients, secrets stay out of logs and metrics,
every input string has a size limit, and models are only ever loaded as ONNX."""

from __future__ import annotations

import ast
import asyncio
import json
import pickle
import re
import ssl
import time
import urllib.error
import urllib.request
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from stream_support import StreamEnv, WorkerProcess

from riskstream import contracts
from riskstream.config import KafkaSettings, Settings
from riskstream.demo import BUNDLED_MODELS
from riskstream.kafka import faust_credentials
from riskstream.metrics import describe_settings
from riskstream.scoring import ModelError, load_model

STREAM_SOURCES = Path(__file__).resolve().parents[1] / "stream"
INPUT_SCHEMAS = {
    "transaction.json": contracts.decode_transaction,
    "label.json": contracts.decode_label,
    "market_indicator.json": contracts.decode_market,
}
# A throw-away self-signed CA (public certificate only, valid until 2126) for the TLS mapping.
TEST_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBkTCCATegAwIBAgIUTh7R9lGP1OIFqQlkMGAeK5gOzR8wCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwScmlza3N0cmVhbSB0ZXN0IENBMCAXDTI2MTEyNDA5MjU0MFoY
DzIxMjYxMDMxMDkyNTQwWjAdMRswGQYDVQQDDBJyaXNrc3RyZWFtIHRlc3QgQ0Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARTYAMBvmvt/paTmdVVKznAWePRcmTa
yKL12eFpzamGMH6/DoRp51hwPazN62XvwjyUJZbTPyprUl+oc0SNyevXo1MwUTAd
BgNVHQ4EFgQUISlku8VS3ysgYm3W72rT0qfD3QEwHwYDVR0jBBgwFoAUISlku8VS
3ysgYm3W72rT0qfD3QEwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF
AiEAmZZqSx/9AoIJpWvZAnwKSexPAV14AM0BRluBoAWYJOsCIF0cR1pNCQq8srHP
so6VMvmOwIbu9UbmvykZuMqC6Uxv
-----END CERTIFICATE-----
"""


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text(TEST_CA_PEM)
    return path


def secret() -> str:
    return f"pw-{uuid.uuid4().hex}"


def kafka(protocol: str, mechanism: str | None = None, cafile: Path | None = None) -> KafkaSettings:
    return KafkaSettings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9093,broker-2:9093",
            "KAFKA_SECURITY_PROTOCOL": protocol.lower(),  # the variable is case-insensitive
            "KAFKA_SASL_MECHANISM": mechanism or "",
            "KAFKA_SASL_USERNAME": "riskstream" if mechanism else "",
            "KAFKA_SASL_PASSWORD": "hunter2" if mechanism else "",
            "KAFKA_SSL_CAFILE": str(cafile) if cafile else "",
        }
    )


def assert_verifies_with(context: ssl.SSLContext, ca: Path | None) -> None:
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    if ca is not None:
        subjects = [dict(item[0] for item in cert["subject"]) for cert in context.get_ca_certs()]
        assert {"commonName": "riskstream test CA"} in subjects


# --- TLS and SASL settings reach the clients ---------------------------------------------------

CONNECTIONS = [
    ("PLAINTEXT", None, False),
    ("SSL", None, True),
    ("SASL_PLAINTEXT", "PLAIN", False),
    ("SASL_PLAINTEXT", "SCRAM-SHA-256", False),
    ("SASL_SSL", "PLAIN", True),
    ("SASL_SSL", "SCRAM-SHA-256", True),
    ("SASL_SSL", "SCRAM-SHA-512", True),
]


@pytest.mark.parametrize(("protocol", "mechanism", "tls"), CONNECTIONS)
def test_aiokafka_clients_get_the_configured_security(
    protocol: str, mechanism: str | None, tls: bool, ca_file: Path
) -> None:
    settings = kafka(protocol, mechanism, ca_file if tls else None)
    kwargs = settings.aiokafka_kwargs()
    assert kwargs["security_protocol"] == protocol
    assert kwargs["bootstrap_servers"] == "broker-1:9093,broker-2:9093"
    if tls:
        assert_verifies_with(kwargs["ssl_context"], ca_file)
    else:
        assert "ssl_context" not in kwargs
    if mechanism:
        assert kwargs["sasl_mechanism"] == mechanism
        assert kwargs["sasl_plain_username"] == "riskstream"
        assert kwargs["sasl_plain_password"] == "hunter2"
    else:
        assert not any(key.startswith("sasl") for key in kwargs)

    async def build_clients() -> None:  # aiokafka validates the combination when constructed
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        for client in (
            AIOKafkaProducer(**kwargs),
            AIOKafkaConsumer(**kwargs),
            AIOKafkaAdminClient(**kwargs),
        ):
            inner = getattr(client, "client", None) or client._client
            assert inner._security_protocol == protocol
            assert (inner._ssl_context is not None) == tls
            if mechanism:
                assert inner._sasl_mechanism == mechanism
                assert inner._sasl_plain_password == "hunter2"

    asyncio.run(build_clients())


def test_tls_without_a_ca_file_uses_the_system_trust_store() -> None:
    context = kafka("SASL_SSL", "SCRAM-SHA-512").aiokafka_kwargs()["ssl_context"]
    assert_verifies_with(context, None)


@pytest.mark.parametrize(("protocol", "mechanism", "tls"), CONNECTIONS)
def test_faust_gets_the_same_security_as_aiokafka(
    protocol: str, mechanism: str | None, tls: bool, ca_file: Path
) -> None:
    """What the Faust worker's own consumers and producers are built with."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    settings = kafka(protocol, mechanism, ca_file if tls else None)
    credentials = faust_credentials(settings)
    if protocol == "PLAINTEXT":
        assert credentials is None
        return
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == protocol
    if tls:
        assert_verifies_with(auth["ssl_context"], ca_file)
    else:
        assert auth.get("ssl_context") is None
    if mechanism:
        assert auth["sasl_mechanism"] == mechanism
        assert auth["sasl_plain_username"] == "riskstream"
        assert auth["sasl_plain_password"] == "hunter2"


# --- secrets stay private ---------------------------------------------------------------------


def test_settings_never_show_the_password() -> None:
    password = secret()
    settings = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "riskstream",
            "KAFKA_SASL_PASSWORD": password,
        }
    )
    assert settings.kafka.sasl_password == password
    published = json.dumps(describe_settings(settings))
    for text in (repr(settings), str(settings), repr(settings.kafka), published):
        assert password not in text
    assert password not in repr(faust_credentials(settings.kafka))


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:  # 503 from /healthz still has a body
        return error.read().decode()


def scan_worker(worker: WorkerProcess, password: str) -> None:
    base = f"http://127.0.0.1:{worker.metrics_port}"
    for name, text in (
        ("log", worker.log()),
        ("/metrics", fetch(f"{base}/metrics")),
        ("/healthz", fetch(f"{base}/healthz")),
    ):
        assert text, f"{name} is empty: nothing was scanned"
        assert password not in text, f"the SASL password appears in the worker's {name}"


@pytest.mark.broker
@pytest.mark.slow
def test_a_running_worker_never_shows_the_password(kafka_bootstrap: str, tmp_path: Path) -> None:
    """PLAINTEXT (so it runs against the embedded broker) with credentials in its environment."""
    password = secret()
    env = StreamEnv(kafka_bootstrap, BUNDLED_MODELS, tmp_path)
    worker = WorkerProcess(env)
    original = env.environ
    env.environ = lambda: {  # type: ignore[method-assign]
        **original(),
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "riskstream",
        "KAFKA_SASL_PASSWORD": password,
        "RISKSTREAM_LOG_LEVEL": "debug",
    }
    try:
        worker.start()
        worker.wait_assigned()
        scan_worker(worker, password)
    finally:
        worker.stop()
    assert password not in worker.log()


@pytest.mark.broker
@pytest.mark.slow
def test_a_worker_failing_sasl_says_why_without_the_password(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SASL against the PLAINTEXT embedded broker fails: the retry lines name the cause, /healthz
    says the worker waits for the broker, and the password appears nowhere."""
    password = secret()
    env = StreamEnv(kafka_bootstrap, BUNDLED_MODELS, tmp_path)
    worker = WorkerProcess(env)
    original = env.environ
    env.environ = lambda: {  # type: ignore[method-assign]
        **original(),
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "riskstream",
        "KAFKA_SASL_PASSWORD": password,
        "RISKSTREAM_LOG_LEVEL": "debug",
    }
    try:
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(re.findall("retrying in", worker.log())) < 2:
            worker.assert_running()
            time.sleep(0.5)
        assert re.search(r"retrying in .*\n(?:.*\n)*.*retrying in", worker.log())
        assert "Sasl" in worker.log() or "SASL" in worker.log(), "the cause is named"
        health = fetch(f"http://127.0.0.1:{worker.metrics_port}/healthz")
        assert json.loads(health)["state"] == "waiting for broker"
        scan_worker(worker, password)
    finally:
        worker.stop()
    assert password not in worker.log()


# --- size limits on every input string --------------------------------------------------------


def load_schema(name: str) -> dict[str, Any]:
    return json.loads((resources.files("riskstream.schemas") / name).read_text())


def string_fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every string-valued place in a schema ($refs resolved), by path; keys of objects too."""
    defs = schema.get("$defs", {})
    found: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        if "$ref" in node:
            node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **node}
        types = node.get("type")
        if "string" in (types if isinstance(types, list) else [types]):
            found[path] = node
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")
        if "propertyNames" in node:
            found[f"{path} (keys)"] = node["propertyNames"]
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "$")
    return found


def bounded_pattern(pattern: str) -> bool:
    """Anchored at both ends and without unbounded repetition (*, +, {n,}) outside classes."""
    if not (pattern.startswith("^") and pattern.endswith("$")):
        return False
    outside_classes = re.sub(r"\[(?:\\.|[^\]\\])*\]", "", pattern.replace("\\\\", ""))
    return not re.search(r"(?<!\\)[*+]|\{\d+,\}", outside_classes)


@pytest.mark.parametrize("schema_name", sorted(INPUT_SCHEMAS))
def test_every_string_in_every_input_schema_has_a_size_limit(schema_name: str) -> None:
    fields = string_fields(load_schema(schema_name))
    assert fields, "the walk found the schema's strings"
    unbounded = [
        path
        for path, node in fields.items()
        if "maxLength" not in node and not bounded_pattern(node.get("pattern", ""))
    ]
    assert not unbounded, f"{schema_name}: strings without maxLength or a bounded pattern"


def valid_example(schema_name: str) -> dict[str, Any]:
    examples = load_schema(schema_name).get("examples")
    assert examples, f"{schema_name} carries an example"
    return dict(examples[0])


@pytest.mark.parametrize("schema_name", sorted(INPUT_SCHEMAS))
def test_the_stream_validator_enforces_every_string_limit(schema_name: str) -> None:
    """For each top-level string field of the schema: the example passes, the same example with
    that field 10,000 characters long is rejected (before any state is touched)."""
    decode = INPUT_SCHEMAS[schema_name]
    example = valid_example(schema_name)
    decode(json.dumps(example).encode())
    fields = [path.removeprefix("$.") for path in string_fields(load_schema(schema_name))]
    top_level = [field for field in fields if re.fullmatch(r"\w+", field)]
    assert top_level
    for field in top_level:
        oversized = {**example, field: "A" * 10_000}
        with pytest.raises(contracts.ContractError) as caught:
            decode(json.dumps(oversized).encode())
        assert caught.value.code in {"too_long", "bad_format", "bad_timestamp"}, field
    if schema_name == "market_indicator.json":  # indicator names are keys of an object
        oversized = {**example, "indicators": {"v" * 10_000: 1.0}}
        with pytest.raises(contracts.ContractError, match="at most 64"):
            decode(json.dumps(oversized).encode())


def test_messages_over_the_byte_limit_are_rejected_before_parsing() -> None:
    message = b'{"transaction_id": "' + b"x" * contracts.MAX_MESSAGE_BYTES + b'"}'
    for decode in INPUT_SCHEMAS.values():
        with pytest.raises(contracts.ContractError) as caught:
            decode(message)
        assert caught.value.code == "too_large"


# --- models are only ever loaded as ONNX ------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "joblib", "dill", "cloudpickle", "shelve"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names.update(
                arg.value.split(".")[0]
                for arg in node.args[:1]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            )
    return names


def test_no_module_under_stream_can_unpickle() -> None:
    sources = sorted(STREAM_SOURCES.rglob("*.py"))
    assert len(sources) > 10, "the scan found the stream package"
    offenders = {
        str(path.relative_to(STREAM_SOURCES)): sorted(imported_modules(path) & UNSAFE_MODULES)
        for path in sources
        if imported_modules(path) & UNSAFE_MODULES
    }
    assert not offenders, f"modules that could load pickled (executable) models: {offenders}"
    allow_pickle = [
        str(path.relative_to(STREAM_SOURCES))
        for path in sources
        if re.search(r"allow_pickle\s*=\s*True", path.read_text())
    ]
    assert not allow_pickle


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_scoring_refuses_a_pickle_disguised_as_a_model(tmp_path: Path) -> None:
    version = tmp_path / "fraud" / "20250101T000000Z"
    version.mkdir(parents=True)
    shipped = sorted((BUNDLED_MODELS / "fraud").iterdir())[-1]
    (version / "card.json").write_bytes((shipped / "card.json").read_bytes())
    marker = tmp_path / "code-ran"
    (version / "model.onnx").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelError, match="cannot be loaded by onnxruntime"):
        load_model(tmp_path, "fraud")
    assert not marker.exists(), "the pickle was executed"
