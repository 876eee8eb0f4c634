#!/usr/bin/env bash
# One-shot topic creation for docker-compose's `topic-init` service (runs in the apache/kafka image).
#
# Topic names and counts come from the same QL_TOPIC_* variables the workers read (worker/config.py
# TopicSettings); the defaults below must stay equal to TopicSettings' defaults (tests/test_deploy.py
# checks that by running this script against a stub kafka-topics.sh). Idempotent: --if-not-exists, so
# re-running on an existing cluster is a no-op; partitions are never reduced (Kafka cannot).
set -euo pipefail

KAFKA_TOPICS="${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}"
BOOTSTRAP="${QL_KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
PARTITIONS="${QL_TOPIC_PARTITIONS:-3}"
REPLICATION="${QL_TOPIC_REPLICATION_FACTOR:-1}"
# Retention (ms) of the append-only input topics (the DLQ keeps longer, for inspection and replay).
RETENTION_MS="${TOPIC_RETENTION_MS:-604800000}"          # 7 days
DLQ_RETENTION_MS="${TOPIC_DLQ_RETENTION_MS:-2592000000}" # 30 days
# min.insync.replicas must not exceed the replication factor, or every acks=all write fails.
MIN_ISR="${TOPIC_MIN_INSYNC_REPLICAS:-$(( REPLICATION >= 3 ? 2 : 1 ))}"

# Optional client properties (SASL/SSL) for kafka-topics.sh, e.g. a mounted admin.properties.
common=(--bootstrap-server "$BOOTSTRAP")
if [[ -n "${TOPIC_INIT_COMMAND_CONFIG:-}" ]]; then
  common+=(--command-config "$TOPIC_INIT_COMMAND_CONFIG")
fi

create() {
  local topic="$1"; shift
  echo "topic-init: ensuring ${topic} (partitions=${PARTITIONS}, replication=${REPLICATION}) $*"
  "$KAFKA_TOPICS" "${common[@]}" --create --if-not-exists --topic "$topic" \
    --partitions "$PARTITIONS" --replication-factor "$REPLICATION" \
    --config "min.insync.replicas=${MIN_ISR}" "$@"
}

delete_policy=(--config cleanup.policy=delete --config "retention.ms=${RETENTION_MS}")
# Inputs may be as large as the worker accepts (2 MiB events, schemas/limits.py, + 64 KiB of record
# overhead; worker/kafka_io.py MAX_INPUT_RECORD_BYTES): Kafka's default limit is 1 MiB. Outputs stay
# under 1 MiB (dead letters are capped), so they keep the default.
input_size=(--config "max.message.bytes=2162688")

create "${QL_TOPIC_PRODUCT_UPSERTS:-querylife.product-upserts}" "${delete_policy[@]}" "${input_size[@]}"
create "${QL_TOPIC_QUERY_LOGS:-querylife.query-logs}" "${delete_policy[@]}" "${input_size[@]}"
# Latest embedding per product id of each served model version, one topic per version
# (<prefix>.<version>, docs/contracts.md): compacted, so a query worker can rebuild its whole in-memory
# state by reading the topic from the beginning; a small dirty ratio and hourly segments keep that read
# short. A rollout's candidate gets its topic from `qlworker create-topics --model-version V`.
for version in ${QL_WORKER_MODEL_VERSION:-} ${QL_WORKER_SHADOW_MODEL_VERSION:-}; do
  create "${QL_TOPIC_PRODUCT_EMBEDDINGS:-querylife.product-embeddings}.${version}" \
    --config cleanup.policy=compact --config min.cleanable.dirty.ratio=0.1 --config segment.ms=3600000
done
# Scores and A/B windows are keyed and replays overwrite them: compacted like worker.kafka_io.topic_specs.
create "${QL_TOPIC_AB_METRICS:-querylife.ab-metrics}" --config cleanup.policy=compact
# Per-unit A/B totals (ABMetrics v2): compacted (a replay overwrites a unit's window) and deleted after
# 90 days (longer than any experiment plus its analysis; compaction alone keeps every window forever).
create "${QL_TOPIC_AB_UNITS:-querylife.ab-units}" \
  --config "cleanup.policy=compact,delete" --config "retention.ms=7776000000"
create "${QL_TOPIC_DEAD_LETTER:-querylife.dead-letter}" \
  --config cleanup.policy=delete --config "retention.ms=${DLQ_RETENTION_MS}"
# Shadow comparisons during a rollout: read by `qlworker rollout report`, then no longer needed.
create "${QL_TOPIC_SHADOW_SCORES:-querylife.shadow-scores}" "${delete_policy[@]}"
# The ranker's ways in (docs/contracts.md): one record per query log (7 days), the relevance table
# (latest per version, query and product; a pair not scored again in 30 days expires), and
# candidate scoring on request (a request or reply older than an hour has no reader left).
create "${QL_TOPIC_QUERY_SCORES:-querylife.query-scores}" "${delete_policy[@]}"
create "${QL_TOPIC_RELEVANCE_TABLE:-querylife.relevance-table}" \
  --config "cleanup.policy=compact,delete" --config "retention.ms=2592000000"
create "${QL_TOPIC_SCORE_REQUESTS:-querylife.score-requests}" --config cleanup.policy=delete --config retention.ms=3600000
create "${QL_TOPIC_SCORE_REPLIES:-querylife.score-replies}" --config cleanup.policy=delete --config retention.ms=3600000

echo "topic-init: done"
"$KAFKA_TOPICS" "${common[@]}" --list
