"""What every scenario also measures while it runs: the longest stall of an input partition and the
latency of the workers' health probes (two columns of the figures table).

*Longest stall*: the longest time any input partition of a running worker had a backlog (committed
offset below the end offset) and its committed offset did not move, counted only while Triton
answered ready and the broker answered the sampling (an outage is the fault being injected, not a
stall). *Probe latency*: every live worker's `/healthz` and `/readyz`, fetched from this process
every half second from the moment the worker first answered (an orchestrator's startup probe covers
the interpreter's start), with a 2 s timeout: an unanswered probe counts as 2 s.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.structs import TopicPartition

if TYPE_CHECKING:
    from reliability.faults import ScenarioResult, WorkerProcess

PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 2.0
PROGRESS_EVERY_S = 1.0
STALL_LIMIT_S = 60.0
PROBE_LIMIT_S = 1.0


@dataclass
class Figures:
    """The monitor's result for one scenario."""

    longest_stall_s: float = 0.0
    stall_at: str = ""  # "group/topic:partition" of the longest stall
    probes: int = 0
    probe_max_s: float = 0.0
    probes_over_1s: int = 0
    samples: int = 0  # progress samples taken while Triton and the broker answered
    excluded: int = 0  # progress samples skipped: Triton not ready or broker unreachable
    notes: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return self.longest_stall_s <= STALL_LIMIT_S and self.probe_max_s < PROBE_LIMIT_S


def consumed(w: WorkerProcess) -> list[tuple[str, str]]:
    """(group, topic) of each input the worker consumes, as its `consumer_started` lines say (the
    product path's group carries the model version it serves)."""
    found = {
        (str(e["group"]), str(e["topic"])) for e in w.log_events() if e.get("event") == "consumer_started"
    }
    return sorted(found)


def _inputs(w: WorkerProcess) -> list[tuple[str, str, str]]:
    """(bootstrap, group, topic) of each input the worker consumes."""
    return [(w.env["QL_KAFKA_BOOTSTRAP_SERVERS"], group, topic) for group, topic in consumed(w)]


