"""Product path: catalogue upserts -> Triton `product_embedding.<V>` -> the embeddings topic of V.

Writes `ProductEmbedding` v2 (binary float32 vector and the fusion weights that made it) into the
compacted topic `<product_embeddings>.<V>` of the version V it serves (docs/contracts.md). Each version
has its own consumer group, so during a rollout the upserts reach both versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import structlog
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from schemas import EventError, FusionWeights, ProductEmbeddingV2, ProductUpsert, encode
from worker.config import Settings
from worker.images import resolve_image
from worker.inputs import decode_input
from worker.isolation import Isolator, Poison
from worker.observability import TRITON_LATENCY
from worker.outputs import Output, dead_letter
from worker.triton_client import ProductResult, RelevanceClient, TritonRequestError

log = structlog.get_logger()


class _Pending(NamedTuple):
    """An upsert waiting for its embedding; `slot` is its place among the batch's outputs."""

    rec: ConsumerRecord
    event: ProductUpsert
    image: bytes | None
    slot: int = -1


class ProductProcessor:
    """Validates upserts, embeds them in one Triton round trip per batch, publishes state records."""

    path = "product"

    def __init__(self, settings: Settings, client: RelevanceClient) -> None:
        self.settings = settings
        self.client = client
        self.model_version = client.model_version()
        self.topic = settings.topics.embeddings_for(self.model_version)  # this version's own topic
        self.isolator: Isolator[_Pending, ProductResult] = Isolator.from_settings(
            settings.triton, self._canary
        )

    def process(self, records: Sequence[ConsumerRecord]) -> list[Output]:
        outputs: list[Output | None] = []
        pending: list[_Pending] = []
        for rec in records:
            out = self._prepare(rec)
            if isinstance(out, _Pending):
                pending.append(out._replace(slot=len(outputs)))
                outputs.append(None)  # filled after the Triton call, keeping input order per key
            else:
                outputs.append(out)
        now = datetime.now(UTC)
        for item, result in zip(pending, self._embed(pending), strict=True):
            outputs[item.slot] = self._output(item, result, now)
        return [out for out in outputs if out is not None]

    def _prepare(self, rec: ConsumerRecord) -> Output | _Pending:
        """A record to embed, or its output now: a tombstone (delete) or a dead letter."""
        event_id: str | None = None
        try:
            event = decode_input(ProductUpsert, rec)
            event_id = event.event_id
            if event.op == "delete":
                return Output(self.topic, event.product_id.encode(), None)
            return _Pending(rec, event, resolve_image(event.image, self.settings.worker.image_root))
        except EventError as exc:
            return self._letter(rec, exc, event_id)

    def _embed(self, pending: list[_Pending]) -> list[ProductResult | Poison]:
        """Each upsert's embedding (or per-item error), or `Poison` if Triton fails it alone."""

        def call(batch: Sequence[_Pending], timeout_s: float | None) -> list[ProductResult]:
            client = self.client if timeout_s is None else self.client.with_timeout(timeout_s)
            with TRITON_LATENCY.labels("product_embedding").time():
                return client.product_embeddings(
                    [p.event.title for p in batch],
                    [p.event.product_type or "" for p in batch],
                    [p.image for p in batch],
                )

        return self.isolator.run(pending, call)

    def _canary(self, timeout_s: float) -> None:
        """A request known to be valid (a title, no image): does Triton answer in time?"""
        self.client.with_timeout(timeout_s).product_embeddings(["canary"], [""], [None])

    def _output(self, item: _Pending, result: ProductResult | Poison, now: datetime) -> Output:
        """The embedding record of an embedded upsert, or the dead letter of one Triton refused."""
        event = item.event
        if isinstance(result, Poison):
            return self._letter(item.rec, EventError(result.reason, result.message, "image"), event.event_id)
        if result.embedding is None:
            reason, _, message = (result.error or "triton_error: unknown").partition(":")
            error = EventError(reason.strip() or "triton_error", message.strip(), "image")
            return self._letter(item.rec, error, event.event_id)
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
            has_image=item.image is not None,
            source_event_id=event.event_id,
            updated_at=now,
        )
        return Output(self.topic, event.product_id.encode(), encode(record))

    def _letter(self, rec: ConsumerRecord, error: EventError, event_id: str | None) -> Output:
        return dead_letter(rec, error, self.settings.topics.dead_letter, self.settings.worker.name, event_id)

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        return None

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        return None

    def idle(self) -> None:
        return None
