"""`qlworker rollout`: the model-upgrade runbook as commands (docs/deploying.md "Model upgrade").

    load      Triton loads a new version's directories and ensembles beside the served ones
    unload    Triton unloads a retired version's ensembles
    backfill  embed the catalogue export with a version into its own embeddings topic (resumable)
    status    how much of the catalogue a candidate covers; exit 0 once the switch rule holds
    report    the shadow comparison of a candidate with the serving version

Where the catalogue is replayed from: a catalogue export (one `ProductUpsert` per line, images by
path under `QL_WORKER_IMAGE_ROOT`), not the upserts topic. That topic keeps 7 days and carries inline
images up to 1 MiB per event: it does not hold the products nobody changed for a week, and making it
a compacted table of the catalogue would store every image in Kafka forever. The export is replayed
first; then the candidate's product workers (their own consumer group, which starts at the earliest
upsert still kept) apply every change of the last 7 days after it, so nothing the export missed is
lost and nothing older overwrites something newer. Backfill therefore refuses to run once that group
has started. It is resumable: products already in the candidate's topic are skipped.

The switch rule (`status`): the candidate has an embedding for at least `--min-coverage` (default
99.9 %) of the products the serving version has, and its product workers have consumed every upsert.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition
from tqdm import tqdm

from schemas import EventError, decode_event, decode_product_embedding
from schemas.lifecycle import ShadowScores
from worker.config import Settings
from worker.dependency import DependencyUnavailable
from worker.kafka_io import make_consumer, make_producer, require_topics
from worker.outputs import Output
from worker.product_path import ProductProcessor
from worker.state_reader import TopicReader
from worker.triton_client import RelevanceClient, TritonRequestError

DEFAULT_MIN_COVERAGE = 0.999
BACKFILL_BATCH = 64


class RolloutError(RuntimeError):
    """A rollout step that must not run now; the message says why and what to do."""


# ---------------------------------------------------------------------------------------- reading
def product_types(settings: Settings, version: str) -> dict[str, str]:
    """product_id -> product_type of every product the version's embeddings topic holds now."""
    found: dict[str, str] = {}

    def apply(rec: ConsumerRecord) -> None:
        key = rec.key.decode("utf-8", "replace") if rec.key else ""
        if rec.value is None:
            found.pop(key, None)
            return
        try:
            found[key] = decode_product_embedding(rec.value).product_type
        except EventError:
            found.pop(key, None)

    reader = TopicReader(settings.kafka, settings.topics.embeddings_for(version))
    try:
        reader.read_to_end(apply)
    finally:
        reader.close()
    return found


