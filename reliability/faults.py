"""Fault scenarios on the real Tansu broker and the real Triton, with the worker as subprocesses.

Each scenario streams query logs (cheap: no images) through `python -m worker.cli run` processes,
injects one kind of fault, then reads back *every* record of the outputs (not the latest per key)
and counts, per input event, what is missing (lost) and what was written more than once
(duplicated), and whether the duplicates carry identical values. Everything binds to 127.0.0.1 and
is bounded in time; every wait fails with a message instead of hanging.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from harness.local_services import (
    LocalBroker,
    LocalObjectStore,
    LocalTriton,
    ManagedProcess,
    free_port,
    worker_env,
)
from querylife.catalogue import catalogue_dir
from querylife.checkpoint import DEFAULT_DIR, META_FILE
from reliability.monitor import Monitor, judge
from schemas import (
    ABMetricsV2,
    DeadLetter,
    EventError,
    Impression,
    ProductEmbedding,
    QueryLog,
    decode_event,
    encode,
)
from schemas.ranker import ImpressionScore, QueryScores
from worker.ab_metrics import latest_records
from worker.config import KafkaSettings, Settings, TopicSettings, TritonSettings, WorkerSettings
from worker.kafka_io import MAX_INPUT_RECORD_BYTES, create_topics, make_consumer, make_producer

REPO = Path(__file__).resolve().parents[1]
DATA = catalogue_dir()  # the full catalogue (flag-free: $QUERYLIFE_DATA or ../shared)
S3_SETTLE_S = 5.0  # how long a read of a topic on Tansu's s3 engine waits for stragglers
S3_FETCH_MAX_WAIT_MS = 500  # Kafka's default; on Tansu's s3 engine it also bounds a fetch's object listing
SCORE_TOLERANCE = 1e-5  # replays may batch differently in Triton: float noise, not a different value


class ScenarioFailed(AssertionError):
    """A bounded wait ran out or an invariant broke; the message says which and where the logs are."""


# --------------------------------------------------------------------------- results


@dataclass
class ScenarioResult:
    """One row of the figures table."""

    name: str
    events_sent: int = 0
    lost: int = 0
    duplicated: int = 0  # output keys written more than once
    duplicated_identical: int = 0  # ... of which every copy has the same values
    max_duplicate_diff: float = 0.0
    dlq_by_reason: dict[str, int] = field(default_factory=dict)
    reported: int = 0  # dead-lettered query logs whose `unknown_product` scores were also written
    restarts_survived: int = 0
    longest_stall_s: float | None = None  # reliability.monitor: no input partition waited longer
    probe_max_s: float | None = None  # ... and no health probe took longer
    passed: bool = False
    seconds: float = 0.0
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """The real services the scenarios run against (started by `python -m reliability` or the tests)."""

    broker: LocalBroker
    triton: LocalTriton
    model_repository: Path
    log_dir: Path
    data_dir: Path = DATA
    _embeddings: list[ProductEmbedding] | None = None

    def embeddings(self, count: int = 40) -> list[ProductEmbedding]:
        """Real product embeddings (computed once by this Triton), to seed each scenario's state topic."""
        if self._embeddings is None or len(self._embeddings) < count:
            self._embeddings = compute_embeddings(self.triton, self.data_dir, count)
        return self._embeddings[:count]


# the committed head: the one version a fault run's Triton serves, named by every worker it starts
SERVED_VERSION: str = orjson.loads((DEFAULT_DIR / META_FILE).read_bytes())["version"]
_WORKER_DEFAULTS: dict[str, Any] = {
    "batch_max_events": 32,
    "unknown_product_wait_s": 0.2,
    "model_version": SERVED_VERSION,
}


def compute_embeddings(triton: LocalTriton, data_dir: Path, count: int) -> list[ProductEmbedding]:
    from harness.demo_data import load_catalogue
    from worker.triton_client import RelevanceClient

    products = load_catalogue(data_dir, count)
    with RelevanceClient(TritonSettings(url=triton.grpc_url, timeout_s=60)) as client:
        client.wait_ready(60)
        version = client.model_version()
        results = client.product_embeddings(
            [p.get("title") or None for p in products], [p["product_type"] for p in products], [None] * count
        )
    now = datetime.now(UTC)
    out = []
    for p, r in zip(products, results, strict=True):
        if r.embedding is None:
            raise ScenarioFailed(f"Triton could not embed product {p['product_id']}: {r.error}")
        out.append(
            ProductEmbedding(
                product_id=str(p["product_id"]),
                product_type=p["product_type"],
                embedding=[float(x) for x in r.embedding],
                has_title=True,
                has_image=False,
                model_version=version,
                source_event_id=f"seed-{p['product_id']}",
                updated_at=now,
            )
        )
    return out


