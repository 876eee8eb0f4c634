"""Security settings: what `worker.config` accepts (contradictions refused, unsafe choices warned).

Two tests start the real `qlworker run` as a subprocess.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from worker.config import KafkaSettings, Settings, TritonSettings

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-" + os.urandom(6).hex()


def test_oauthbearer_is_refused_it_has_no_token_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="sasl_mechanism"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER")  # type: ignore[arg-type]
    monkeypatch.setenv("QL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("QL_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
    with pytest.raises(ValidationError, match="sasl_mechanism"):
        Settings()
    for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        monkeypatch.setenv("QL_KAFKA_SASL_MECHANISM", mechanism)
        assert Settings().kafka.sasl_mechanism == mechanism


# --------------------------------------------------------------------------- contradictory settings

CA, CERT, KEY = Path("/certs/ca.pem"), Path("/certs/client.pem"), Path("/certs/client.key")


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"ssl_cafile": CA}, ["QL_KAFKA_SSL_CAFILE", "QL_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"]),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "ssl_certfile": CERT},
            ["QL_KAFKA_SSL_CERTFILE", "QL_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"],
        ),
        (
            {"sasl_mechanism": "PLAIN", "sasl_plain_username": "u", "sasl_plain_password": SECRET},
            ["QL_KAFKA_SASL_MECHANISM", "QL_KAFKA_SASL_PLAIN_USERNAME", "QL_KAFKA_SASL_PLAIN_PASSWORD"],
        ),
        (
            {"security_protocol": "SSL", "sasl_plain_password": SECRET},
            ["QL_KAFKA_SASL_PLAIN_PASSWORD", "QL_KAFKA_SECURITY_PROTOCOL=SSL"],
        ),
        ({"security_protocol": "SASL_SSL"}, ["QL_KAFKA_SASL_MECHANISM"]),
        ({"security_protocol": "SSL", "ssl_keyfile": KEY}, ["QL_KAFKA_SSL_KEYFILE", "QL_KAFKA_SSL_CERTFILE"]),
    ],
)
def test_contradictory_kafka_settings_are_refused(settings: dict[str, Any], named: list[str]) -> None:
    with pytest.raises(ValidationError) as exc:
        KafkaSettings(**settings)
    for name in named:
        assert name in str(exc.value)
    assert SECRET not in str(exc.value)  # the error never prints the inputs


def test_refused_from_the_environment_without_printing_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QL_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("QL_KAFKA_SASL_PLAIN_PASSWORD", SECRET)  # with the default PLAINTEXT protocol
    with pytest.raises(ValidationError, match="QL_KAFKA_SASL_PLAIN_PASSWORD") as exc:
        Settings()
    assert SECRET not in str(exc.value)
    with pytest.raises(ValidationError) as nested:
        Settings(kafka={"sasl_mechanism": "PLAIN", "sasl_plain_password": SECRET})  # type: ignore[arg-type]
    assert SECRET not in str(nested.value)


def test_plain_over_sasl_plaintext_is_accepted_with_a_warning() -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_plain_password=SECRET
    )
    [warning] = kafka.security_warnings()
    assert "QL_KAFKA_SASL_MECHANISM=PLAIN" in warning and "SASL_PLAINTEXT" in warning
    assert SECRET not in warning
    for ok in (
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_plain_password=SECRET),
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512"),
        KafkaSettings(),
    ):
        assert ok.security_warnings() == []


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"root_certificates": CA}, ["QL_TRITON_ROOT_CERTIFICATES", "QL_TRITON_SSL"]),
        ({"private_key": KEY, "certificate_chain": CERT}, ["QL_TRITON_PRIVATE_KEY", "QL_TRITON_SSL"]),
        ({"ssl": True, "protocol": "http", "private_key": KEY}, ["QL_TRITON_CERTIFICATE_CHAIN"]),
        ({"ssl": True, "protocol": "http", "certificate_chain": CERT}, ["QL_TRITON_PRIVATE_KEY"]),
        ({"ssl": True, "protocol": "grpc", "root_certificates": CA, "private_key": KEY}, ["set both"]),
    ],
)
def test_contradictory_triton_tls_settings_are_refused(settings: dict[str, Any], named: list[str]) -> None:
    with pytest.raises(ValidationError) as exc:
        TritonSettings(**settings)
    for name in named:
        assert name in str(exc.value)


# --------------------------------------------------------------------------- the real worker process


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QL_")}
    return env | {"QL_KAFKA_BOOTSTRAP_SERVERS": _dead_address(), "QL_TRITON_URL": _dead_address()} | extra


def test_worker_refuses_a_contradictory_setting_at_start() -> None:
    env = _worker_env(QL_KAFKA_SASL_MECHANISM="PLAIN", QL_KAFKA_SASL_PLAIN_PASSWORD=SECRET)
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "run", "--path", "query"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "QL_KAFKA_SASL_PLAIN_PASSWORD" in proc.stderr and "QL_KAFKA_SECURITY_PROTOCOL" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert "worker_starting" not in proc.stdout


def test_worker_warns_at_start_about_plain_over_sasl_plaintext() -> None:
    env = _worker_env(
        QL_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        QL_KAFKA_SASL_MECHANISM="PLAIN",
        QL_KAFKA_SASL_PLAIN_USERNAME="svc-querylife",
        QL_KAFKA_SASL_PLAIN_PASSWORD=SECRET,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", "--path", "query"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "dependency_unavailable" in line:  # past start-up: waiting for the (dead) Triton
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    text = "".join(lines) + out
    warnings = [line for line in text.splitlines() if "insecure_kafka_settings" in line]
    assert len(warnings) == 1 and '"level": "warning"' in warnings[0]
    assert "sends the password in clear text" in warnings[0]
    assert SECRET not in text
