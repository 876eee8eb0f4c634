"""Poison-proof streams (#16): hostile inputs mixed into streams of valid ones, on both paths.

- `poison_images`: two product workers (their own topics and groups) embed at the same time, so
  Triton's dynamic batcher merges their requests; one stream carries every class of hostile image
  that used to stall a partition or fail a whole batch (tests/hostile_images.py), the other only
  valid upserts. Every poison image is dead-lettered with its reason; every valid upsert of both
  streams is embedded, none dead-lettered.
- `poison_queries`: the query-path cases of the hostile corpus (reliability/hostile.py) mixed into a
  stream of valid query logs: each hostile log dead-lettered with a specific reason, every valid one
  scored and counted once in A/B.
- `event_times`: query logs whose `event_time` is far before or after their record's timestamp
  (`event_time_out_of_bounds`: a letter, no scores, no A/B) and logs for an A/B window the partition
  has already closed (`late_event`: scored, a letter, not counted: the window is never reopened).
- `added_fields`: a newer producer adds fields to every query log and product upsert: all scored and
  embedded, none dead-lettered, the fields counted in `querylife_unknown_input_fields_total`.

Every scenario also gets the monitor's columns (longest stall, slowest health probe).
"""

from __future__ import annotations

import base64
import functools
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from PIL import Image

from reliability.faults import (
    ScenarioResult,
    Stack,
    Stream,
    WorkerProcess,
    account,
    fill,
    fresh_settings,
    lag,
    query_logs,
    query_values,
    read_all,
    seeded_query_logs,
    timed,
    wait_until,
)
from reliability.hostile import QUERY, corpus, specific, valid_product
from reliability.monitor import consumed
from schemas import DeadLetter, QueryLog, decode_event, encode
from worker.config import Settings
from worker.kafka_io import make_producer

LIMIT_S = 300.0  # every wait of these scenarios


@dataclass(frozen=True)
class PoisonSizes:
    valid_products: int  # per product worker
    valid_queries: int
    hostile_queries: int
    rate: float

    @classmethod
    def quick(cls) -> PoisonSizes:
        return cls(valid_products=60, valid_queries=150, hostile_queries=60, rate=60)

    @classmethod
    def full(cls) -> PoisonSizes:
        return cls(valid_products=200, valid_queries=600, hostile_queries=300, rate=100)


@functools.cache
def poison_images() -> dict[str, tuple[bytes, str]]:
    """Each class of hostile image (tests/test_image_bounds.py), with the reason it must get."""
    from tests.hostile_images import animated_webp, encode, patch_dimensions, raw_png, with_extra_scans

    scans = with_extra_scans(encode(Image.new("L", (4096, 4096), 128), "JPEG", progressive=True), 2_000)
    tiny_anim = animated_webp((1, 1), 2)
    return {
        "png 16777216x1": (raw_png(16_777_216, 1), "image_aspect_ratio"),
        "png 1x16000000": (raw_png(1, 16_000_000), "image_aspect_ratio"),
        "png 5000x5000": (raw_png(5000, 5000), "decompression_bomb"),
        "jpeg 2,000 scans": (scans, "too_many_scans"),
        "webp canvas 16777216x1": (patch_dimensions(tiny_anim, 1 << 24, 1), "image_aspect_ratio"),
        "webp canvas 65535x65535": (patch_dimensions(tiny_anim, 65535, 65535), "decompression_bomb"),
    }


def _valid_image(n: int) -> bytes:
    from tests.hostile_images import encode

    return encode(Image.new("RGB", (96, 96), (n * 37 % 256, n * 91 % 256, 120)), "JPEG")


def _upsert(n: int, prefix: str, image: bytes) -> tuple[bytes | None, bytes]:
    doc = valid_product(n, {"data": base64.b64encode(image).decode()})
    doc |= {
        "event_id": f"{prefix}-e{n}",
        "product_id": f"{prefix}{n}",
        "event_time": datetime.now(UTC).isoformat(),
    }
    return doc["product_id"].encode(), orjson.dumps(doc)


def _letters(settings: Settings) -> dict[tuple[str, int, int], DeadLetter]:
    out = {}
    for _key, value in read_all(settings, settings.topics.dead_letter):
        if value is not None:
            d = decode_event(DeadLetter, value, max_bytes=64 << 20)
            out[(d.source_topic, d.partition, d.offset)] = d
    return out


