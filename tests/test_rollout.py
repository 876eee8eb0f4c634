"""A whole model rollout and rollback on the real broker and the real Triton, run from the runbook.

The commands come from docs/deploying.md (the block between `runbook:begin` and `runbook:end`), so the
documented steps are the tested ones. Two real versions: by default the committed head (`$OLD`) and
tests/fixtures/head-seed1 (`$NEW`: the previous served recipe, querylife_full, trained with seed 1).
`QL_ROLLOUT_SERVED_HEAD` / `QL_ROLLOUT_CANDIDATE_HEAD` name other head folders, e.g. to run a real
release's upgrade (the previous served head to the committed one) through the same runbook. Query
logs and product upserts stream through every phase; each phase checks: nothing lost, no score whose
query and embedding versions differ, every score from the version that phase serves, and
(recomputed against that version's own ensembles) the score itself, so a query of one model
compared with another model's embedding would show as a wrong value even if it were labelled right.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from harness.demo_data import load_catalogue, product_event
from harness.local_services import LocalBroker, LocalTriton, prepare_model_repository
from schemas import (
    Impression,
    ProductEmbeddingV2,
    QueryLog,
    decode_event,
    decode_product_embedding,
    encode,
)
from schemas.embeddings import embedding_array
from schemas.lifecycle import ShadowScores
from tests.conftest import (
    REPO,
    RunningWorker,
    latest,
    latest_impressions,
    make_settings,
    wait_until,
)
from worker.config import Settings
from worker.kafka_io import create_topics, make_producer
from worker.triton_client import RelevanceClient

SERVED_HEAD = Path(os.environ.get("QL_ROLLOUT_SERVED_HEAD", REPO / "querylife" / "weights"))
CANDIDATE_HEAD = Path(os.environ.get("QL_ROLLOUT_CANDIDATE_HEAD", REPO / "tests" / "fixtures" / "head-seed1"))
OLD_VERSION: str = json.loads((SERVED_HEAD / "head.json").read_text())["version"]
NEW_VERSION: str = json.loads((CANDIDATE_HEAD / "head.json").read_text())["version"]
RUNBOOK = re.compile(r"<!-- runbook:begin -->\s*```sh\n(.*?)```\s*<!-- runbook:end -->", re.S)
PRODUCTS, LATE_PRODUCTS, LOGS_PER_PHASE, SHOWN = 60, 8, 12, 5


def runbook_steps() -> list[str]:
    """The runbook's commands and `# deploy:` lines, in order (other comments dropped)."""
    block = RUNBOOK.search((REPO / "docs" / "deploying.md").read_text())
    assert block, "docs/deploying.md has no runbook block"
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and (not line.startswith("#") or line.startswith("# deploy:"))]


@dataclass
class Rollout:
    """The test's deployment: workers (in threads) restarted as the runbook's deploy lines say."""

    settings: Settings
    env: dict[str, str]
    product_workers: dict[str, RunningWorker] = field(default_factory=dict)
    query_worker: RunningWorker | None = None
    serving: str = OLD_VERSION

    def deploy(self, line: str) -> None:
        words = shlex.split(os.path.expandvars(line.removeprefix("# deploy:")))
        role, rest = words[0], words[2:]
        if rest[:1] == ["of"]:  # "product workers of V stopped"
            worker = self.product_workers.pop(rest[1])
            assert worker.shutdown() == 0
            return
        variables = dict(word.split("=", 1) for word in rest)
        worker_settings = self.settings.worker.model_copy(
            update={
                "model_version": variables["QL_WORKER_MODEL_VERSION"],
                "shadow_model_version": variables.get("QL_WORKER_SHADOW_MODEL_VERSION"),
                "shadow_sample": 1.0,
            }
        )
        settings = self.settings.model_copy(update={"worker": worker_settings})
        if role == "product":  # the old version's product workers keep running
            self.product_workers[variables["QL_WORKER_MODEL_VERSION"]] = RunningWorker(settings, ["product"])
            return
        if self.query_worker is not None:
            assert self.query_worker.shutdown() == 0  # drains its batch and commits: a rolling restart
        self.query_worker = RunningWorker(settings, ["query"])
        self.serving = variables["QL_WORKER_MODEL_VERSION"]

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        argv = shlex.split(os.path.expandvars(command))
        tool = {"qlworker": "worker.cli", "querylife": "querylife.cli"}[argv[0]]
        return subprocess.run(
            [sys.executable, "-m", tool, *argv[1:]], env=self.env, capture_output=True, text=True, timeout=900
        )

    def succeeds(self, command: str) -> bool:
        return self.run(command).returncode == 0

    def stop(self) -> None:
        for worker in [*self.product_workers.values(), self.query_worker]:
            if worker is not None:
                worker.shutdown()