def group_lag(settings: Settings, group: str, topic: str) -> int | None:
    """Records of `topic` the consumer group has not committed yet; None if it never committed."""
    consumer: KafkaConsumer = make_consumer(settings.kafka, group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        committed = {tp: consumer.committed(tp) for tp in partitions}
        if all(c is None for c in committed.values()):
            return None
        end = consumer.end_offsets(partitions)
        return sum(max(0, end[tp] - (committed[tp] or 0)) for tp in partitions)
    finally:
        consumer.close(autocommit=False)


# -------------------------------------------------------------------------------------- backfill
@dataclass
class BackfillResult:
    lines: int = 0
    skipped: int = 0  # already in the topic (a resumed backfill)
    embedded: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0

    @property
    def per_million_s(self) -> float:
        return self.seconds / max(1, self.embedded) * 1e6


def _export_records(path: Path, skip: set[str], result: BackfillResult) -> Iterator[ConsumerRecord]:
    """Each line of the export as the record a product worker would consume (dead letters name the
    file and the line); products in `skip` are left out."""
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            result.lines += 1
            try:
                pid = orjson.loads(line).get("product_id")
            except (orjson.JSONDecodeError, AttributeError):
                pid = None  # let the product path name what is wrong with it
            if isinstance(pid, str) and pid in skip:
                result.skipped += 1
                continue
            value = line.rstrip(b"\n")
            key = pid.encode() if isinstance(pid, str) else None
            yield ConsumerRecord(
                topic=path.name,
                partition=0,
                leader_epoch=-1,
                offset=lineno,
                timestamp=int(time.time() * 1000),
                timestamp_type=0,
                key=key,
                value=value,
                headers=[],
                checksum=None,
                serialized_key_size=len(key or b""),
                serialized_value_size=len(value),
                serialized_header_size=-1,
            )


def backfill(settings: Settings, version: str, export: Path, progress: bool = True) -> BackfillResult:
    """Embed every product of the export with `version` into its topic (see the module docstring)."""
    topics, group = settings.topics, settings.worker.product_group_of(version)
    topic = topics.embeddings_for(version)
    require_topics(settings.kafka, [topic, topics.dead_letter, topics.product_upserts])
    if group_lag(settings, group, topics.product_upserts) is not None:
        raise RolloutError(
            f"the product workers of {version} (group {group}) have started: a backfill now could "
            "overwrite their newer embeddings. Backfill before starting them."
        )
    client = RelevanceClient(settings.triton, version)
    client.wait_ready(60.0)
    processor = ProductProcessor(settings, client)
    done = set(product_types(settings, version))
    result = BackfillResult()
    producer = make_producer(settings.kafka)
    started = time.monotonic()
    bar = tqdm(desc=f"backfill {version}", unit=" products", disable=not progress, file=sys.stderr)
    try:
        batch: list[ConsumerRecord] = []
        for rec in _export_records(export, done, result):
            batch.append(rec)
            if len(batch) == BACKFILL_BATCH:
                _publish(producer, processor.process(batch), topic, result, bar)
                batch = []
        if batch:
            _publish(producer, processor.process(batch), topic, result, bar)
    finally:
        bar.close()
        producer.close(timeout=30)
        client.close()
    result.seconds = time.monotonic() - started
    return result


def _publish(
    producer: KafkaProducer, outputs: list[Output], topic: str, result: BackfillResult, bar: tqdm
) -> None:
    futures = [producer.send(out.topic, key=out.key, value=out.value) for out in outputs]
    producer.flush(timeout=60)
    for fut in futures:
        fut.get(timeout=10)  # a batch counts as done only once the broker has it
    embedded = sum(1 for out in outputs if out.topic == topic)
    result.embedded += embedded
    result.dead_lettered += len(outputs) - embedded
    bar.update(len(outputs))


# ---------------------------------------------------------------------------------------- status
@dataclass
class Coverage:
    serving: str
    candidate: str
    serving_products: int
    candidate_products: int
    covered: int
    candidate_lag: int | None
    min_coverage: float

    @property
    def share(self) -> float:
        return self.covered / self.serving_products if self.serving_products else 1.0

    @property
    def ready(self) -> bool:
        return self.share >= self.min_coverage and self.candidate_lag == 0


def coverage(settings: Settings, serving: str, candidate: str, min_coverage: float) -> Coverage:
    ours, theirs = set(product_types(settings, serving)), set(product_types(settings, candidate))
    lag = group_lag(settings, settings.worker.product_group_of(candidate), settings.topics.product_upserts)
    return Coverage(serving, candidate, len(ours), len(theirs), len(ours & theirs), lag, min_coverage)


# ---------------------------------------------------------------------------------------- report
def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's correlation needs."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Rank correlation of two score lists; None when either is constant or has < 2 values."""
    if len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class ShadowReport:
    serving: str
    candidate: str
    query_logs: int = 0
    pairs: int = 0
    rank_correlations: list[float] = field(default_factory=list)
    labels_agreeing: int = 0
    shift_by_type: dict[str, list[float]] = field(default_factory=dict)

    @property
    def label_agreement(self) -> float | None:
        return self.labels_agreeing / self.pairs if self.pairs else None

    def as_dict(self) -> dict[str, object]:
        corr = np.array(self.rank_correlations) if self.rank_correlations else None
        return {
            "serving": self.serving,
            "candidate": self.candidate,
            "query_logs": self.query_logs,
            "pairs_scored_by_both": self.pairs,
            "rank_correlation_mean": None if corr is None else round(float(corr.mean()), 4),
            "rank_correlation_median": None if corr is None else round(float(np.median(corr)), 4),
            "label_agreement": None if self.label_agreement is None else round(self.label_agreement, 4),
            "mean_score_shift_by_type": {
                t: {"pairs": len(v), "mean_shift": round(float(np.mean(v)), 4)}
                for t, v in sorted(self.shift_by_type.items(), key=lambda kv: -len(kv[1]))
            },
        }


def shadow_report(settings: Settings, serving: str, candidate: str) -> ShadowReport:
    """Rank correlation per query, label agreement and mean score shift per product type."""
    report = ShadowReport(serving, candidate)
    types = product_types(settings, candidate)

    def apply(rec: ConsumerRecord) -> None:
        if rec.value is None:
            return
        try:
            shadow = decode_event(ShadowScores, rec.value)
        except EventError:
            return
        if (shadow.serving_version, shadow.candidate_version) != (serving, candidate):
            return
        _add(report, shadow, types)

    reader = TopicReader(settings.kafka, settings.topics.shadow_scores)
    try:
        reader.read_to_end(apply)
    finally:
        reader.close()
    return report


def _add(report: ShadowReport, shadow: ShadowScores, types: dict[str, str]) -> None:
    both = [p for p in shadow.pairs if p.serving_score is not None and p.candidate_score is not None]
    report.query_logs += 1
    report.pairs += len(both)
    report.labels_agreeing += sum(p.serving_label == p.candidate_label for p in both)
    corr = spearman(
        np.array([p.serving_score for p in both], dtype=np.float64),
        np.array([p.candidate_score for p in both], dtype=np.float64),
    )
    if corr is not None:
        report.rank_correlations.append(corr)
    for p in both:
        assert p.serving_score is not None and p.candidate_score is not None
        ptype = p.product_type or types.get(p.product_id, "unknown")
        report.shift_by_type.setdefault(ptype, []).append(p.candidate_score - p.serving_score)


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    steps = parser.add_subparsers(dest="step", required=True)
    load = steps.add_parser("load", help="load a version's Triton models beside the served ones")
    load.add_argument("--model-version", required=True, help="the Query-LIFE version to load")
    load.add_argument("--timeout-s", type=float, default=600.0, help="how long to wait for it to be ready")
    unload = steps.add_parser("unload", help="unload a retired version's ensembles")
    unload.add_argument("--model-version", required=True, help="the Query-LIFE version to unload")
    fill = steps.add_parser("backfill", help="embed a catalogue export with a version (resumable)")
    fill.add_argument("--model-version", required=True, help="the version to embed with (the candidate)")
    fill.add_argument(
        "--export", type=Path, required=True, help="catalogue export: one ProductUpsert per line"
    )
    fill.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, text in (("status", "catalogue coverage of a candidate"), ("report", "shadow comparison")):
        step = steps.add_parser(name, help=text)
        step.add_argument("--serving", required=True, help="the version serving now")
        step.add_argument("--candidate", required=True, help="the version rolled out")
    steps.choices["status"].add_argument(
        "--min-coverage", type=float, default=DEFAULT_MIN_COVERAGE, help="share of products the rule needs"
    )


def run(args: argparse.Namespace) -> int:
    """Run one step; exit 0 when done (for `status`: when the switch rule holds, else 3)."""
    settings = Settings()
    try:
        if args.step == "load":
            client = RelevanceClient(settings.triton, args.model_version)
            client.load_version(args.model_version, args.timeout_s)
            client.wait_ready(args.timeout_s)
            print(orjson.dumps(client.model_info()).decode())
            return 0
        if args.step == "unload":
            with RelevanceClient(settings.triton, args.model_version) as client:
                client.unload_version(args.model_version)
            print(f"unloaded {', '.join(RelevanceClient.ensembles(args.model_version))}")
            return 0
        if args.step == "backfill":
            done = backfill(settings, args.model_version, args.export, progress=not args.no_progress)
            print(orjson.dumps({**done.__dict__, "seconds_per_million": round(done.per_million_s)}).decode())
            return 0
        if args.step == "status":
            cov = coverage(settings, args.serving, args.candidate, args.min_coverage)
            print(orjson.dumps({**cov.__dict__, "share": round(cov.share, 6), "ready": cov.ready}).decode())
            return 0 if cov.ready else 3
        report = shadow_report(settings, args.serving, args.candidate)
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return 0
    except RolloutError as exc:
        print(f"rollout {args.step} refused: {exc}", file=sys.stderr)
        return 2
    except (DependencyUnavailable, TritonRequestError) as exc:
        print(f"rollout {args.step} failed: {exc}", file=sys.stderr)
        return 1