def _drained(settings: Settings, workers: list[WorkerProcess]) -> Callable[[], bool]:
    return lambda: (
        all(lag(settings, g, t) == 0 for w in workers for g, t in consumed(w))
        and all(consumed(w) for w in workers)
    )


# --------------------------------------------------------------------------- poison images


def scenario_poison_images(stack: Stack, sizes: PoisonSizes) -> ScenarioResult:
    result = ScenarioResult("poison images, 2 workers batched together")
    poison = poison_images()
    mixed = fresh_settings(stack.broker.bootstrap, stack.triton.grpc_url)
    clean = fresh_settings(stack.broker.bootstrap, stack.triton.grpc_url)
    a = WorkerProcess(mixed, "product", stack.log_dir, f"poisonA-{mixed.worker.name}")
    b = WorkerProcess(clean, "product", stack.log_dir, f"poisonB-{clean.worker.name}")
    with timed(result, lambda: [a, b]):
        version = stack.embeddings(1)[0].model_version
        for s in (mixed, clean):
            seeded_query_logs(stack, s, 0, 0, "none")  # creates the topics
        valid = [_upsert(n, "pv", _valid_image(n)) for n in range(sizes.valid_products)]
        every = max(1, len(valid) // (2 * len(poison)))
        stream_a: list[tuple[bytes | None, bytes]] = []
        poisoned: dict[bytes | None, str] = {}
        names = list(poison)
        for n, item in enumerate(valid):
            stream_a.append(item)
            if n % every == 0:  # each class twice, spread over the stream
                name = names[(n // every) % len(names)]
                key, value = _upsert(n, f"px{n}", poison[name][0])
                poisoned[key] = name
                stream_a.append((key, value))
        stream_b = [_upsert(n, "pb", _valid_image(n)) for n in range(sizes.valid_products)]
        a.start()
        b.start()
        wait_until("both workers consuming", lambda: bool(consumed(a) and consumed(b)), 180)
        streams = [
            Stream(mixed, mixed.topics.product_upserts, stream_a, sizes.rate).start(),
            Stream(clean, clean.topics.product_upserts, stream_b, sizes.rate).start(),
        ]
        for stream in streams:
            stream.join(LIMIT_S)
        wait_until("lag 0 on both", lambda: _drained(mixed, [a])() and _drained(clean, [b])(), LIMIT_S)
        problems: list[str] = []
        embedded = 0
        for s, items in ((mixed, [v for v in stream_a if v[0] not in poisoned]), (clean, stream_b)):
            keys = {k for k, v in read_all(s, s.topics.embeddings_for(version)) if v is not None}
            missing = [str(k) for k, _ in items if k not in keys]
            embedded += len(items) - len(missing)
            if missing:
                problems.append(f"{len(missing)} valid upsert(s) not embedded ({', '.join(missing[:3])})")
        letters = {d.event_id: d for d in _letters(mixed).values()} | {
            d.event_id: d for d in _letters(clean).values()
        }
        by_reason: Counter[str] = Counter()
        for key, name in poisoned.items():
            event_id = orjson.loads(dict(stream_a)[key])["event_id"]
            letter = letters.pop(event_id, None)
            want = poison[name][1]
            if letter is None or letter.reason != want:
                problems.append(
                    f"{name}: {'no letter' if letter is None else letter.reason}, expected {want}"
                )
            else:
                by_reason[letter.reason] += 1
        if letters:
            problems.append(
                f"{len(letters)} valid upsert(s) dead-lettered: "
                f"{sorted(d.reason for d in letters.values())[:5]}"
            )
        result.events_sent = len(stream_a) + len(stream_b)
        result.dlq_by_reason = dict(sorted(by_reason.items()))
        result.lost = result.events_sent - embedded - sum(by_reason.values())
        result.checks |= {
            "poison_classes": {name: reason for name, (_, reason) in poison.items()},
            "poison_sent": len(poisoned),
            "valid_embedded": f"{embedded}/{len(stream_a) - len(poisoned) + len(stream_b)}",
            "isolations_logged": a.count("triton_batch_isolating") + b.count("triton_batch_isolating"),
            "workers_alive": a.alive() and b.alive(),
        }
        result.passed = not problems and a.alive() and b.alive()
        result.error = "; ".join(problems) or None
    return result


# --------------------------------------------------------------------------- poison query logs


def scenario_poison_queries(stack: Stack, sizes: PoisonSizes) -> ScenarioResult:
    result = ScenarioResult("poison query logs in a valid stream")
    settings = fresh_settings(stack.broker.bootstrap, stack.triton.grpc_url)
    w = WorkerProcess(settings, "query", stack.log_dir, f"poisonQ-{settings.worker.name}")
    with timed(result, lambda: [w]):
        events = seeded_query_logs(stack, settings, sizes.valid_queries, 7, "pq")
        known = [e.product_id for e in stack.embeddings()]
        hostile = [c for c in corpus(known[:3], 40) if c.path == QUERY and not (c.accepted or c.reported)]
        step = max(1, len(hostile) // sizes.hostile_queries)
        hostile = hostile[::step][: sizes.hostile_queries]
        valid = query_values(events)
        every = max(1, len(valid) // max(1, len(hostile)))
        mixed: list[tuple[bytes | None, bytes]] = []
        for n, item in enumerate(valid):
            mixed.append(item)
            if n % every == 0 and n // every < len(hostile):
                mixed.append((b"poison-%d" % n, hostile[n // every].value or b""))
        sent_hostile = len(mixed) - len(valid)
        w.start()
        Stream(settings, settings.topics.query_logs, mixed, sizes.rate * 2).start().join(LIMIT_S)
        wait_until("lag 0", _drained(settings, [w]), LIMIT_S)
        time.sleep(1.0)
        acc = account(settings, events)
        fill(result, acc, len(mixed))
        letters = list(_letters(settings).values())
        unspecific = [d.reason for d in letters if not specific(d)]
        problems = []
        if acc.lost_events or acc.not_scored:
            problems.append(f"{acc.lost_events} valid log(s) lost, {acc.not_scored} not scored")
        if acc.ab_queries != len(events):
            problems.append(f"A/B counted {acc.ab_queries} searches for {len(events)} valid logs")
        if len(letters) != sent_hostile or unspecific:
            problems.append(
                f"{len(letters)} letters for {sent_hostile} hostile logs, unspecific: {unspecific[:5]}"
            )
        result.checks |= {"hostile_sent": sent_hostile, "valid_sent": len(events)}
        result.passed = not problems and w.alive()
        result.error = "; ".join(problems) or None
    return result


# --------------------------------------------------------------------------- event times

GRACE_S = 60.0
WINDOW_S = 60


def _timed_log(n: int, event_time: datetime, products: list[str]) -> QueryLog:
    base = query_logs(products, 1, n, f"et{n}")[0]
    return base.model_copy(update={"event_time": event_time, "query_id": f"et-q{n}", "event_id": f"et-e{n}"})


def scenario_event_times(stack: Stack, sizes: PoisonSizes) -> ScenarioResult:
    """One partition, record timestamps set by the producer (CreateTime), grace and window of 60 s."""
    result = ScenarioResult("late and early event times")
    settings = fresh_settings(
        stack.broker.bootstrap, stack.triton.grpc_url, event_time_grace_s=GRACE_S, ab_window_s=WINDOW_S
    )
    env = {"QL_WORKER_EVENT_TIME_GRACE_S": str(GRACE_S), "QL_WORKER_AB_WINDOW_S": str(WINDOW_S)}
    w = WorkerProcess(settings, "query", stack.log_dir, f"times-{settings.worker.name}", extra_env=env)
    with timed(result, lambda: [w]):
        seeded_query_logs(stack, settings, 0, 0, "none")
        products = [e.product_id for e in stack.embeddings()]
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        plan: list[tuple[QueryLog, datetime, str | None]] = []  # log, record time, expected reason
        for n in range(10):
            plan.append((_timed_log(n, t0 + timedelta(seconds=n), products), t0 + timedelta(seconds=n), None))
            plan.append(
                (_timed_log(100 + n, t0 - timedelta(days=1), products), t0, "event_time_out_of_bounds")
            )
            plan.append(
                (_timed_log(200 + n, t0 + timedelta(days=1), products), t0, "event_time_out_of_bounds")
            )
        # the partition's watermark (its record times) moves past t0's window and its grace ...
        later = t0 + timedelta(seconds=WINDOW_S + 3 * GRACE_S)
        plan += [(_timed_log(300 + n, later, products), later, None) for n in range(5)]
        # ... so these, within the grace of their own record times, are late for a closed window
        for n in range(5):
            event_time = t0 + timedelta(seconds=n)
            plan.append(
                (_timed_log(400 + n, event_time, products), event_time + timedelta(seconds=30), "late_event")
            )
        w.start()
        wait_until("the worker consuming", lambda: bool(consumed(w)), 180)
        producer = make_producer(settings.kafka)
        offsets: dict[int, str | None] = {}
        try:
            for ev, record_time, reason in plan:
                meta = producer.send(
                    settings.topics.query_logs,
                    key=ev.unit_key(),
                    value=encode(ev),
                    partition=0,
                    timestamp_ms=int(record_time.timestamp() * 1000),
                ).get(timeout=30)
                offsets[meta.offset] = reason
        finally:
            producer.close(5)
        wait_until("lag 0", _drained(settings, [w]), LIMIT_S)
        letters = {off: d.reason for (_t, _p, off), d in _letters(settings).items()}
        wrong = {off: (letters.get(off), want) for off, want in offsets.items() if letters.get(off) != want}
        scored_ok = [ev for ev, _t, reason in plan if reason in (None, "late_event")]
        acc = account(settings, scored_ok)
        fill(result, acc, len(plan))
        result.checks |= {"expected_by_reason": dict(Counter(r for r in offsets.values() if r))}
        problems = [f"offset {o}: got {got}, expected {want}" for o, (got, want) in sorted(wrong.items())[:5]]
        if acc.lost_events:
            problems.append(f"{acc.lost_events} in-bounds log(s) not scored")
        counted = sum(reason is None for _e, _t, reason in plan)
        if acc.ab_queries != counted:
            problems.append(
                f"A/B counted {acc.ab_queries} searches, expected {counted} (late ones never reopen)"
            )
        result.passed = not problems and w.alive()
        result.error = "; ".join(problems) or None
    return result


# --------------------------------------------------------------------------- a newer producer


def _with_fields(value: bytes, nested: str | None) -> bytes:
    doc = orjson.loads(value)
    doc |= {"client_build": "2026.12.1", "trace": {"span": "abc"}}
    if nested:
        for item in doc.get(nested, []):
            item["rank_source"] = "ml"
    return orjson.dumps(doc)


def scenario_added_fields(stack: Stack, sizes: PoisonSizes) -> ScenarioResult:
    result = ScenarioResult("producer adds fields")
    settings = fresh_settings(stack.broker.bootstrap, stack.triton.grpc_url)
    w = WorkerProcess(settings, "both", stack.log_dir, f"fields-{settings.worker.name}")
    with timed(result, lambda: [w]):
        events = seeded_query_logs(stack, settings, sizes.valid_queries // 2, 9, "af")
        logs = [(k, _with_fields(v, "impressions")) for k, v in query_values(events)]
        upserts = [
            (k, _with_fields(v, None)) for k, v in (_upsert(n, "af", _valid_image(n)) for n in range(20))
        ]
        w.start()
        streams = [
            Stream(settings, settings.topics.query_logs, logs, sizes.rate).start(),
            Stream(settings, settings.topics.product_upserts, upserts, sizes.rate).start(),
        ]
        for stream in streams:
            stream.join(LIMIT_S)
        wait_until("lag 0", _drained(settings, [w]), LIMIT_S)
        time.sleep(1.0)
        acc = account(settings, events)
        fill(result, acc, len(logs) + len(upserts))
        version = stack.embeddings(1)[0].model_version
        keys = {k for k, v in read_all(settings, settings.topics.embeddings_for(version)) if v is not None}
        embedded = sum(k in keys for k, _ in upserts)
        with urllib.request.urlopen(f"http://127.0.0.1:{w.metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        counted = [
            line for line in metrics.splitlines() if line.startswith("querylife_unknown_input_fields_total{")
        ]
        problems = []
        if acc.lost_events or acc.dlq or embedded != len(upserts):
            problems.append(f"lost {acc.lost_events}, letters {acc.dlq}, embedded {embedded}/{len(upserts)}")
        if not any("client_build" in line for line in counted):
            problems.append("querylife_unknown_input_fields_total does not count client_build")
        result.checks |= {"unknown_field_series": len(counted), "embedded": f"{embedded}/{len(upserts)}"}
        result.passed = not problems and w.alive()
        result.error = "; ".join(problems) or None
    return result


POISON: dict[str, Callable[[Stack, PoisonSizes], ScenarioResult]] = {
    "poison_images": scenario_poison_images,
    "poison_queries": scenario_poison_queries,
    "event_times": scenario_event_times,
    "added_fields": scenario_added_fields,
}
