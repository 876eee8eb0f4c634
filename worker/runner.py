"""Process wiring: clients, one consumer loop per path, signals, the health process and metrics server.

Scale-out is Kafka's: start more processes with the same group ids. SIGTERM/SIGINT set a stop flag;
each loop finishes (drains) its in-flight batch, commits, and closes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from worker.backoff import FIRST_RETRY_S, Backoff
from worker.config import Settings
from worker.consumer_loop import ConsumerLoop
from worker.dependency import DependencyUnavailable
from worker.embedding_state import EmbeddingState
from worker.health import HealthServer, SharedLiveness
from worker.kafka_io import TopicsMissing, make_consumer, make_producer, require_topics
from worker.observability import MODEL_INFO, Liveness, configure_logging
from worker.product_path import ProductProcessor
from worker.query_path import QueryProcessor
from worker.request_path import RequestProcessor
from worker.shadow import ShadowScorer
from worker.triton_client import RelevanceClient, TritonUnavailable

log = structlog.get_logger()
T = TypeVar("T")
Path_ = Literal["product", "query", "request"]


def retry_until(
    what: str,
    make: Callable[[], T],
    stop: threading.Event,
    max_delay_s: float,
    liveness: Liveness | None = None,
) -> T | None:
    """Retry `make` with capped exponential backoff until it works or `stop` is set (no crash loop).

    Returns what `make` returned, or None once stopped (so `make` must not return None itself).

    Each failure is a `dependency_unavailable` warning (with `topics` when topics are missing); the
    wait beats `liveness`: a worker waiting for a dependency is alive, only not ready.
    """
    backoff = Backoff(FIRST_RETRY_S, max_delay_s)
    while not stop.is_set():
        if liveness is not None:
            liveness.beat()
        try:
            return make()
        except (KafkaError, DependencyUnavailable, TimeoutError, OSError) as exc:
            delay = backoff.next()
            detail = {"topics": exc.topics} if isinstance(exc, TopicsMissing) else {}
            log.warning(
                "dependency_unavailable",
                what=what,
                error=f"{type(exc).__name__}: {exc}"[:200],
                retry_in_s=delay,
                **detail,
            )
            if liveness is not None:
                liveness.beat()
            stop.wait(delay)
    return None


def _ready_client(client: RelevanceClient, role: str) -> RelevanceClient:
    """`client` once its version's ensembles are ready (named in the error while they are not)."""
    if not client.is_ready():
        models = client.ensembles(client.version) if client.version else "any Query-LIFE version"
        raise TritonUnavailable(f"Triton at {client.settings.url} does not serve {models} yet")
    client.model_version()
    info = client.model_info()
    MODEL_INFO.labels(role, info["model_version"], info["triton_version"]).set(1)
    return client


def _loaded_state(settings: Settings, client: RelevanceClient, liveness: Liveness) -> EmbeddingState:
    """The embedding state of the client's version, read to the end of its topic."""
    state = EmbeddingState(settings, client.embedding_dim(), client.model_version())
    try:
        state.load(beat=liveness.beat)
    except BaseException:
        state.close()  # retried: leave no consumer behind
        raise
    return state


def _needed_topics(path: Path_, settings: Settings, version: str) -> tuple[str, str, set[str]]:
    """(consumer group, input topic, every topic the path uses) of one path serving `version`."""
    topics, worker = settings.topics, settings.worker
    needed = {topics.embeddings_for(version), topics.dead_letter}
    if path == "product":  # a group per version: during a rollout each version sees every upsert
        return worker.product_group_of(version), topics.product_upserts, {topics.product_upserts, *needed}
    needed.add(topics.relevance_table)
    if path == "request":
        return (
            worker.request_group,
            topics.score_requests,
            {topics.score_requests, topics.score_replies, *needed},
        )
    needed |= {topics.query_logs, topics.ab_units, topics.query_scores}
    if worker.shadow_model_version:
        needed |= {topics.shadow_scores, topics.embeddings_for(worker.shadow_model_version)}
    return worker.query_group, topics.query_logs, needed


