"""Security settings: what `worker.config` accepts, and what it hands to kafka-python and tritonclient.

Pure configuration pass-through, so these are unit tests on the constructed keyword arguments; the
real clients run against the real broker and Triton in the other test files.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.config import KafkaSettings, Settings


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
