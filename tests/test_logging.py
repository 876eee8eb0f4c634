"""Every log line of a worker process is one JSON object: structlog's events and the stdlib loggers'
records (kafka-python's included) alike, so a log pipeline never meets a plain-text line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import logging
import structlog
from worker.observability import configure_logging

configure_logging("DEBUG")
structlog.get_logger().info("batch_done", records=3)
logging.getLogger("kafka.conn").warning("connect to %s failed", "127.0.0.1:1")
logging.getLogger("kafka.conn").debug("never shown: kafka stays at INFO")
logging.getLogger("worker.probe").debug("plain stdlib at debug")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("worker.probe").exception("it failed")
print("stdout is not a log")
"""


def test_structlog_and_stdlib_lines_are_json_on_stderr() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "stdout is not a log\n"
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    by_event = {line["event"]: line for line in lines}
    assert set(by_event) == {
        "batch_done",
        "connect to 127.0.0.1:1 failed",
        "plain stdlib at debug",
        "it failed",
    }
    assert by_event["batch_done"]["records"] == 3 and by_event["batch_done"]["level"] == "info"
    kafka = by_event["connect to 127.0.0.1:1 failed"]
    assert kafka["logger"] == "kafka.conn" and kafka["level"] == "warning"
    assert "ZeroDivisionError" in by_event["it failed"]["exception"]
    assert all(line["timestamp"].endswith("Z") for line in lines)
