"""Structured logs and Prometheus metrics, plus `/healthz` (liveness) and `/readyz` (readiness) on the
metrics port."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

import structlog
from kafka.structs import TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

EVENTS_IN = Counter("querylife_events_in_total", "Records consumed", ["topic"])
EVENTS_OUT = Counter("querylife_events_out_total", "Records produced and acknowledged", ["topic"])
DEAD_LETTERS = Counter(
    "querylife_dead_letters_total", "Inputs sent to the dead-letter topic", ["topic", "reason"]
)
BATCH_SIZE = Histogram(
    "querylife_batch_size",
    "Records per processed batch",
    ["path"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
TRITON_LATENCY = Histogram(
    "querylife_triton_latency_seconds",
    "Triton round trip",
    ["call"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
E2E_LATENCY = Histogram(
    "querylife_end_to_end_latency_seconds",
    "Output ack time minus input record time",
    ["path"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_LAG = Gauge("querylife_consumer_lag", "High watermark minus position", ["topic", "partition"])
TRITON_RETRIES = Counter("querylife_triton_retries_total", "Batches retried because Triton was unavailable")
ISOLATIONS = Counter(
    "querylife_triton_isolations_total",
    "Failed Triton batches bisected (outcome: poison found, none found, Triton unhealthy: backed off)",
    ["outcome"],
)
UNKNOWN_PRODUCTS = Counter("querylife_unknown_products_total", "Impressions whose product had no embedding")
STATE_PRODUCTS = Gauge("querylife_state_products", "Product embeddings held by a query worker")
UNKNOWN_INPUT_FIELDS = Counter(
    "querylife_unknown_input_fields_total",
    "Input fields this schema version does not define: accepted and ignored (label set capped)",
    ["topic", "field"],
)
STATE_BYTES = Gauge("querylife_state_bytes", "Vector storage of the embedding state", ["model_version"])
STATE_LOAD_PROGRESS = Gauge(
    "querylife_state_load_progress", "Share of the embeddings topic's end offsets read at start (0-1)"
)
STATE_RECORDS_LOADED = Counter(
    "querylife_state_records_applied_total", "Embedding-state records applied (load and follow)"
)
STATE_SNAPSHOTS = Counter(
    "querylife_state_snapshots_total",
    "State snapshots written, restored or discarded (by reason)",
    ["outcome"],
)
STATE_REJECTED = Counter(
    "querylife_state_records_rejected_total",
    "Embedding-state records a query worker ignored (no key, undecodable, wrong embedding width)",
    ["reason"],
)
MODEL_INFO = Gauge(
    "querylife_model_info",
    "1 per Query-LIFE version this worker uses (role: serving or shadow), with its Triton version directory",
    ["role", "model_version", "triton_version"],
)
QUERY_CACHE = Counter(
    "querylife_query_cache_total",
    "Query embeddings found in the query cache (hit) or encoded (miss)",
    ["outcome"],
)
SHADOW_QUERY_LOGS = Counter(
    "querylife_shadow_query_logs_total", "Sampled query logs scored by a rollout's candidate too", ["outcome"]
)


def forget_lag(partitions: Iterable[TopicPartition]) -> None:
    """Drop the lag of partitions given away: their last value would stay exported beside the new
    owner's, and a dashboard summing the lag over workers would count the backlog twice."""
    for tp in partitions:
        with contextlib.suppress(KeyError):  # never reported (revoked before the first batch)
            CONSUMER_LAG.remove(tp.topic, str(tp.partition))


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Fields every line carries, whether it came from structlog or from a stdlib logger (kafka-python).
_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class _JsonHandler(logging.StreamHandler[TextIO]):
    """The one stderr handler `configure_logging` installs (found again, and replaced, by its type).

    It writes to `sys.stderr` as it is when a record comes, not as it was at start: a test runner
    swaps stderr and closes its copy, and kafka-python's threads still log after that.
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        return None


def configure_logging(level: str = "INFO") -> None:
    """Every line on stderr as one JSON object: structlog's events with their ids as fields, and the
    stdlib loggers' records (kafka-python's included) through structlog's `ProcessorFormatter`."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = _JsonHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)  # other handlers (pytest's capture) stay
    root.setLevel(level)
    # kafka-python logs whole client configs at DEBUG, the SASL password in clear text included
    # (KafkaAdminClient.__init__: "Starting KafkaAdminClient with configuration: ..."), so its loggers
    # stay at INFO or above whatever the root level.
    logging.getLogger("kafka").setLevel(max(logging.INFO, logging.getLevelName(level)))
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


def add_cli_flags(parser: argparse.ArgumentParser, dist: str = "querylife") -> None:
    """`--version` and `--log-level`, the flags every CLI of the repository shares."""
    version = importlib.metadata.version(dist)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="INFO",
        help="lowest level of the JSON log lines on stderr (kafka-python's stay at INFO or above)",
    )


class Liveness:
    """Liveness and readiness of one worker process.

    Alive (`/healthz`): something beat within `max_silence_s`. The consumer loops beat on every poll,
    and so does a path still waiting at start for Triton, Kafka or its topics: waiting is not being
    stuck, and a restart would not help. Ready (`/readyz`): every path's consumer loop is running.
    """

    def __init__(self, max_silence_s: float = 60.0, paths: Iterable[str] = ()) -> None:
        self.max_silence_s = max_silence_s
        self._last = time.monotonic()
        self._starting = set(paths)

    def beat(self) -> None:
        self._last = time.monotonic()

    def healthy(self) -> bool:
        return time.monotonic() - self._last < self.max_silence_s

    def running(self, path: str) -> None:
        """A path's consumer loop has started: its dependencies answered and its state is loaded."""
        self._starting.discard(path)

    def ready(self) -> bool:
        return not self._starting


def serve_metrics(host: str, port: int, liveness: Liveness) -> ThreadingHTTPServer:
    """Serve `/metrics`, `/healthz` and `/readyz` on a daemon thread; port 0 picks a free one."""
    probes = {
        "/healthz": (liveness.healthy, b"ok\n", b"stalled\n"),
        "/readyz": (liveness.ready, b"ready\n", b"starting\n"),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            probe = probes.get(self.path.split("?")[0])
            if probe is not None:
                check, yes, no = probe
                ok = check()
                body, status, ctype = (yes if ok else no), (200 if ok else 503), "text/plain"
            elif self.path.startswith("/metrics"):
                body, status, ctype = generate_latest(), 200, CONTENT_TYPE_LATEST
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: scrapes are not news
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
