"""`/healthz` and `/readyz` answer within 1 s whatever the worker does (worker/health.py).

Why they did not: the probes were served by a thread of the worker's interpreter, and every step of
a request needs the GIL, which busy threads hold in turn, and a C call holds for its whole length.
The first test shows the mechanism with one long C call; the last one probes a real worker process
while it embeds large images and scores query logs of 200 impressions on the real broker and Triton."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from PIL import Image

from harness.local_services import LocalBroker, LocalTriton
from reliability.faults import Stack, WorkerProcess, fresh_settings, lag, seed_state, wait_until
from reliability.hostile import valid_product
from reliability.monitor import consumed
from schemas import Impression, QueryLog, encode
from worker.health import HealthServer, SharedLiveness
from worker.kafka_io import make_producer
from worker.observability import Liveness, serve_metrics


def _get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes, float]:
    """Status, body and seconds of one GET (an HTTP error status is an answer too)."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return int(r.status), r.read(), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(), time.monotonic() - started


def _hold_the_gil(length: int = 25) -> None:
    """One C call that never releases the GIL: catastrophic backtracking in `re` (~1-4 s here)."""
    re.match(r"(a+)+$", "a" * length + "b")


_PROBER = """
import sys, time, urllib.request
time.sleep(0.3)  # the C call runs by now
for port in sys.argv[1:]:
    started = time.monotonic()
    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30).read()
    print(time.monotonic() - started, flush=True)
"""


def test_a_long_c_call_blocks_in_process_probes_not_the_health_process() -> None:
    """Probed from another process, as an orchestrator does, while this one runs one long C call."""
    in_process = serve_metrics("127.0.0.1", 0, Liveness())
    server = HealthServer("127.0.0.1", 0, SharedLiveness())
    try:
        ports = [str(server.server_port), str(in_process.server_port)]
        prober = subprocess.Popen([sys.executable, "-c", _PROBER, *ports], stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        _hold_the_gil()
        held = time.monotonic() - started
        out, _ = prober.communicate(timeout=60)
        health_process, in_process_s = (float(x) for x in out.split())
        assert held > 0.8, "the regex should hold the GIL for about a second or more"
        assert health_process < 0.5, out
        assert in_process_s > held / 2, (out, held)  # it waited for the end of the C call
    finally:
        server.shutdown()
        in_process.shutdown()


def test_health_process_reports_liveness_readiness_and_forwards_metrics() -> None:
    liveness = SharedLiveness(max_silence_s=0.5, paths=["query"])
    server = HealthServer("127.0.0.1", 0, liveness)
    try:
        assert _get(server.server_port, "/healthz")[:2] == (200, b"ok\n")
        assert _get(server.server_port, "/readyz")[:2] == (503, b"starting\n")
        liveness.running("query")
        assert _get(server.server_port, "/readyz")[:2] == (200, b"ready\n")
        status, body, _ = _get(server.server_port, "/metrics")
        assert status == 200 and b"querylife_dead_letters_total" in body
        assert _get(server.server_port, "/nope")[0] == 404
        time.sleep(0.7)  # no beat for longer than max_silence_s
        assert _get(server.server_port, "/healthz")[:2] == (503, b"stalled\n")
        liveness.beat()
        assert _get(server.server_port, "/healthz")[0] == 200
    finally:
        server.shutdown()
    assert server.proc.poll() is not None


def test_health_process_leaves_with_its_worker() -> None:
    """A worker killed without a chance to stop its health process: the probe port closes."""
    code = (
        "from worker.health import HealthServer, SharedLiveness\n"
        "import os\n"
        "s = HealthServer('127.0.0.1', 0, SharedLiveness())\n"
        "print(s.server_port, s.proc.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    port = int(out.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            _get(port, "/healthz", timeout_s=0.5)
        except OSError:
            return
        time.sleep(0.2)
    pytest.fail(f"the health process still answers on {port} after its worker died")


def _large_png(side: int = 580) -> bytes:
    """A valid image near the 1 MiB limit (noise does not compress)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def test_probes_answer_within_1s_while_the_worker_is_busy(
    broker: LocalBroker, triton: LocalTriton, model_repository: object, tmp_path: object
) -> None:
    """A worker process (both paths) embeds 256 products with ~1 MiB images and scores 256 query
    logs of 200 impressions, in batches of 64; /healthz and /readyz are probed every 50 ms."""
    stack = Stack(broker, triton, model_repository, tmp_path)  # type: ignore[arg-type]
    settings = fresh_settings(broker.bootstrap, triton.grpc_url, batch_max_events=64)
    embeddings = stack.embeddings(200)
    known = [e.product_id for e in embeddings]
    seed_state(settings, embeddings)
    w = WorkerProcess(settings, "both", tmp_path, "busy")  # type: ignore[arg-type]
    w.start()
    try:
        wait_until("the worker ready", lambda: w.probe("/readyz") == 200, 180, every_s=0.2)
        seconds: list[float] = []
        answers: list[int | None] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                for path in ("/healthz", "/readyz"):
                    started = time.monotonic()
                    answers.append(w.probe(path))
                    seconds.append(time.monotonic() - started)
                time.sleep(0.05)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        image = base64.b64encode(_large_png()).decode()
        producer = make_producer(settings.kafka, max_request_size=8 << 20)
        now = datetime.now(UTC)
        for n in range(256):
            upsert = valid_product(n, {"data": image})
            producer.send(settings.topics.product_upserts, value=orjson.dumps(upsert))
            log = QueryLog(
                event_id=f"q{n}",
                event_time=now,
                query_id=f"q{n}",
                query="red cotton shirt",
                variant="A",
                impressions=[Impression(product_id=p, position=i + 1) for i, p in enumerate(known)],
            )
            producer.send(settings.topics.query_logs, key=log.query_id.encode(), value=encode(log))
        producer.flush(120)
        producer.close()
        groups = consumed(w)
        assert {t for _, t in groups} == {settings.topics.query_logs, settings.topics.product_upserts}
        wait_until("lag 0", lambda: all(lag(settings, g, t) == 0 for g, t in groups), 300, every_s=1.0)
        stop.set()
        prober.join(10)
    finally:
        w.stop()
    assert len(seconds) > 100
    assert set(answers) == {200}, answers
    assert max(seconds) < 1.0, sorted(seconds)[-5:]
