"""Product path: catalogue upserts -> Triton `product_embedding` -> compacted embeddings topic.

Writes `ProductEmbedding` v2 (binary float32 vector and the fusion weights that made it:
docs/contracts.md); query workers read v1 records left on the topic beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from schemas import EventError, FusionWeights, ProductEmbeddingV2, ProductUpsert, encode
from worker.config import Settings
from worker.images import resolve_image
from worker.inputs import decode_input
from worker.observability import TRITON_LATENCY
from worker.outputs import Output, dead_letter
from worker.triton_client import RelevanceClient, TritonRequestError

log = structlog.get_logger()


class ProductProcessor:
    """Validates upserts, embeds them in one Triton round trip per batch, publishes state records."""

    path = "product"

    def __init__(self, settings: Settings, client: RelevanceClient) -> None:
        self.settings = settings
        self.client = client
        self.model_version = client.model_version()

    def process(self, records: Sequence[ConsumerRecord]) -> list[Output]:
        topics = self.settings.topics
        worker = self.settings.worker.name
        outputs: list[Output | None] = []
        pending: list[tuple[int, ConsumerRecord, ProductUpsert, bytes | None]] = []
        for rec in records:
            event_id: str | None = None
            try:
                event = decode_input(ProductUpsert, rec)
                event_id = event.event_id
                if event.op == "delete":
                    outputs.append(Output(topics.product_embeddings, event.product_id.encode(), None))
                    continue
                image = resolve_image(event.image, self.settings.worker.image_root)
            except EventError as exc:
                outputs.append(dead_letter(rec, exc, topics.dead_letter, worker, event_id))
                continue
            pending.append((len(outputs), rec, event, image))
            outputs.append(None)  # filled after the Triton call, keeping input order per key
        if pending:
            with TRITON_LATENCY.labels("product_embedding").time():
                results = self.client.product_embeddings(
                    [p[2].title for p in pending],
                    [p[2].product_type or "" for p in pending],
                    [p[3] for p in pending],
                )
            now = datetime.now(UTC)
            for (slot, rec, event, image), result in zip(pending, results, strict=True):
                if result.embedding is None:
                    reason, _, message = (result.error or "triton_error: unknown").partition(":")
                    err = EventError(reason.strip() or "triton_error", message.strip(), "image")
                    outputs[slot] = dead_letter(rec, err, topics.dead_letter, worker, event.event_id)
                    continue
                if result.fusion_weights is None:  # the client sets them with every embedding
                    raise TritonRequestError("product_embedding returned an embedding without fusion weights")
                title_w, image_w = result.fusion_weights
                record = ProductEmbeddingV2.from_array(
                    result.embedding,
                    product_id=event.product_id,
                    product_type=event.product_type or "",
                    model_version=self.model_version,
                    fusion_weights=FusionWeights(title=title_w, image=image_w),
                    has_title=event.title is not None,
                    has_image=image is not None,
                    source_event_id=event.event_id,
                    updated_at=now,
                )
                outputs[slot] = Output(topics.product_embeddings, event.product_id.encode(), encode(record))
        return [out for out in outputs if out is not None]

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        return None

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        return None

    def idle(self) -> None:
        return None