def query_logs(settings: Settings, phase: str, products: list[dict[str, object]], n: int) -> list[QueryLog]:
    """`n` query logs of this phase, each showing `SHOWN` products (keyed by user, as producers do)."""
    rng = np.random.default_rng(abs(hash(phase)) % 2**32)
    logs = []
    for i in range(n):
        shown = rng.choice(len(products), size=SHOWN, replace=False)
        query = " ".join(str(products[int(shown[0])]["title"]).lower().split()[:3])
        logs.append(
            QueryLog(
                event_id=f"{phase}-{i}",
                event_time=datetime.now(UTC),
                query_id=f"{phase}-q{i}",
                query=query,
                user_id=f"u{i % 5}",
                variant="A",
                impressions=[
                    Impression(product_id=str(products[int(j)]["product_id"]), position=k)
                    for k, j in enumerate(shown, start=1)
                ],
            )
        )
    producer = make_producer(settings.kafka)
    for log in logs:
        producer.send(settings.topics.query_logs, key=log.unit_key(), value=encode(log))
    producer.flush(30)
    producer.close()
    return logs


def check_phase(rollout: Rollout, logs: list[QueryLog], version: str) -> None:
    """Every impression answered, >= 99 % scored, all by `version`, with `version`'s own values."""
    settings = rollout.settings
    wanted = {f"{log.query_id}:{imp.product_id}".encode() for log in logs for imp in log.impressions}
    wait_until(
        f"scores of {logs[0].event_id.split('-')[0]}",
        lambda: wanted <= set(latest_impressions(settings)),
        timeout_s=180,
    )
    table = latest_impressions(settings)
    records = [table[key] for key in sorted(wanted)]
    scored = [(rec, s) for rec, s in records if s.status == "scored"]
    assert len(scored) >= 0.99 * len(records), [s for _, s in records if s.status != "scored"][:3]
    assert {(r.query_model_version, r.embedding_model_version) for r, _ in records} == {(version, version)}
    embeddings = {
        k.decode(): embedding_array(decode_product_embedding(v))
        for k, v in latest(settings, settings.topics.embeddings_for(version)).items()
        if v is not None
    }
    with RelevanceClient(settings.triton, version) as client:
        expected = client.query_relevance(
            [r.query for r, _ in scored], np.stack([embeddings[s.product_id] for _, s in scored])
        )
    got = np.array([s.score for _, s in scored])
    np.testing.assert_allclose(got, [e.score for e in expected], atol=1e-5)