def build_loop(
    path: Path_, settings: Settings, stop: threading.Event, liveness: Liveness
) -> ConsumerLoop | None:
    """Reach every dependency of a path (waiting as long as it takes, or until `stop`), then its loop."""
    client = RelevanceClient(settings.triton, settings.worker.model_version)

    def retry(what: str, make: Callable[[], T]) -> T | None:
        return retry_until(what, make, stop, settings.worker.startup_retry_max_s, liveness)

    if retry("triton", lambda: _ready_client(client, "serving")) is None:
        return None
    producer = retry("kafka producer", lambda: make_producer(settings.kafka))
    if producer is None:
        return None
    group, topic, needed = _needed_topics(path, settings, client.model_version())
    # Topics are never auto-created (compose disables it): a path waits until topic-init made all it uses.
    if retry("topics", lambda: require_topics(settings.kafka, needed)) is None:
        return None
    processor = _processor(path, settings, client, liveness, retry)
    if processor is None:
        return None
    consumer = retry(f"kafka consumer ({group})", lambda: make_consumer(settings.kafka, group))
    if consumer is None:
        return None
    if path == "request":  # a ranker is waiting: poll with a short wait rather than fill batches
        worker = settings.worker.model_copy(
            update={"batch_max_wait_ms": settings.worker.request_batch_max_wait_ms}
        )
        settings = settings.model_copy(update={"worker": worker})
    return ConsumerLoop(settings, topic, group, processor, consumer, producer, liveness)


def _processor(
    path: Path_,
    settings: Settings,
    client: RelevanceClient,
    liveness: Liveness,
    retry: Callable[[str, Callable[[], Any]], Any],
) -> ProductProcessor | QueryProcessor | RequestProcessor | None:
    """The path's processor, with the embedding state (and a shadow version) it needs; None if stopped."""
    if path == "product":
        return ProductProcessor(settings, client)
    state = retry("embedding state", lambda: _loaded_state(settings, client, liveness))
    if state is None:
        return None
    if path == "request":
        return RequestProcessor(settings, client, state)
    shadow = None
    if settings.worker.shadow_model_version:
        shadow = retry("shadow version", lambda: _shadow_scorer(settings, client, liveness))
        if shadow is None:
            return None
    return QueryProcessor(settings, client, state, shadow)


def _shadow_scorer(settings: Settings, serving: RelevanceClient, liveness: Liveness) -> ShadowScorer:
    """The rollout's candidate: its own client and embedding state, scoring a sample in shadow."""
    worker = settings.worker
    assert worker.shadow_model_version is not None
    candidate = _ready_client(serving.for_version(worker.shadow_model_version), "shadow")
    state = _loaded_state(settings, candidate, liveness)
    topic = settings.topics.shadow_scores
    return ShadowScorer(candidate, state, serving.model_version(), worker.shadow_sample, topic)


def _run_path(
    path: Path_, settings: Settings, stop: threading.Event, liveness: Liveness, errors: list[BaseException]
) -> None:
    try:
        loop = build_loop(path, settings, stop, liveness)
        if loop is not None:
            loop.run(stop)  # closes its consumer and producer
    except BaseException as exc:  # surfaced by run_worker; the other path is stopped too
        log.exception("path_crashed", path=path)
        errors.append(exc)
        stop.set()


def run_worker(
    settings: Settings,
    paths: list[Path_],
    stop: threading.Event | None = None,
    install_signals: bool = True,
    log_level: str = "INFO",
) -> int:
    """Run the given paths until stopped; returns a process exit code."""
    configure_logging(log_level)
    stop = stop or threading.Event()
    liveness = SharedLiveness(paths=paths)  # probes served by a process of their own: worker/health.py
    server = HealthServer(settings.worker.metrics_host, settings.worker.metrics_port, liveness)
    log.info(
        "worker_starting",
        paths=paths,
        name=settings.worker.name,
        metrics=f"http://{settings.worker.metrics_host}:{server.server_port}/metrics",
        kafka=settings.kafka.bootstrap_servers,
        triton=settings.triton.url,
    )
    for warning in settings.kafka.security_warnings():
        log.warning("insecure_kafka_settings", detail=warning)
    if install_signals:

        def on_signal(signum: int, _frame: object) -> None:
            log.info("stop_requested", signal=signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_run_path, args=(p, settings, stop, liveness, errors), name=p) for p in paths
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.2)
    server.shutdown()
    log.info("worker_stopped", errors=len(errors))
    return 1 if errors else 0


# kafka-python types, re-exported for the tests that build loops by hand
__all__ = ["KafkaConsumer", "KafkaProducer", "build_loop", "retry_until", "run_worker"]
