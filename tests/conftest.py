"""Session fixtures: ONE real Tansu broker and ONE real Triton (serving the exported Query-LIFE
ensemble) for the whole suite. Tests isolate themselves by topic names and group ids, never by mocks."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from harness.local_services import LocalBroker, LocalTriton, prepare_model_repository
from querylife.catalogue import catalogue_dir
from schemas import decode_event
from schemas.ranker import ImpressionScore, QueryScores
from worker.config import KafkaSettings, Settings, TopicSettings, TritonSettings, WorkerSettings
from worker.kafka_io import read_topic
from worker.runner import Path_, run_worker

REPO = Path(__file__).resolve().parents[1]
# the committed head: the one Query-LIFE version the session's Triton serves (workers name it, since a
# rollout test loads a second version into the same server)
SERVED_VERSION: str = json.loads((REPO / "querylife" / "weights" / "head.json").read_text())["version"]
DATA = catalogue_dir()  # the full catalogue (flag-free: $QUERYLIFE_DATA or ../shared)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "products.jsonl").exists():
        pytest.fail(f"the shared catalogue is missing at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    b = LocalBroker(log_dir=tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_model_repository(tmp_path_factory.mktemp("triton") / "model_repository")


@pytest.fixture(scope="session")
def triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    t = LocalTriton(model_repository, log_dir=tmp_path_factory.mktemp("triton-logs")).start()
    yield t
    t.stop()


def make_settings(broker: LocalBroker, triton: LocalTriton | None = None, **worker: object) -> Settings:
    """Settings on the test services with fresh topic names and group ids, so tests never interfere."""
    tag = uuid.uuid4().hex[:8]
    topics = TopicSettings.namespaced(f"t{tag}")
    served: dict[str, Any] = {"model_version": SERVED_VERSION, **worker}
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=broker.bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=1000
        ),
        topics=topics,
        triton=TritonSettings(
            url=triton.grpc_url if triton else "127.0.0.1:1",
            timeout_s=20,
            retry_initial_s=0.1,
            retry_max_s=1.0,
        ),
        worker=WorkerSettings(
            product_group=f"g{tag}-product", query_group=f"g{tag}-query", name=f"test-{tag}", **served
        ),
    )


class RunningWorker:
    """The real worker in a thread of this process, stoppable like SIGTERM would."""

    def __init__(self, settings: Settings, paths: list[Path_] | None = None) -> None:
        self.stop = threading.Event()
        self.exit_code: int | None = None
        chosen: list[Path_] = paths or ["product", "query"]

        def target() -> None:
            self.exit_code = run_worker(settings, chosen, self.stop, install_signals=False)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def shutdown(self) -> int | None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "worker did not drain and stop within 60 s"
        return self.exit_code


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def latest(settings: Settings, topic: str) -> dict[bytes, bytes | None]:
    """Compacted view of a topic: the last value per key (what a compacting broker keeps)."""
    return {k: v for k, v in read_topic(settings, topic) if k is not None}


def latest_impressions(settings: Settings) -> dict[bytes, tuple[QueryScores, ImpressionScore]]:
    """Every impression on `query-scores` by `query_id:product_id`, with its search's record: the
    per-impression view the retired `relevance-scores` topic used to give (last record per search)."""
    out: dict[bytes, tuple[QueryScores, ImpressionScore]] = {}
    for value in latest(settings, settings.topics.query_scores).values():
        if value is None:
            continue
        record = decode_event(QueryScores, value)
        for pid, imp in record.by_product().items():
            out[f"{record.query_id}:{pid}".encode()] = (record, imp)
    return out


@pytest.fixture(scope="session")
def model():  # type: ignore[no-untyped-def]
    """The in-process Query-LIFE model (committed head + packaged towers): the reference for serving."""
    from querylife.model import load_model

    return load_model()