def expand(text: str, env: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` from `env`, as the shell would (every name must be set)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], text)


@pytest.fixture(scope="module")
def own_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalTriton, Path]]:
    """A Triton of its own: loading a version reloads the python models, so a request some other
    test left in flight on the session's server must not hold this test's load (and the session's
    server never serves the candidate)."""
    repository = prepare_model_repository(
        tmp_path_factory.mktemp("rollout") / "model_repository", checkpoint=SERVED_HEAD
    )
    server = LocalTriton(repository, log_dir=tmp_path_factory.mktemp("rollout-logs")).start()
    yield server, repository
    server.stop()


def test_rollout_and_rollback_from_the_runbook(
    broker: LocalBroker, own_triton: tuple[LocalTriton, Path], data_dir: Path, tmp_path: Path
) -> None:
    triton, model_repository = own_triton
    assert NEW_VERSION != OLD_VERSION
    settings = make_settings(
        broker, triton, image_root=data_dir / "images", unknown_product_wait_s=1.0, model_version=OLD_VERSION
    )
    create_topics(settings)
    catalogue = load_catalogue(data_dir, PRODUCTS + LATE_PRODUCTS)
    known, late = catalogue[:PRODUCTS], catalogue[PRODUCTS:]
    export = tmp_path / "catalogue.jsonl"  # what the catalogue service exports: one upsert per line
    export.write_bytes(b"".join(encode(product_event(p, datetime.now(UTC))) + b"\n" for p in known))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("QL_")},
        **settings.to_env(),
        "OLD": OLD_VERSION,
        "NEW": NEW_VERSION,
        "CANDIDATE_HEAD": str(CANDIDATE_HEAD),
        "MODEL_REPOSITORY": str(model_repository),
        "CATALOGUE_EXPORT": str(export),
    }
    rollout = Rollout(settings, env)
    producer = make_producer(settings.kafka)

    def upsert(products: list[dict[str, object]]) -> None:
        for p in products:
            event = product_event(p, datetime.now(UTC))
            producer.send(settings.topics.product_upserts, key=event.product_id.encode(), value=encode(event))
        producer.flush(30)

    phases: list[str] = []

    def traffic() -> None:
        """A phase of live query logs, scored by the version the query worker serves now."""
        phases.append(rollout.serving)
        check_phase(
            rollout, query_logs(settings, f"phase{len(phases)}", known, LOGS_PER_PHASE), rollout.serving
        )

    try:
        rollout.deploy(f"# deploy: product workers QL_WORKER_MODEL_VERSION={OLD_VERSION}")
        rollout.deploy(f"# deploy: query workers QL_WORKER_MODEL_VERSION={OLD_VERSION}")
        upsert(known)
        old_topic = settings.topics.embeddings_for(OLD_VERSION)
        wait_until("the served version's state", lambda: len(latest(settings, old_topic)) == PRODUCTS, 300)
        traffic()
        for step in runbook_steps():
            line = expand(step, env)
            if line.startswith("# deploy:"):
                rollout.deploy(line)
                if line == f"# deploy: product workers QL_WORKER_MODEL_VERSION={NEW_VERSION}":
                    upsert(late)  # products new during the rollout: both versions must embed them
                if not line.endswith("stopped"):
                    traffic()
                continue
            if line.startswith("qlworker rollout status"):  # the switch waits for the rule to hold
                wait_until("the switch rule", functools.partial(rollout.succeeds, line), 300)
                continue
            done = rollout.run(line)
            assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
            check_output(line, done.stdout)
        # before, backfilled, shadow, switched, rolled back: each phase by the version it served
        assert phases == [OLD_VERSION, OLD_VERSION, OLD_VERSION, NEW_VERSION, OLD_VERSION]
        records = [
            decode_event(ShadowScores, v)
            for v in latest(settings, settings.topics.shadow_scores).values()
            if v
        ]
        assert len(records) >= LOGS_PER_PHASE
        assert {(r.serving_version, r.candidate_version) for r in records} == {(OLD_VERSION, NEW_VERSION)}
        for version in (OLD_VERSION, NEW_VERSION):
            table = latest(settings, settings.topics.embeddings_for(version))
            assert {str(p["product_id"]).encode() for p in catalogue} <= set(table)  # late ones too
            assert {decode_event(ProductEmbeddingV2, v).model_version for v in table.values() if v} == {
                version
            }
        for role, version, directory in (("serving", OLD_VERSION, "1"), ("shadow", NEW_VERSION, "2")):
            labels = {"role": role, "model_version": version, "triton_version": directory}
            assert REGISTRY.get_sample_value("querylife_model_info", labels) == 1.0
        with RelevanceClient(settings.triton, OLD_VERSION) as client:
            assert client.served_versions() == [OLD_VERSION]  # retired
    finally:
        producer.close()
        rollout.stop()


def check_output(line: str, stdout: str) -> None:
    """What each runbook command must have printed."""
    if line.startswith("qlworker rollout load"):
        assert json.loads(stdout)["model_version"] == NEW_VERSION
    if line.startswith("qlworker rollout backfill"):
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert (summary["embedded"], summary["dead_lettered"], summary["skipped"]) == (PRODUCTS, 0, 0)
    if line.startswith("qlworker rollout report"):
        report = json.loads(stdout)
        assert report["query_logs"] >= LOGS_PER_PHASE and report["pairs_scored_by_both"] > 0
        assert -1.0 <= report["rank_correlation_mean"] <= 1.0
        assert 0.0 <= report["label_agreement"] <= 1.0 and report["mean_score_shift_by_type"]
