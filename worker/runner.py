"""Process wiring: clients, one consumer loop per path, signals, metrics server.

Scale-out is Kafka's: start more processes with the same group ids. SIGTERM/SIGINT set a stop flag;
each loop finishes (drains) its in-flight batch, commits, and closes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from worker.config import Settings
from worker.consumer_loop import ConsumerLoop
from worker.kafka_io import make_consumer, make_producer
from worker.observability import Liveness, configure_logging, serve_metrics
from worker.product_path import ProductProcessor
from worker.query_path import EmbeddingState, QueryProcessor
from worker.triton_client import RelevanceClient, TritonUnavailable

log = structlog.get_logger()
T = TypeVar("T")
Path_ = Literal["product", "query"]


def retry_until(
    what: str, make: Callable[[], T], stop: threading.Event, max_delay_s: float = 10.0
) -> T | None:
    """Retry `make` with capped exponential backoff until it works or `stop` is set (no crash loop)."""
    delay = 0.5
    while not stop.is_set():
        try:
            return make()
        except (KafkaError, TritonUnavailable, TimeoutError, OSError) as exc:
            log.warning(
                "dependency_unavailable",
                what=what,
                error=f"{type(exc).__name__}: {exc}"[:200],
                retry_in_s=delay,
            )
            stop.wait(delay)
            delay = min(delay * 2, max_delay_s)
    return None


def build_loop(
    path: Path_, settings: Settings, stop: threading.Event, liveness: Liveness
) -> ConsumerLoop | None:
    client = RelevanceClient(settings.triton)

    def ready_client() -> RelevanceClient:
        if not client.is_ready():
            raise TritonUnavailable(f"Triton at {settings.triton.url} is not ready")
        client.model_version()
        return client

    if retry_until("triton", ready_client, stop) is None:
        return None
    producer = retry_until("kafka producer", lambda: make_producer(settings.kafka), stop)
    if producer is None:
        return None
    if path == "product":
        group, topic = settings.worker.product_group, settings.topics.product_upserts
        processor: ProductProcessor | QueryProcessor = ProductProcessor(settings, client)
    else:
        group, topic = settings.worker.query_group, settings.topics.query_logs

        def loaded_state() -> EmbeddingState:
            state = EmbeddingState(settings)
            state.load()
            return state

        state = retry_until("embedding state", loaded_state, stop)
        if state is None:
            return None
        processor = QueryProcessor(settings, client, state)
    consumer = retry_until(f"kafka consumer ({group})", lambda: make_consumer(settings.kafka, group), stop)
    if consumer is None:
        return None
    return ConsumerLoop(settings, topic, group, processor, consumer, producer, liveness)


def _run_path(
    path: Path_, settings: Settings, stop: threading.Event, liveness: Liveness, errors: list[BaseException]
) -> None:
    try:
        loop = build_loop(path, settings, stop, liveness)
        if loop is not None:
            loop.run(stop)
            loop.producer.close(timeout=10)
    except BaseException as exc:  # surfaced by run_worker; the other path is stopped too
        log.exception("path_crashed", path=path)
        errors.append(exc)
        stop.set()


def run_worker(
    settings: Settings, paths: list[Path_], stop: threading.Event | None = None, install_signals: bool = True
) -> int:
    """Run the given paths until stopped; returns a process exit code."""
    configure_logging()
    stop = stop or threading.Event()
    liveness = Liveness()
    server = serve_metrics(settings.worker.metrics_host, settings.worker.metrics_port, liveness)
    log.info(
        "worker_starting",
        paths=paths,
        name=settings.worker.name,
        metrics=f"http://{settings.worker.metrics_host}:{server.server_port}/metrics",
        kafka=settings.kafka.bootstrap_servers,
        triton=settings.triton.url,
    )
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
