"""All runtime configuration, from environment variables (README "Configuration" lists them).

Local demo and tests use the defaults and point at services started by `harness.local_services`;
production sets the same variables to its Kafka cluster and Triton, with no code change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.base import ModelVersion


def _env(prefix: str, names: list[str]) -> str:
    return ", ".join(f"{prefix}{name.upper()}" for name in names)


class KafkaSettings(BaseSettings):
    """Kafka connection; security settings are passed through to kafka-python unchanged.

    Contradictory combinations, which kafka-python would silently ignore, are refused at start (see
    `_consistent_security`); one that works but is unsafe (PLAIN over SASL_PLAINTEXT) is a warning.
    """

    # a model-level error would otherwise print every input, the SASL password included
    model_config = SettingsConfigDict(env_prefix="QL_KAFKA_", hide_input_in_errors=True)

    bootstrap_servers: str = "127.0.0.1:19092"
    client_id: str = "querylife-worker"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # OAUTHBEARER is not offered: kafka-python needs a token provider object, which no setting can give.
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    max_poll_interval_ms: int = 120_000
    request_timeout_ms: int = 30_000
    # How long the broker may hold a consumer's fetch when it has nothing new (Tansu holds it that
    # long even if records arrive meanwhile): the wait a record can add before a consumer sees it.
    # The request worker runs with 5 (a ranker is waiting; docs/deploying.md). On Tansu's s3 engine it
    # must exceed the object store's listing time, or fetches return one batch or none (500 there;
    # docs/reliability.md "broker_restart")
    fetch_max_wait_ms: int = Field(default=20, ge=1, le=500)

    @model_validator(mode="after")
    def _consistent_security(self) -> KafkaSettings:
        """Refuse settings that the security protocol would silently ignore (docs/deploying.md)."""
        protocol = f"QL_KAFKA_SECURITY_PROTOCOL={self.security_protocol}"
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        sasl = self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        problems: list[str] = []
        ssl_files = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, n) is not None]
        if ssl_files and not tls:
            problems.append(
                f"{_env('QL_KAFKA_', ssl_files)} set but {protocol} does not use TLS: "
                "use SSL or SASL_SSL, or unset them"
            )
        if tls and self.ssl_keyfile is not None and self.ssl_certfile is None:
            problems.append(
                "QL_KAFKA_SSL_KEYFILE set without QL_KAFKA_SSL_CERTFILE: a client key needs its certificate"
            )
        credentials = [
            n for n in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password") if getattr(self, n)
        ]
        if credentials and not sasl:
            problems.append(
                f"{_env('QL_KAFKA_', credentials)} set but {protocol} does not authenticate: "
                "use SASL_SSL (or SASL_PLAINTEXT), or unset them"
            )
        if sasl and self.sasl_mechanism is None:
            problems.append(
                f"{protocol} needs QL_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def security_warnings(self) -> list[str]:
        """Accepted but unsafe settings; the worker logs each one at start (`insecure_kafka_settings`)."""
        if self.security_protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN":
            return [
                "QL_KAFKA_SASL_MECHANISM=PLAIN over QL_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT sends the "
                "password in clear text: use SASL_SSL, or SCRAM-SHA-512"
            ]
        return []

    def common_config(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python's producer, consumer and admin client."""
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.sasl_mechanism:
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_plain_username
            if self.sasl_plain_password is not None:
                cfg["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            cfg["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                value = getattr(self, name)
                if value is not None:
                    cfg[name] = str(value)
        return cfg


class TopicSettings(BaseSettings):
    """Topic names: one place, so the ranker, analysts and the worker agree."""

    model_config = SettingsConfigDict(env_prefix="QL_TOPIC_")

    product_upserts: str = "querylife.product-upserts"
    query_logs: str = "querylife.query-logs"
    # prefix of the per-version topics `<product_embeddings>.<model_version>` (`embeddings_for`);
    # the bare name is the pre-#19 topic that held every version, read by nothing any more
    product_embeddings: str = "querylife.product-embeddings"
    ab_metrics: str = "querylife.ab-metrics"  # ABMetrics v1, no longer written (docs/contracts.md)
    ab_units: str = "querylife.ab-units"
    dead_letter: str = "querylife.dead-letter"
    shadow_scores: str = "querylife.shadow-scores"
    # the ranker's three ways in (docs/contracts.md): one record per query log, the relevance table,
    # and candidate scoring on request
    query_scores: str = "querylife.query-scores"
    relevance_table: str = "querylife.relevance-table"
    score_requests: str = "querylife.score-requests"
    score_replies: str = "querylife.score-replies"
    partitions: int = 3
    replication_factor: int = 1

    NAME_FIELDS: ClassVar[tuple[str, ...]] = (
        "product_upserts",
        "query_logs",
        "product_embeddings",
        "ab_metrics",
        "ab_units",
        "dead_letter",
        "shadow_scores",
        "query_scores",
        "relevance_table",
        "score_requests",
        "score_replies",
    )

    @classmethod
    def namespaced(cls, prefix: str) -> TopicSettings:
        """Every topic under `prefix.` (tests, benchmarks and fault runs never share topics)."""
        names: dict[str, Any] = {name: f"{prefix}.{name}" for name in cls.NAME_FIELDS}
        return cls(**names)

    def embeddings_for(self, model_version: str) -> str:
        """The compacted embeddings topic of one model version (docs/contracts.md: a topic per version)."""
        return f"{self.product_embeddings}.{model_version}"

    def name_env(self) -> dict[str, str]:
        """The `QL_TOPIC_*` variables that give a worker subprocess these topic names."""
        return {f"QL_TOPIC_{name.upper()}": getattr(self, name) for name in self.NAME_FIELDS}


class TritonSettings(BaseSettings):
    """Where the Query-LIFE ensemble is served, and how hard to try."""

    model_config = SettingsConfigDict(env_prefix="QL_TRITON_")

    url: str = "127.0.0.1:18001"
    protocol: Literal["grpc", "http"] = "grpc"
    ssl: bool = False
    root_certificates: Path | None = None
    private_key: Path | None = None
    certificate_chain: Path | None = None
    # Deadline of one call (a chunk of <= max_batch inputs). A missed deadline is not retried as such:
    # the batch is isolated (worker/isolation.py) with `isolation_timeout_s` per try, an input is
    # dead-lettered after failing `isolation_tries` times alone while a canary answers. Together they
    # bound a partition's stall behind one poison input to about timeout + 7 x isolation timeout
    # (38 s with these defaults; docs/reliability.md "Client-side isolation").
    timeout_s: float = Field(default=10.0, gt=0)
    max_batch: int = 256
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    isolation_timeout_s: float = Field(default=4.0, gt=0)
    isolation_tries: int = Field(default=2, ge=1, le=5)

    @model_validator(mode="after")
    def _consistent_tls(self) -> TritonSettings:
        """Refuse certificates the client would silently ignore (docs/deploying.md)."""
        files = [n for n in ("root_certificates", "private_key", "certificate_chain") if getattr(self, n)]
        problems: list[str] = []
        if files and not self.ssl:
            problems.append(
                f"{_env('QL_TRITON_', files)} set but QL_TRITON_SSL is false: "
                "set QL_TRITON_SSL=true, or unset them"
            )
        if (self.private_key is None) != (self.certificate_chain is None):
            problems.append(
                "QL_TRITON_PRIVATE_KEY and QL_TRITON_CERTIFICATE_CHAIN are the client's key pair for mutual "
                "TLS: set both or neither"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class WorkerSettings(BaseSettings):
    """Batching, state and observability of one worker process."""

    model_config = SettingsConfigDict(env_prefix="QL_WORKER_")

    # The Query-LIFE version this worker serves (its Triton ensembles, its embeddings topic); unset:
    # the only version Triton serves (refused while a rollout serves two). Product workers of a version
    # consume in the group `<product_group>.<model_version>`, so each version sees every upsert.
    model_version: ModelVersion | None = None
    # A rollout's candidate version: query workers also score a sample of query logs with it and
    # publish the comparison to `shadow_scores` (docs/deploying.md "Model upgrade").
    shadow_model_version: ModelVersion | None = None
    shadow_sample: float = Field(default=0.1, ge=0.0, le=1.0)
    product_group: str = "querylife-product-worker"
    request_group: str = "querylife-request-worker"
    # Head queries' top-K over the whole catalogue into the relevance table (worker/head_queries.py):
    # how many head queries (0: off), how many products each, how often at most, and how fast the
    # volume that ranks queries forgets
    topk_queries: int = Field(default=50, ge=0, le=1000)
    topk: int = Field(default=20, ge=1, le=200)
    topk_refresh_s: float = Field(default=30.0, ge=0)
    topk_half_life_s: float = Field(default=600.0, gt=0)
    # the request path's poll wait: a ranker waits for the answer, so latency beats batching
    request_batch_max_wait_ms: int = Field(default=5, ge=0)
    # query embeddings the request path keeps (worker/request_path.py); 0: every request's query is
    # encoded by the `query_relevance` ensemble
    request_query_cache_size: int = Field(default=10_000, ge=0, le=10_000_000)
    query_group: str = "querylife-query-worker"
    batch_max_events: int = 64
    batch_max_wait_ms: int = 50
    image_root: Path | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    ab_window_s: int = Field(default=300, ge=1)
    # A/B experiments (docs/ab_analysis.md): a JSON list of `Experiment` declarations, validated at
    # start; unset, no experiment is declared and query logs naming one are dead-lettered.
    experiments_file: Path | None = None
    # Event-time bounds of query logs: |event_time - Kafka record timestamp| beyond this is
    # `event_time_out_of_bounds`; an A/B window leaves memory once the partition's record timestamps
    # passed its end by this much, and a later event for it is `late_event` (it never reopens it).
    event_time_grace_s: float = Field(default=3600.0, gt=0)
    unknown_product_wait_s: float = 2.0
    # Query embeddings kept by the query path, by normalised text (worker/query_cache.py; ~1 KB each,
    # so 20 MB by default); 0: off, every batch's queries go through the `query_relevance` ensemble
    query_cache_size: int = Field(default=20_000, ge=0, le=10_000_000)
    # A relevance-table pair this query or request worker wrote with the same score is not written
    # again within this many seconds (worker/relevance_table.py RecentRows); 0: every pair is written
    table_rewrite_s: float = Field(default=3600.0, ge=0, le=7 * 24 * 3600)
    # Cap of the backoff while a path waits at start for Triton, Kafka or its topics (topic-init may
    # run after the workers); below /healthz's 60 s silence limit, since a waiting worker is alive.
    startup_retry_max_s: float = Field(default=10.0, gt=0, le=30)
    # Cap of the backoff while the broker is away mid-stream (polls, publishes, take-overs of
    # partitions); the waits keep beating /healthz, the cap bounds how late a worker resumes.
    retry_max_s: float = Field(default=10.0, gt=0, le=30)
    # The query worker's product-embedding state (docs/deploying.md "Catalogue scale"): storage dtype
    # of its vectors (float16 halves the memory), where it keeps snapshots for warm restarts (unset:
    # none, every start reads the whole topic), how often it writes them, and how long a load may
    # make no progress before it is retried (no bound on the total: a large catalogue takes longer).
    state_dtype: Literal["float32", "float16"] = "float32"
    state_dir: Path | None = None
    state_snapshot_interval_s: float = Field(default=300.0, ge=1)
    state_stall_s: float = Field(default=60.0, gt=0)
    name: str = Field(default="worker", max_length=64)

    def product_group_of(self, version: str) -> str:
        """The product workers' consumer group of one model version (each version sees every upsert)."""
        return f"{self.product_group}.{version}"


class Settings(BaseSettings):
    """Everything, grouped; each group reads its own `QL_<GROUP>_*` variables."""

    model_config = SettingsConfigDict(hide_input_in_errors=True)  # a nested KafkaSettings holds the password

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)

    def to_env(self) -> dict[str, str]:
        """These settings as the `QL_*` variables that recreate them in another process (a worker
        subprocess, a runbook command); unset optional values are left out."""
        env: dict[str, str] = {}
        for group in (self.kafka, self.topics, self.triton, self.worker):
            prefix = str(group.model_config.get("env_prefix", ""))
            for name, value in group:
                if value is None:
                    continue
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                text = str(value).lower() if isinstance(value, bool) else str(value)
                env[f"{prefix}{name}".upper()] = text
        return env