class Monitor:
    """Two sampling threads over the scenario's workers (`workers()` is read on every round)."""

    def __init__(self, workers: Callable[[], list[WorkerProcess]]) -> None:
        self.workers = workers
        self.figures = Figures()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._probe_loop, name="monitor-probes", daemon=True),
            threading.Thread(target=self._progress_loop, name="monitor-progress", daemon=True),
        ]
        self._answered: dict[str, int] = {}  # worker name -> the start it first answered in
        self._since: dict[str, float] = {}  # partition -> when it last made progress (or was excused)
        self._committed: dict[str, int] = {}
        self._clients: dict[str, tuple[KafkaAdminClient, KafkaConsumer]] = {}

    def __enter__(self) -> Monitor:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        for admin, consumer in self._clients.values():
            with contextlib.suppress(Exception):
                admin.close()
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False)

    # ------------------------------------------------------------------ probes

    def _probe_loop(self) -> None:
        while not self._stop.wait(PROBE_EVERY_S):
            for w in list(self.workers()):
                if w.alive():
                    self._probe(w)

    def _probe(self, w: WorkerProcess) -> None:
        for path in ("/healthz", "/readyz"):
            started, starts = time.monotonic(), w.starts
            answered = _get(w.metrics_port, path)
            if not answered and _gone(w, starts):
                return  # the scenario killed or restarted it around the probe: not a slow answer
            seconds = time.monotonic() - started if answered else PROBE_TIMEOUT_S
            if self._answered.get(w.name) != w.starts:
                if not answered:
                    return  # not serving yet since its (re)start
                self._answered[w.name] = w.starts
            f = self.figures
            f.probes += 1
            f.probes_over_1s += seconds >= PROBE_LIMIT_S
            if seconds > f.probe_max_s:
                f.probe_max_s = seconds
                f.notes.append(f"probe max {seconds:.3f} s: {w.name} {path}")

    # ------------------------------------------------------------------ progress

    def _progress_loop(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY_S):
            now = time.monotonic()
            inputs = {i for w in list(self.workers()) if w.alive() for i in _inputs(w)}
            try:
                healthy = self._triton_ready()
                positions = [self._positions(*i) for i in sorted(inputs)] if healthy else []
            except Exception:  # the broker is away (a fault scenario): excused, not a stall
                healthy = False
            if not healthy:
                self.figures.excluded += 1
                self._since = {k: now for k in self._since}
                continue
            self.figures.samples += 1
            for (_, group, topic), (committed, ends) in zip(sorted(inputs), positions, strict=True):
                for part, end in ends.items():
                    self._account(f"{group}/{topic}:{part}", committed.get(part, 0), end, now)

    def _triton_ready(self) -> bool:
        """Whether every Triton the workers use answers ready (a restart loading its models does not)."""
        import tritonclient.grpc as grpcclient

        urls = {w.env["QL_TRITON_URL"] for w in self.workers()}
        for url in urls:
            with grpcclient.InferenceServerClient(url) as client:
                if not client.is_server_ready(client_timeout=2.0):
                    return False
        return True

    def _account(self, key: str, committed: int, end: int, now: float) -> None:
        if committed != self._committed.get(key) or committed >= end or key not in self._since:
            self._committed[key], self._since[key] = committed, now
            return
        stalled = now - self._since[key]
        if stalled > self.figures.longest_stall_s:
            self.figures.longest_stall_s, self.figures.stall_at = round(stalled, 1), key

    def _positions(self, bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
        """(committed, end) offsets by partition."""
        if bootstrap not in self._clients:
            common: dict[str, Any] = {"bootstrap_servers": bootstrap.split(","), "request_timeout_ms": 5000}
            self._clients[bootstrap] = (KafkaAdminClient(**common), KafkaConsumer(**common))
        admin, consumer = self._clients[bootstrap]
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
            got = admin.list_group_offsets({group: tps}).get(group, {})
        except Exception:
            self._clients.pop(bootstrap)
            admin.close()
            consumer.close(autocommit=False)
            raise
        committed = {
            tp.partition: m.offset for tp, m in got.items() if m.offset is not None and m.offset >= 0
        }
        return committed, ends


def judge(result: ScenarioResult, figures: Figures) -> None:
    """Put the figures on the scenario's row; over either limit, a passing scenario fails."""
    result.longest_stall_s, result.probe_max_s = figures.longest_stall_s, round(figures.probe_max_s, 3)
    result.checks |= {
        "longest_stall_at": figures.stall_at,
        "progress_samples": f"{figures.samples} taken, {figures.excluded} excused (Triton or broker away)",
        "health_probes": figures.probes,
        "health_probes_over_1s": figures.probes_over_1s,
    }
    result.notes += figures.notes[-3:]
    if result.passed and not figures.ok():
        result.passed = False
        result.error = (
            f"longest stall {figures.longest_stall_s:.1f} s (limit {STALL_LIMIT_S:.0f} s) at "
            f"{figures.stall_at or '-'}, slowest health probe {figures.probe_max_s:.2f} s "
            f"(limit {PROBE_LIMIT_S:.0f} s)"
        )


def _gone(w: WorkerProcess, starts: int, grace_s: float = 1.0) -> bool:
    """Whether the worker died or was restarted around an unanswered probe. A kill -9 refuses the
    probe at once but shows in the process's exit status only a moment later: without the grace, a
    probe racing the kill counted as a 2 s answer of a live worker."""
    deadline = time.monotonic() + grace_s
    while w.alive() and w.starts == starts:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _get(port: int, path: str) -> bool:
    """Whether the probe answered (any HTTP status) within the timeout."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=PROBE_TIMEOUT_S) as r:
            r.read()
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
