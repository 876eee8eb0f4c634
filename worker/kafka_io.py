"""kafka-python clients built from settings: one place for delivery-critical options."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from schemas.limits import LIMITS
from worker.config import KafkaSettings, Settings, TopicSettings

MAX_OUTPUT_RECORD_BYTES = 1024 * 1024
"""Largest record a worker produces: Kafka's default `message.max.bytes`, so no topic needs a raised
limit. Outputs fit: dead letters are bounded by MAX_DEAD_LETTER_BYTES, embeddings are ~100 KB at most."""
MAX_INPUT_RECORD_BYTES = LIMITS.max_event_bytes + 64 * 1024
"""For tools that produce inputs: an event at the size limit plus its key and record overhead."""


def make_producer(kafka: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """acks=all and one request in flight: an acknowledged output is durable and per-key ordered.

    `max_request_size` (also kafka-python's per-record cap) defaults to the output bound; input
    producers pass MAX_INPUT_RECORD_BYTES.
    """
    cfg: dict[str, Any] = kafka.common_config() | {
        "acks": "all",
        "linger_ms": 5,
        "retries": 10,
        "max_in_flight_requests_per_connection": 1,
        "max_request_size": MAX_OUTPUT_RECORD_BYTES,
    }
    return KafkaProducer(**(cfg | overrides))


def make_consumer(kafka: KafkaSettings, group_id: str | None, **overrides: Any) -> KafkaConsumer:
    """Manual commits only: offsets move after the outputs of a batch are acknowledged."""
    cfg: dict[str, Any] = kafka.common_config() | {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "fetch_max_bytes": 16 * 1024 * 1024,
        # Short long-polls: at low traffic a fetch otherwise idles up to 500 ms before new records show.
        "fetch_max_wait_ms": kafka.fetch_max_wait_ms,
    }
    return KafkaConsumer(**(cfg | overrides))


AB_UNITS_RETENTION_MS = 90 * 24 * 3600 * 1000
RELEVANCE_TABLE_RETENTION_MS = 30 * 24 * 3600 * 1000


def topic_specs(topics: TopicSettings, model_versions: Iterable[str] = ()) -> list[NewTopic]:
    """Every topic of the pipeline, with the embeddings topic of each model version given: compacted,
    since it is a table keyed by product (a rollout creates the candidate's with `--model-version`)."""
    keep_week = {"retention.ms": str(7 * 24 * 3600 * 1000)}
    inputs = keep_week | {"max.message.bytes": str(MAX_INPUT_RECORD_BYTES)}  # Kafka's default is 1 MiB
    names = {
        topics.product_upserts: inputs,
        topics.query_logs: inputs,
        **{topics.embeddings_for(v): {"cleanup.policy": "compact"} for v in model_versions},
        topics.ab_metrics: {"cleanup.policy": "compact"},
        # a unit's window is rewritten as it grows; 90 days outlive any experiment and its analysis
        topics.ab_units: {"cleanup.policy": "compact,delete", "retention.ms": str(AB_UNITS_RETENTION_MS)},
        topics.dead_letter: {"retention.ms": str(30 * 24 * 3600 * 1000)},
        topics.shadow_scores: keep_week,
        topics.query_scores: keep_week,
        # latest score per (version, query, product); a pair not scored again in 30 days expires
        topics.relevance_table: {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(RELEVANCE_TABLE_RETENTION_MS),
        },
        # a request or a reply older than an hour has no reader left
        topics.score_requests: {"retention.ms": str(3600 * 1000)},
        topics.score_replies: {"retention.ms": str(3600 * 1000)},
    }
    return [
        NewTopic(
            name,
            num_partitions=topics.partitions,
            replication_factor=topics.replication_factor,
            topic_configs=configs,
        )
        for name, configs in names.items()
    ]


class TopicsMissing(KafkaError):
    """Topics a worker needs do not exist (yet): retried at start, since topic-init may run later."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = sorted(topics)
        super().__init__(f"not created yet (topic-init, qlworker create-topics): {', '.join(self.topics)}")


def require_topics(kafka: KafkaSettings, names: Iterable[str]) -> list[str]:
    """The topics, sorted, once all exist; else `TopicsMissing` (a metadata read: never creates one)."""
    wanted = sorted(set(names))
    admin = KafkaAdminClient(**kafka.common_config())
    try:
        missing = set(wanted) - set(admin.list_topics())
    finally:
        admin.close()
    if missing:
        raise TopicsMissing(missing)
    return wanted


def topic_config(kafka: KafkaSettings, topic: str) -> dict[str, str]:
    """The topic's configs the broker reports (empty where it reports none, as Tansu does)."""
    admin = KafkaAdminClient(**kafka.common_config())
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    configs = found.get("topic", {}).get(topic, {}) if isinstance(found, dict) else {}
    return {str(k): str(getattr(v, "value", v)) for k, v in configs.items() if v is not None}


def create_topics(settings: Settings, model_versions: Iterable[str] = ()) -> list[str]:
    """Create missing topics (idempotent), with the embeddings topics of the versions the settings
    name (`QL_WORKER_MODEL_VERSION`, `QL_WORKER_SHADOW_MODEL_VERSION`) and of `model_versions`;
    returns the names that were created."""
    worker, topics = settings.worker, settings.topics
    versions = {v for v in (worker.model_version, worker.shadow_model_version, *model_versions) if v}
    kafka = settings.kafka
    admin = KafkaAdminClient(**kafka.common_config())
    try:
        existing = set(admin.list_topics())
        missing = [spec for spec in topic_specs(topics, sorted(versions)) if spec.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won the race
                admin.create_topics(missing)
        return [spec.name for spec in missing]
    finally:
        admin.close()


def read_topic(
    settings: Settings, topic: str, idle_s: float = 2.0
) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) currently in a topic, from the beginning, stopping after `idle_s` of silence."""
    consumer = make_consumer(settings.kafka, None)
    parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    out: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + idle_s
    while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=200)
        for records in batch.values():
            out.extend((r.key, r.value) for r in records)
        if batch:
            deadline = time.monotonic() + idle_s
    consumer.close(autocommit=False)
    return out
