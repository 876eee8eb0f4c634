"""`harness.local_services.worker_env`, the one way the harness (reliability, benchmarks) hands settings
to a worker subprocess: the subprocess's `Settings()` must equal the parent's, whatever QL_* the
parent's own shell had."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from harness.local_services import worker_env
from worker.config import KafkaSettings, Settings, TopicSettings, TritonSettings, WorkerSettings


def test_settings_survive_the_trip_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QL_WORKER_BATCH_MAX_EVENTS", "7")  # the caller's shell: must not leak in
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers="127.0.0.1:1",
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_plain_username="svc",
            sasl_plain_password=SecretStr("pw"),
        ),
        topics=TopicSettings.namespaced("t1"),
        triton=TritonSettings(url="127.0.0.1:2", timeout_s=3.5),
        worker=WorkerSettings(image_root=tmp_path, batch_max_events=9, name="w1"),
    )
    env = worker_env(settings, QL_WORKER_NAME="w2")
    assert env["QL_WORKER_BATCH_MAX_EVENTS"] == "9" and env["HF_HUB_OFFLINE"] == "1"
    for key in [k for k in os.environ if k.startswith("QL_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("QL_"):
            monkeypatch.setenv(key, value)
    child = Settings()
    assert child.worker.name == "w2"
    assert child.model_dump(exclude={"worker": {"name"}}) == settings.model_dump(exclude={"worker": {"name"}})
    assert child.kafka.sasl_plain_password is not None
    assert child.kafka.sasl_plain_password.get_secret_value() == "pw"
