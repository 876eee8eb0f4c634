"""Security settings: what `worker.config` accepts, and what it hands to kafka-python and tritonclient.

Pure configuration pass-through, so most of these are unit tests on the constructed keyword arguments
(the tritonclient constructors are replaced by a recorder); the real clients run against the real
broker and Triton in the other test files. Two tests start the real `qlworker run` as a subprocess.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc
import tritonclient.http
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from pydantic import ValidationError

from worker.config import KafkaSettings, Settings, TritonSettings
from worker.observability import configure_logging
from worker.triton_client import RelevanceClient

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


# --------------------------------------------------------------------------- Kafka pass-through


def _sasl_ssl_env(tmp_path: Path) -> dict[str, str]:
    return {
        "QL_KAFKA_BOOTSTRAP_SERVERS": "b-1.kafka.internal:9096,b-2.kafka.internal:9096",
        "QL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "QL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "QL_KAFKA_SASL_PLAIN_USERNAME": "querylife",
        "QL_KAFKA_SASL_PLAIN_PASSWORD": SECRET,
        "QL_KAFKA_SSL_CAFILE": str(tmp_path / "kafka-ca.pem"),
        "QL_KAFKA_SSL_CERTFILE": str(tmp_path / "client.pem"),
        "QL_KAFKA_SSL_KEYFILE": str(tmp_path / "client.key"),
    }


def test_sasl_ssl_settings_reach_kafka_python_unchanged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in _sasl_ssl_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    kafka = Settings().kafka
    cfg = kafka.common_config()
    assert cfg == {
        "bootstrap_servers": ["b-1.kafka.internal:9096", "b-2.kafka.internal:9096"],
        "client_id": "querylife-worker",
        "security_protocol": "SASL_SSL",
        "request_timeout_ms": 30_000,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "querylife",
        "sasl_plain_password": SECRET,
        "ssl_check_hostname": True,
        "ssl_cafile": str(tmp_path / "kafka-ca.pem"),
        "ssl_certfile": str(tmp_path / "client.pem"),
        "ssl_keyfile": str(tmp_path / "client.key"),
    }
    assert type(cfg["sasl_plain_password"]) is str  # unwrapped for the client, and only there
    for text in (repr(kafka), str(kafka), str(kafka.model_dump()), kafka.model_dump_json(), repr(Settings())):
        assert SECRET not in text
    # every key is a config name all three kafka-python clients know (a typo would be ignored silently)
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(cfg) <= set(client.DEFAULT_CONFIG), client.__name__

    monkeypatch.setenv("QL_KAFKA_SSL_CHECK_HOSTNAME", "false")
    assert Settings().kafka.common_config()["ssl_check_hostname"] is False


def test_plaintext_passes_no_security_keys() -> None:
    cfg = KafkaSettings().common_config()
    assert cfg["security_protocol"] == "PLAINTEXT"
    assert not {k for k in cfg if k.startswith(("sasl_", "ssl_"))}
    ssl_only = KafkaSettings(security_protocol="SSL", ssl_cafile=Path("/certs/ca.pem")).common_config()
    assert ssl_only["ssl_cafile"] == "/certs/ca.pem" and ssl_only["ssl_check_hostname"] is True
    assert not {k for k in ssl_only if k.startswith("sasl_")}


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


# --------------------------------------------------------------------------- Triton pass-through


class Recorder:
    """Stands in for a tritonclient InferenceServerClient: records the constructor's keyword arguments."""

    calls: list[dict[str, Any]]

    def __init__(self, **kwargs: Any) -> None:
        type(self).calls.append(kwargs)

    def close(self) -> None:
        pass


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    recorder = type("Recording", (Recorder,), {"calls": calls})
    monkeypatch.setattr(tritonclient.grpc, "InferenceServerClient", recorder)
    monkeypatch.setattr(tritonclient.http, "InferenceServerClient", recorder)
    return calls


def test_grpc_client_gets_the_tls_files(recorded: list[dict[str, Any]]) -> None:
    settings = TritonSettings(
        url="triton.internal:8001", ssl=True, root_certificates=CA, private_key=KEY, certificate_chain=CERT
    )
    RelevanceClient(settings).close()
    assert recorded == [
        {
            "url": "triton.internal:8001",
            "ssl": True,
            "root_certificates": str(CA),
            "private_key": str(KEY),
            "certificate_chain": str(CERT),
        }
    ]


def test_http_client_gets_the_tls_options(recorded: list[dict[str, Any]]) -> None:
    settings = TritonSettings(
        url="triton.internal:8000",
        protocol="http",
        ssl=True,
        root_certificates=CA,
        private_key=KEY,
        certificate_chain=CERT,
        timeout_s=7.5,
    )
    RelevanceClient(settings).close()
    assert recorded == [
        {
            "url": "triton.internal:8000",
            "ssl": True,
            "ssl_options": {"ca_certs": str(CA), "certfile": str(CERT), "keyfile": str(KEY)},
            "connection_timeout": 7.5,
            "network_timeout": 7.5,
        }
    ]


def test_clients_without_tls_get_no_certificates(recorded: list[dict[str, Any]]) -> None:
    RelevanceClient(TritonSettings()).close()
    RelevanceClient(TritonSettings(protocol="http", ssl=True)).close()  # server-auth TLS, system CAs
    grpc_call, http_call = recorded
    assert grpc_call["ssl"] is False
    assert (
        grpc_call["root_certificates"] is grpc_call["private_key"] is grpc_call["certificate_chain"] is None
    )
    assert http_call["ssl"] is True and http_call["ssl_options"] is None


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


# --------------------------------------------------------------------------- kafka-python's DEBUG logs


def test_kafka_debug_records_are_not_emitted(caplog: pytest.LogCaptureFixture) -> None:
    kafka_logger = logging.getLogger("kafka")
    saved = kafka_logger.level
    try:
        caplog.set_level(logging.DEBUG)  # the root at DEBUG: every other logger's DEBUG gets through
        configure_logging("DEBUG")
        admin = logging.getLogger("kafka.admin.client")
        admin.debug("Starting KafkaAdminClient with configuration: %s", {"sasl_plain_password": SECRET})
        admin.info("admin client started")
        logging.getLogger("worker.probe").debug("debug is on")
        messages = [r.getMessage() for r in caplog.records]
        assert "admin client started" in messages and "debug is on" in messages
        assert not any(SECRET in m for m in messages)
    finally:
        kafka_logger.setLevel(saved)
        configure_logging()


_ADMIN_PROBE = """
import logging, sys
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from worker.config import KafkaSettings
from worker.observability import configure_logging

configure_logging("DEBUG")
logging.getLogger("worker.probe").debug("debug is on")
kafka = KafkaSettings(
    bootstrap_servers=sys.argv[1],
    security_protocol="SASL_PLAINTEXT",
    sasl_mechanism="PLAIN",
    sasl_plain_username="svc-querylife",
    sasl_plain_password=sys.argv[2],
)
try:
    KafkaAdminClient(**kafka.common_config(), bootstrap_timeout_ms=1000)
except KafkaError as exc:
    logging.getLogger("worker.probe").info("no broker: %s", type(exc).__name__)
"""


def test_a_real_kafka_client_at_debug_logs_no_password() -> None:
    """kafka-python's KafkaAdminClient logs its configuration at DEBUG; configure_logging keeps it out."""
    proc = subprocess.run(
        [sys.executable, "-c", _ADMIN_PROBE, _dead_address(), SECRET],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "debug is on" in text and "no broker: " in text
    assert SECRET not in text