def fresh_settings(bootstrap: str, triton_url: str, **worker: Any) -> Settings:
    """Settings with unique topic names and group ids, short group timeouts, fast Triton retries."""
    tag = uuid.uuid4().hex[:8]
    topics = TopicSettings.namespaced(f"r{tag}")
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=1000),
        topics=topics,
        triton=TritonSettings(url=triton_url, timeout_s=20, retry_initial_s=0.2, retry_max_s=2.0),
        worker=WorkerSettings(
            product_group=f"r{tag}-product",
            query_group=f"r{tag}-query",
            name=f"rel-{tag}",
            **(_WORKER_DEFAULTS | worker),
        ),
    )


class WorkerProcess:
    """`python -m worker.cli run --path ...` in its own process group; kill -9 is a real kill -9."""

    def __init__(
        self,
        settings: Settings,
        path: str,
        log_dir: Path,
        name: str,
        metrics_port: int = 0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.metrics_port = metrics_port or free_port()
        self.env = worker_env(
            settings, QL_WORKER_NAME=name, QL_WORKER_METRICS_PORT=str(self.metrics_port), **(extra_env or {})
        )
        self.path = path
        self.log_path = log_dir / f"{name}.log"
        self.proc: ManagedProcess | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        args = [sys.executable, "-m", "worker.cli", "run", "--path", self.path]
        self.proc = ManagedProcess(f"worker-{self.name}", args, self.log_path, env=self.env)
        self.proc.start()
        self.starts += 1
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        if self.proc.popen is not None:
            self.proc.popen.wait(10)
        self.proc.stop()  # bookkeeping only: already dead

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.stop(timeout_s=40)
        return self.proc.popen.returncode if self.proc.popen else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        """The structured (JSON) lines of the log; kafka-python's own lines are skipped."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    out.append(orjson.loads(line))
        return out

    def count(self, event: str) -> int:
        return sum(1 for e in self.log_events() if e.get("event") == event)

    def probe(self, path: str) -> int | None:
        """HTTP status of one of the worker's probes (`/healthz`, `/readyz`), None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None

    def healthz(self) -> int | None:
        return self.probe("/healthz")


# --------------------------------------------------------------------------- waiting and reading


def wait_until(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> float:
    """Poll `check` until true; returns the seconds it took, raises `ScenarioFailed` on timeout."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise ScenarioFailed(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)
    return time.monotonic() - started


def read_all(
    settings: Settings, topic: str, timeout_s: float = 120.0, settle_s: float = 0.6
) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record of a topic, duplicates included; see `read_records`."""
    return [(r.key, r.value) for r in read_records(settings, topic, timeout_s, settle_s)]


def read_records(
    settings: Settings, topic: str, timeout_s: float = 120.0, settle_s: float = 0.6
) -> list[ConsumerRecord]:
    """Every record of a topic (duplicates included): up to its end offsets, then on until nothing
    has arrived for `settle_s`. Tansu's s3 engine under-reports end offsets, so the broker-restart
    scenario reads with a longer `settle_s` (and its settings' fetch wait, S3_FETCH_MAX_WAIT_MS)."""
    consumer = make_consumer(settings.kafka, None, max_poll_records=5000)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        last_record = time.monotonic()
        while True:
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"reading {topic} to its end took over {timeout_s:.0f}s")
            polled = consumer.poll(timeout_ms=200)
            for records in polled.values():
                out.extend(records)
            if polled:
                last_record = time.monotonic()
            elif time.monotonic() - last_record >= settle_s and all(
                consumer.position(tp) >= end[tp] for tp in tps
            ):
                return out
    finally:
        consumer.close(autocommit=False)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = make_consumer(settings.kafka, None)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close(autocommit=False)


def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets (admin OffsetFetch; `describe_groups` crashes on Tansu)."""
    tps = [TopicPartition(topic, p) for p in end_offsets(settings, topic)]
    admin = KafkaAdminClient(**settings.kafka.common_config())
    try:
        got = admin.list_group_offsets({group: tps}).get(group, {})
    finally:
        admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in got.items()
        if tp.topic == topic and meta.offset is not None and meta.offset >= 0
    }


def lag(settings: Settings, group: str, topic: str) -> int:
    ends = end_offsets(settings, topic)
    done = committed_offsets(settings, group, topic)
    return sum(max(0, end - done.get(p, 0)) for p, end in ends.items())


# --------------------------------------------------------------------------- input streams

_QUERY_WORDS = ("red", "blue", "black", "men", "women", "casual", "formal", "summer", "shirt", "watch")


def query_logs(product_ids: list[str], count: int, seed: int, prefix: str) -> list[QueryLog]:
    """Deterministic query logs, 1-3 impressions each, over products known to the state."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(minutes=2)
    out = []
    for n in range(count):
        shown = rng.sample(product_ids, rng.randint(1, 3))
        out.append(
            QueryLog(
                event_id=f"{prefix}-e{n}",
                event_time=start + timedelta(milliseconds=10 * n),
                query_id=f"{prefix}-q{n}",
                query=" ".join(rng.sample(_QUERY_WORDS, rng.randint(1, 3))),
                variant="A" if n % 2 == 0 else "B",
                impressions=[
                    Impression(product_id=pid, position=i, clicked=rng.random() < 0.2)
                    for i, pid in enumerate(shown, start=1)
                ],
            )
        )
    return out


def seed_state(settings: Settings, embeddings: Iterable[ProductEmbedding]) -> None:
    create_topics(settings)
    producer = make_producer(settings.kafka)
    try:
        for emb in embeddings:
            topic = settings.topics.embeddings_for(emb.model_version)
            producer.send(topic, key=emb.product_id.encode(), value=encode(emb))
        producer.flush(30)
    finally:
        producer.close(5)


class Stream:
    """Produces events at a steady rate on a background thread (acks=all), so faults hit a live flow."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        values: list[tuple[bytes | None, bytes]],
        rate_per_s: float,
        linger_ms: int = 20,
    ) -> None:
        self.settings = settings
        self.linger_ms = linger_ms
        self.topic = topic
        self.values = values
        self.rate = rate_per_s
        self.sent = 0
        self.resent = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"stream-{topic}", daemon=True)

    def start(self) -> Stream:
        self.thread.start()
        return self

    def _run(self) -> None:
        # an input producer: events up to the worker's limit (a poison stream sends some at the limit)
        producer: KafkaProducer = make_producer(
            self.settings.kafka, linger_ms=self.linger_ms, max_request_size=MAX_INPUT_RECORD_BYTES
        )
        failed: list[int] = []
        try:
            started = time.monotonic()
            for i in range(len(self.values)):
                ahead = i / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
                self._send(producer, i, failed)
                self.sent = i + 1
            producer.flush(120)
            # an upstream producer retries what the broker refused (e.g. while it was down); a send
            # whose ack was lost may land twice, which the accounting counts as an input duplicate
            for _round in range(3):
                if not failed:
                    break
                retry, failed = failed, []
                self.resent += len(retry)
                for i in retry:
                    self._send(producer, i, failed)
                producer.flush(120)
            if failed:
                raise ScenarioFailed(f"{len(failed)} input event(s) never acknowledged by the broker")
        except BaseException as exc:
            self.error = exc
        finally:
            producer.close(5)

    def _send(self, producer: KafkaProducer, i: int, failed: list[int]) -> None:
        key, value = self.values[i]
        future = producer.send(self.topic, key=key, value=value)
        future.add_errback(lambda _exc: failed.append(i))

    def done(self) -> bool:
        return not self.thread.is_alive()

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise ScenarioFailed(f"the input stream to {self.topic} did not finish in {timeout_s:.0f}s")
        if self.error is not None:
            raise ScenarioFailed(f"the input stream to {self.topic} failed: {self.error!r}")


def query_values(events: list[QueryLog]) -> list[tuple[bytes | None, bytes]]:
    return [(ev.query_id.encode(), encode(ev)) for ev in events]


# --------------------------------------------------------------------------- accounting


@dataclass
class Accounting:
    expected_keys: int
    lost_events: int
    lost_keys: int
    duplicated: int
    duplicated_identical: int
    max_diff: float
    not_scored: int
    ab_queries: int
    dlq: dict[str, int]
    lost_ids: list[str] = field(default_factory=list)  # query ids of the lost events (first 20)


def _score_values(record: QueryScores, s: ImpressionScore) -> tuple[Any, ...]:
    return (s.status, s.label, record.query_model_version, s.position, record.variant, record.event_id)


def impression_scores(
    settings: Settings, settle_s: float = 0.6
) -> dict[bytes, list[tuple[QueryScores, ImpressionScore]]]:
    """Every copy of every impression's score on `query-scores`, by `query_id:product_id`."""
    by_key: dict[bytes, list[tuple[QueryScores, ImpressionScore]]] = defaultdict(list)
    for _key, value in read_all(settings, settings.topics.query_scores, settle_s=settle_s):
        if value is not None:
            record = decode_event(QueryScores, value)
            for pid, imp in record.by_product().items():
                by_key[f"{record.query_id}:{pid}".encode()].append((record, imp))
    return by_key


def account(settings: Settings, events: list[QueryLog], settle_s: float = 0.6) -> Accounting:
    """Read every output record and compare with what every input should have produced."""
    by_key = impression_scores(settings, settle_s)
    lost_events = lost_keys = not_scored = 0
    lost_ids: list[str] = []
    expected = 0
    for ev in events:
        keys = [f"{ev.query_id}:{imp.product_id}".encode() for imp in ev.impressions]
        expected += len(keys)
        missing = [k for k in keys if k not in by_key]
        lost_keys += len(missing)
        lost_events += bool(missing)
        if missing and len(lost_ids) < 20:
            lost_ids.append(ev.query_id)
        not_scored += sum(1 for k in keys if k in by_key and by_key[k][-1][1].status != "scored")
    duplicated = identical = 0
    max_diff = 0.0
    for copies in by_key.values():
        if len(copies) < 2:
            continue
        duplicated += 1
        first = copies[0][1]
        diffs = [
            max(
                abs((c.score or 0.0) - (first.score or 0.0)),
                abs((c.similarity or 0.0) - (first.similarity or 0.0)),
            )
            for _, c in copies[1:]
        ]
        same = all(_score_values(*c) == _score_values(*copies[0]) for c in copies[1:])
        worst = max(diffs)
        max_diff = max(max_diff, worst)
        identical += same and worst <= SCORE_TOLERANCE
    partials = []
    for _key, value in read_all(settings, settings.topics.ab_units, settle_s=settle_s):
        with contextlib.suppress(EventError):
            partials.append(decode_event(ABMetricsV2, value))
    ab_queries = sum(r.searches for r in latest_records(partials))
    return Accounting(
        expected,
        lost_events,
        lost_keys,
        duplicated,
        identical,
        max_diff,
        not_scored,
        ab_queries,
        dlq_reasons(settings),
        lost_ids,
    )


def dlq_reasons(settings: Settings) -> dict[str, int]:
    """Dead letters per reason, one per input record (a replayed letter overwrites by coordinates)."""
    latest: dict[bytes, DeadLetter] = {}
    for key, value in read_all(settings, settings.topics.dead_letter):
        if key is not None and value is not None:
            latest[key] = decode_event(DeadLetter, value, max_bytes=64 << 20)
    return dict(sorted(Counter(d.reason for d in latest.values()).items()))


def fill(result: ScenarioResult, acc: Accounting, sent: int) -> None:
    result.events_sent = sent
    result.lost = acc.lost_events
    result.duplicated = acc.duplicated
    result.duplicated_identical = acc.duplicated_identical
    result.max_duplicate_diff = acc.max_diff
    result.dlq_by_reason = acc.dlq
    result.checks |= {
        "expected_scores": acc.expected_keys,
        "lost_scores": acc.lost_keys,
        "not_scored": acc.not_scored,
        "ab_queries_counted": acc.ab_queries,
    }


def verdict(
    result: ScenarioResult, acc: Accounting, sent: int, extra_ok: bool = True, inputs: int | None = None
) -> None:
    """PASS when nothing is lost, duplicates are identical and A/B counted every input record once
    (`inputs`: the records on the input topic, when an upstream retry wrote some of them twice)."""
    inputs = sent if inputs is None else inputs
    problems = []
    if acc.lost_events:
        problems.append(f"{acc.lost_events} event(s) lost")
    if acc.duplicated != acc.duplicated_identical:
        problems.append(f"{acc.duplicated - acc.duplicated_identical} duplicate(s) with different values")
    if acc.not_scored:
        problems.append(f"{acc.not_scored} output(s) not scored")
    if acc.ab_queries != inputs:
        problems.append(f"A/B counted {acc.ab_queries} queries for {inputs} input records")
    if acc.dlq:
        problems.append(f"unexpected dead letters {acc.dlq}")
    result.passed = not problems and extra_ok
    if problems:
        result.error = "; ".join(problems)


@contextlib.contextmanager
def timed(result: ScenarioResult, workers: Callable[[], list[WorkerProcess]]) -> Iterator[None]:
    """Time the scenario and monitor it (`reliability.monitor`: longest stall, health probe latency,
    both limits of a PASS); on failure keep the message and the tail of the workers' logs."""
    started = time.monotonic()
    monitor = Monitor(workers).__enter__()
    try:
        yield
    except Exception as exc:  # a failed scenario is a FAIL row, not the end of the run
        result.passed = False
        result.error = str(exc) if isinstance(exc, ScenarioFailed) else f"{type(exc).__name__}: {exc}"
        for w in workers():
            result.notes.append(f"log {w.log_path}: ...{w.log()[-600:]}")
    finally:
        monitor.__exit__()
        for w in workers():
            with contextlib.suppress(Exception):
                w.stop()
        result.seconds = round(time.monotonic() - started, 1)
        judge(result, monitor.figures)


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is: `quick` for CI, `full` for `python -m reliability`."""

    kill_events: int
    kills: int
    triton_events: int
    group_events: int
    broker_events: int
    rate: float
    # the broker-restart scenario runs on Tansu's s3 engine, whose fetches slow down as objects pile up
    restart_events: int = 0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            kill_events=800,
            kills=3,
            triton_events=400,
            group_events=400,
            broker_events=200,
            rate=150,
            restart_events=200,
        )

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            kill_events=4000,
            kills=4,
            triton_events=1500,
            group_events=1500,
            broker_events=600,
            rate=200,
            restart_events=400,
        )


def seeded_query_logs(stack: Stack, settings: Settings, count: int, seed: int, prefix: str) -> list[QueryLog]:
    """Write the stack's product embeddings to the scenario's state topic; query logs over those products."""
    embeddings = stack.embeddings()
    seed_state(settings, embeddings)
    return query_logs([e.product_id for e in embeddings], count, seed, prefix)


# seconds from a kill -9 to the restarted worker's first commit: Tansu holds the group's rebalance until
# the killed member's session expires (measured 14-15 s from start to assignment, then the first batch)
RESTART_COST_S = 20.0


def _progress(settings: Settings, group: str) -> int:
    return sum(committed_offsets(settings, group, settings.topics.query_logs).values())


def scenario_worker_kill(stack: Stack, sizes: Sizes, seed: int = 1) -> ScenarioResult:
    """kill -9 the query worker `kills` times while a stream flows; restart it each time."""
    result = ScenarioResult("worker kill -9 mid-stream")
    settings = fresh_settings(stack.broker.bootstrap, stack.triton.grpc_url)
    w = WorkerProcess(settings, "query", stack.log_dir, f"kill-{settings.worker.name}")
    with timed(result, lambda: [w]):
        events = seeded_query_logs(stack, settings, sizes.kill_events, seed, f"k{seed}")
        w.start()
        # the stream must outlast the kills, or the worker catches up and there is nothing left to kill
        # it in the middle of: pace it by what a restart costs on this broker
        rate = min(sizes.rate, len(events) / (sizes.kills * RESTART_COST_S))
        stream = Stream(settings, settings.topics.query_logs, query_values(events), rate).start()
        group = settings.worker.query_group
        in_flight_at_kill = []
        for i in range(sizes.kills):
            # kill once this process has committed something of its own and there is a backlog, so the
            # kill lands while it works (between poll, Triton, produce and commit), not during startup
            target = (i + 1) * len(events) // (sizes.kills + 2)
            at_start = _progress(settings, group)

            def ready(t: int = target, s: int = at_start) -> bool:
                # once the stream has ended, a caught-up worker has no backlog left to be killed in;
                # it is killed idle then (counted as 0 uncommitted) instead of waited on forever
                p = _progress(settings, group)
                return p >= t and p > s and (stream.sent > p or stream.sent == len(events))

            wait_until(
                f"progress before kill {i + 1}",
                ready,
                180,
                every_s=0.2,
            )
            time.sleep(random.Random(seed + i).uniform(0.0, 0.3))  # land inside a batch, not on a boundary
            in_flight_at_kill.append(stream.sent - _progress(settings, group))
            w.kill9()
            result.restarts_survived += 1
            w.start()
        stream.join(300)
        wait_until("lag 0", lambda: lag(settings, group, settings.topics.query_logs) == 0, 300)
        time.sleep(1.0)
        acc = account(settings, events)
        fill(result, acc, len(events))
        result.checks["uncommitted_at_each_kill"] = in_flight_at_kill
        result.checks["stream_rate_per_s"] = round(rate, 1)
        verdict(result, acc, len(events), extra_ok=w.alive())
    return result


def scenario_triton_kill(stack: Stack, sizes: Sizes, seed: int = 2) -> ScenarioResult:
    """SIGKILL Triton mid-stream, restart it on the same ports; commits must freeze while it is down."""
    result = ScenarioResult("Triton kill -9 + restart")
    settings = fresh_settings(stack.broker.bootstrap, stack.triton.grpc_url)
    w = WorkerProcess(settings, "query", stack.log_dir, f"triton-{settings.worker.name}")
    with timed(result, lambda: [w]):
        events = seeded_query_logs(stack, settings, sizes.triton_events, seed, f"t{seed}")
        w.start()
        group, topic = settings.worker.query_group, settings.topics.query_logs
        stream = Stream(settings, topic, query_values(events), sizes.rate).start()
        wait_until(
            "progress before the Triton kill", lambda: _progress(settings, group) >= len(events) // 4, 180
        )
        before = w.count("triton_unavailable")
        assert stack.triton.process is not None
        stack.triton.process.signal(signal.SIGKILL)
        if stack.triton.process.popen is not None:
            stack.triton.process.popen.wait(10)
        killed_at = time.monotonic()
        wait_until("the worker to notice", lambda: w.count("triton_unavailable") > before, 60)
        frozen = committed_offsets(settings, group, topic)
        snapshots_equal = True
        # restart on the same ports (it takes a while: the python stubs import torch); commits stay put
        restart = threading.Thread(target=stack.triton.start, daemon=True)
        time.sleep(3.0)
        lag_while_down = lag(settings, group, topic)
        snapshots_equal &= committed_offsets(settings, group, topic) == frozen
        restart.start()
        while restart.is_alive():
            if committed_offsets(settings, group, topic) != frozen:
                snapshots_equal = False
            restart.join(1.0)
        down_s = time.monotonic() - killed_at
        if not stack.triton._ready():
            raise ScenarioFailed("Triton did not come back on the same ports")
        resumed = wait_until(
            "commits to resume", lambda: committed_offsets(settings, group, topic) != frozen, 180
        )
        stream.join(300)
        wait_until("lag 0", lambda: lag(settings, group, topic) == 0, 300)
        time.sleep(1.0)
        acc = account(settings, events)
        fill(result, acc, len(events))
        result.restarts_survived = 1
        result.checks |= {
            "triton_down_s": round(down_s, 1),
            "lag_while_down": lag_while_down,
            "commits_frozen_while_down": snapshots_equal,
            "resumed_after_ready_s": round(resumed, 1),
            "triton_unavailable_logs": w.count("triton_unavailable") - before,
            "worker_pid_unchanged": w.starts == 1 and w.alive(),
        }
        verdict(result, acc, len(events), extra_ok=snapshots_equal and lag_while_down > 0 and w.alive())
    return result


def scenario_group_member_kill(stack: Stack, sizes: Sizes, seed: int = 3) -> ScenarioResult:
    """Two query workers in one group; one is killed -9; the survivor takes its partitions over."""
    result = ScenarioResult("2 workers, 1 killed (rebalance)")
    settings = fresh_settings(stack.broker.bootstrap, stack.triton.grpc_url)
    a = WorkerProcess(settings, "query", stack.log_dir, f"grpA-{settings.worker.name}")
    b = WorkerProcess(settings, "query", stack.log_dir, f"grpB-{settings.worker.name}")
    with timed(result, lambda: [a, b]):
        events = seeded_query_logs(stack, settings, sizes.group_events, seed, f"g{seed}")
        a.start()
        b.start()
        group, topic = settings.worker.query_group, settings.topics.query_logs

        def split() -> bool:  # both members own partitions (the last assignment each logged)
            owned = [_last_assignment(x) for x in (a, b)]
            return all(owned) and not (owned[0] & owned[1])

        wait_until("both workers to own partitions", split, 120)
        stream = Stream(settings, topic, query_values(events), sizes.rate).start()
        wait_until("progress before the kill", lambda: _progress(settings, group) >= len(events) // 3, 180)
        victim_parts = _last_assignment(b)
        b.kill9()
        taken = wait_until(
            "survivor to take the partitions over", lambda: victim_parts <= _last_assignment(a), 60
        )
        stream.join(300)
        wait_until("lag 0", lambda: lag(settings, group, topic) == 0, 300)
        time.sleep(1.0)
        acc = account(settings, events)
        fill(result, acc, len(events))
        result.restarts_survived = 1
        result.checks |= {
            "victim_partitions": sorted(victim_parts),
            "takeover_s": round(taken, 1),
            "survivor_partitions": sorted(_last_assignment(a)),
        }
        verdict(result, acc, len(events), extra_ok=a.alive())
    return result


def _last_assignment(w: WorkerProcess) -> set[str]:
    last: set[str] = set()
    for e in w.log_events():
        if e.get("event") == "partitions_assigned":
            last = set(e.get("partitions", []))
        elif e.get("event") == "partitions_revoked":
            last -= set(e.get("partitions", []))
    return last


def scenario_broker_late(stack: Stack, sizes: Sizes, seed: int = 4) -> ScenarioResult:
    """The worker starts before any broker exists on its port; the broker comes up 10 s later."""
    result = ScenarioResult("broker absent at start")
    port = free_port()
    settings = fresh_settings(f"127.0.0.1:{port}", stack.triton.grpc_url)
    settings.kafka.request_timeout_ms = 10_000  # a shorter bootstrap timeout: more retries per minute
    w = WorkerProcess(settings, "query", stack.log_dir, f"late-{settings.worker.name}")
    broker = LocalBroker(port=port, log_dir=stack.log_dir / f"broker-{port}")
    with timed(result, lambda: [w]):
        w.start()
        wait_until("a clear 'dependency_unavailable' log", lambda: w.count("dependency_unavailable") >= 1, 90)
        retries_before_broker = w.count("dependency_unavailable")
        alive_without_broker = w.alive()
        broker.start()
        events = seeded_query_logs(stack, settings, sizes.broker_events, seed, f"b{seed}")
        stream = Stream(settings, settings.topics.query_logs, query_values(events), sizes.rate).start()
        stream.join(300)
        group = settings.worker.query_group
        wait_until("lag 0", lambda: lag(settings, group, settings.topics.query_logs) == 0, 240)
        acc = account(settings, events)
        fill(result, acc, len(events))
        result.restarts_survived = 1
        result.checks |= {
            "retries_logged_before_broker": retries_before_broker,
            "alive_without_broker": alive_without_broker,
            "process_starts": w.starts,
        }
        verdict(result, acc, len(events), extra_ok=alive_without_broker and w.alive() and w.starts == 1)
    broker.stop()
    return result


def scenario_broker_restart(stack: Stack, sizes: Sizes, seed: int = 5) -> ScenarioResult:
    """kill -9 the broker mid-stream and start it again on the same port and the same storage (a local
    S3 server plays the broker's disk, as a real Kafka's log dir outlives its process). The worker must
    log the outage, retry without crash-looping, and resume from its committed offsets in the same
    process; every event sent before, during and after the outage is accounted for."""
    result = ScenarioResult("broker kill -9 + restart")
    port = free_port()
    store = LocalObjectStore(log_dir=stack.log_dir / f"s3-{port}").start()
    broker = LocalBroker(port=port, log_dir=stack.log_dir / f"broker-{port}", store=store).start()
    settings = fresh_settings(broker.bootstrap, stack.triton.grpc_url)
    settings.kafka.request_timeout_ms = 10_000
    # the worker's and the readers' fetches: Tansu's s3 engine stops listing a partition's objects when
    # the fetch's max wait runs out, so a 20 ms wait against a slower LIST sees no batch past the first
    settings.kafka.fetch_max_wait_ms = S3_FETCH_MAX_WAIT_MS
    w = WorkerProcess(settings, "query", stack.log_dir, f"brk-{settings.worker.name}")
    with timed(result, lambda: [w]):
        events = seeded_query_logs(stack, settings, sizes.restart_events, seed, f"x{seed}")
        w.start()
        group, topic = settings.worker.query_group, settings.topics.query_logs
        # slow enough that the stream is still flowing when the broker comes back; larger batches,
        # because Tansu's s3 engine stores one object per batch and lists them on every fetch
        rate = min(sizes.rate, len(events) / 30.0)
        stream = Stream(settings, topic, query_values(events), rate, linger_ms=250).start()
        wait_until("progress before the kill", lambda: _progress(settings, group) >= len(events) // 4, 180)
        committed_before = _progress(settings, group)
        assert broker.process is not None
        broker.process.signal(signal.SIGKILL)
        broker.stop()
        killed_at = time.monotonic()
        time.sleep(10.0)
        down_logs = _warning_lines(w)
        alive_while_down = w.alive()
        broker = LocalBroker(port=port, log_dir=stack.log_dir / f"broker-{port}-2", store=store).start()
        down_s = time.monotonic() - killed_at
        resumed = wait_until(
            "commits to resume after the restart",
            lambda: _progress(settings, group) > committed_before,
            120,
        )
        stream.join(300)
        # count the input records by reading them: Tansu's s3 engine reports a partition's end offset
        # as the base offset of its last batch + 1, so `lag` (end - committed) reads 0 too early
        input_records = read_records(settings, topic, settle_s=S3_SETTLE_S)
        inputs = len(input_records)
        wait_until("every input record committed", lambda: _progress(settings, group) >= inputs, 180)
        time.sleep(1.0)
        # the worker is judged on what reached its input topic; an acknowledged input the broker
        # cannot serve after its restart is counted and reported on its own, as the broker's loss
        on_topic = {r.key.decode() for r in input_records if r.key is not None}
        upstream_lost = [e.query_id for e in events if e.query_id not in on_topic]
        acc = account(settings, [e for e in events if e.query_id in on_topic], settle_s=S3_SETTLE_S)
        fill(result, acc, len(events))
        result.notes += _where_lost(acc.lost_ids, input_records, committed_offsets(settings, group, topic))
        result.checks["acked_inputs_the_broker_lost"] = len(upstream_lost)
        if upstream_lost:
            result.notes.append(
                f"{len(upstream_lost)} input event(s) ({', '.join(upstream_lost[:5])}) were acknowledged to "
                "the producer around the kill but are not readable on the restarted broker (Tansu's s3 "
                "engine), so the worker never saw them; they are excluded from the worker's count"
            )
        offsets: dict[int, set[int]] = defaultdict(set)
        for r in input_records:
            offsets[r.partition].add(r.offset)
        result.checks["input_offset_gaps"] = {
            str(p): max(o) + 1 - min(o) - len(o) for p, o in sorted(offsets.items()) if o
        }
        result.restarts_survived = 1
        result.checks |= {
            "broker_down_s": round(down_s, 1),
            "committed_before_kill": committed_before,
            "resumed_after_restart_s": round(resumed, 1),
            "warnings_while_down": down_logs,
            "alive_while_down": alive_while_down,
            "process_starts": w.starts,
            "producer_recreated_logs": w.count("producer_recreated"),
            "input_resent_by_producer": stream.resent,
            "input_records_on_topic": inputs,
        }
        if inputs > len(events):
            result.notes.append(
                f"{inputs - len(events)} input event(s) were written twice by the upstream producer's "
                "retry (ack lost in the crash); the worker scored both copies under the same keys and "
                "A/B counts each input record once"
            )
        verdict(
            result,
            acc,
            len(events),
            extra_ok=alive_while_down and w.alive() and w.starts == 1,
            inputs=inputs,
        )
    broker.stop()
    store.stop()
    return result


def _where_lost(
    lost_ids: list[str], input_records: list[ConsumerRecord], committed: dict[int, int]
) -> list[str]:
    """Where each event the worker lost sits on its input topic, against the group's commits."""
    at = {r.key.decode(): (r.partition, r.offset) for r in input_records if r.key is not None}
    notes = []
    for qid in lost_ids:
        part, offset = at[qid]
        notes.append(
            f"lost {qid}: on the input topic at partition {part} offset {offset}, group committed "
            f"{committed.get(part)}: the worker did not produce its outputs"
        )
    return notes


def _warning_lines(w: WorkerProcess) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for e in w.log_events():
        if e.get("level") in ("warning", "error"):
            counts[str(e.get("event"))] += 1
    for line in w.log().splitlines():
        if not line.startswith("{") and ("Error" in line or "error" in line):
            counts["kafka-python error lines"] += 1
    return dict(counts)


ALL_FAULTS: dict[str, Callable[[Stack, Sizes], ScenarioResult]] = {
    "worker_kill": scenario_worker_kill,
    "triton_kill": scenario_triton_kill,
    "group_member_kill": scenario_group_member_kill,
    "broker_late": scenario_broker_late,
    "broker_restart": scenario_broker_restart,
}
