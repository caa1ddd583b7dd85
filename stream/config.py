"""Configuration from the environment (12-factor); CLI flags override by passing values in.

Every setting has a documented default here and in docs/configuration.md; nothing else
reads os.environ.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Topics:
    """Kafka topic names; each can be renamed through its environment variable."""

    transactions: str = "transactions"
    market: str = "market.indicators"
    labels: str = "risk.labels"
    requests: str = "risk.requests"
    scores: str = "risk.scores"
    shadow_scores: str = "risk.scores.shadow"  # a challenger's scores (riskstream.model_swap)
    alerts: str = "risk.alerts"
    dlq: str = "risk.dlq"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Topics:
        return cls(
            transactions=env.get("RISKSTREAM_TOPIC_TRANSACTIONS", cls.transactions),
            market=env.get("RISKSTREAM_TOPIC_MARKET", cls.market),
            labels=env.get("RISKSTREAM_TOPIC_LABELS", cls.labels),
            requests=env.get("RISKSTREAM_TOPIC_REQUESTS", cls.requests),
            scores=env.get("RISKSTREAM_TOPIC_SCORES", cls.scores),
            shadow_scores=env.get("RISKSTREAM_TOPIC_SHADOW_SCORES", cls.shadow_scores),
            alerts=env.get("RISKSTREAM_TOPIC_ALERTS", cls.alerts),
            dlq=env.get("RISKSTREAM_TOPIC_DLQ", cls.dlq),
        )


@dataclasses.dataclass(frozen=True)
class KafkaSettings:
    """Connection settings shared by every Kafka client riskstream creates."""

    bootstrap_servers: str = "localhost:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = dataclasses.field(default=None, repr=False)
    ssl_cafile: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaSettings:
        return cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", cls.bootstrap_servers),
            security_protocol=env.get("KAFKA_SECURITY_PROTOCOL", cls.security_protocol).upper(),
            sasl_mechanism=env.get("KAFKA_SASL_MECHANISM") or None,
            sasl_username=env.get("KAFKA_SASL_USERNAME") or None,
            sasl_password=env.get("KAFKA_SASL_PASSWORD") or None,
            ssl_cafile=env.get("KAFKA_SSL_CAFILE") or None,
        )

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka producers, consumers and admin clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = (
                create_ssl_context(cafile=self.ssl_cafile)
                if self.ssl_cafile
                else ssl.create_default_context()
            )
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """How the Faust worker runs; defaults suit production, tests shorten the timeouts."""

    app_id: str = "riskstream"
    store: str = "memory://"
    data_dir: Path = Path(".riskstream-data")
    models: tuple[str, ...] = ("fraud", "market")
    # Tabular models served on the requests topic: "*" is every tabular model in MODELS_DIR.
    tabular_models: tuple[str, ...] = ("*",)
    partitions: int = 6
    batch_size: int = 512
    watermark_interval_ms: int = 500
    fetch_max_wait_ms: int = 10
    fetch_wait_ceiling_ms: int = 5000
    linger_ms: int = 5
    standby_replicas: int = 0
    session_timeout_s: float = 30.0
    rebalance_timeout_s: float = 30.0
    heartbeat_interval_s: float = 3.0
    stall_seconds: float = 120.0
    # How often acknowledged offsets are committed. It bounds what a crash or a rebalance reads
    # again, and a redelivered transaction only gets its first features back within a day of
    # its customer's event time (features.fraud.ALLOWED_LATENESS_SECONDS): at a backlog's
    # speed Faust's 2.8 s span days of event time.
    commit_interval_s: float = 0.5
    label_window_days: float = 8.0  # an alert without a fraud label this long after: false
    drift_window: int = 10_000  # rows per model whose distribution is compared; 0: no drift
    model_watch_seconds: float = 5.0  # how often served models' folders are looked at; 0: never
    log_level: str = "info"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        return cls(
            app_id=env.get("RISKSTREAM_APP_ID", cls.app_id),
            store=env.get("RISKSTREAM_STORE", cls.store),
            data_dir=Path(env.get("RISKSTREAM_DATA_DIR", str(cls.data_dir))),
            models=_names(env.get("RISKSTREAM_MODELS", ",".join(cls.models))),
            tabular_models=_names(
                env.get("RISKSTREAM_TABULAR_MODELS", ",".join(cls.tabular_models))
            ),
            partitions=int(env.get("RISKSTREAM_PARTITIONS", cls.partitions)),
            batch_size=int(env.get("RISKSTREAM_BATCH_SIZE", cls.batch_size)),
            fetch_max_wait_ms=int(env.get("RISKSTREAM_FETCH_MAX_WAIT_MS", cls.fetch_max_wait_ms)),
            fetch_wait_ceiling_ms=int(
                env.get("RISKSTREAM_FETCH_WAIT_CEILING_MS", cls.fetch_wait_ceiling_ms)
            ),
            linger_ms=int(env.get("RISKSTREAM_LINGER_MS", cls.linger_ms)),
            standby_replicas=int(env.get("RISKSTREAM_STANDBY_REPLICAS", cls.standby_replicas)),
            watermark_interval_ms=int(
                env.get("RISKSTREAM_WATERMARK_INTERVAL_MS", cls.watermark_interval_ms)
            ),
            session_timeout_s=float(env.get("RISKSTREAM_SESSION_TIMEOUT_S", cls.session_timeout_s)),
            rebalance_timeout_s=float(
                env.get("RISKSTREAM_REBALANCE_TIMEOUT_S", cls.rebalance_timeout_s)
            ),
            heartbeat_interval_s=float(
                env.get("RISKSTREAM_HEARTBEAT_INTERVAL_S", cls.heartbeat_interval_s)
            ),
            stall_seconds=float(env.get("RISKSTREAM_STALL_SECONDS", cls.stall_seconds)),
            commit_interval_s=float(env.get("RISKSTREAM_COMMIT_INTERVAL_S", cls.commit_interval_s)),
            label_window_days=float(env.get("RISKSTREAM_LABEL_WINDOW_DAYS", cls.label_window_days)),
            drift_window=int(env.get("RISKSTREAM_DRIFT_WINDOW", cls.drift_window)),
            model_watch_seconds=float(
                env.get("RISKSTREAM_MODEL_WATCH_SECONDS", cls.model_watch_seconds)
            ),
            log_level=env.get("RISKSTREAM_LOG_LEVEL", cls.log_level).lower(),
        )


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names; blanks dropped ("" is the empty list)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a riskstream process needs to know about its surroundings."""

    kafka: KafkaSettings = dataclasses.field(default_factory=KafkaSettings)
    topics: Topics = dataclasses.field(default_factory=Topics)
    models_dir: Path = Path("models")
    metrics_port: int = 9108
    metrics_host: str = "0.0.0.0"
    worker: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the environment, then apply explicit overrides (CLI flags) that are not None."""
        env = os.environ if env is None else env
        settings = cls(
            kafka=KafkaSettings.from_env(env),
            topics=Topics.from_env(env),
            models_dir=Path(env.get("RISKSTREAM_MODELS_DIR", "models")),
            metrics_port=int(env.get("RISKSTREAM_METRICS_PORT", "9108")),
            metrics_host=env.get("RISKSTREAM_METRICS_HOST", "0.0.0.0"),
            worker=WorkerSettings.from_env(env),
        )
        return settings.replace(**overrides)

    def replace(self, **overrides: Any) -> Settings:
        """A copy with the given top-level fields replaced; None means 'keep'."""
        kafka_fields = {f.name for f in dataclasses.fields(KafkaSettings)}
        kafka_overrides = {
            k: v for k, v in overrides.items() if k in kafka_fields and v is not None
        }
        own = {k: v for k, v in overrides.items() if k not in kafka_fields and v is not None}
        kafka = dataclasses.replace(self.kafka, **kafka_overrides)
        return dataclasses.replace(self, kafka=kafka, **own)
