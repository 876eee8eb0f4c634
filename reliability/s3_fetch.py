"""`python -m reliability.s3_fetch`: why `broker_restart` fetches with a 500 ms max wait.

Tansu's `s3://` engine answers a fetch by listing the partition's objects (one per produce request)
and stops reading the listing once the fetch's max wait has run out. This writes a topic the way the
scenario's input stream does (small batches at a low rate, 3 partitions) to a broker on a loopback
S3 server, then reads it back once per fetch wait and prints the time, polls and LIST requests each
read took (the LISTs counted in the S3 server's request log).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from harness.local_services import LocalBroker, LocalObjectStore

TOPIC = "s3-fetch"


def _lists(s3_log: Path) -> int:
    return sum("list-type=2" in line for line in s3_log.read_text().splitlines())


def write(bootstrap: str, events: int, rate: float, linger_ms: int) -> None:
    """`events` records of 300 bytes at `rate`/s with the scenario's producer linger."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(TOPIC, 3, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms)
    started = time.monotonic()
    for i in range(events):
        time.sleep(max(0.0, i / rate - (time.monotonic() - started)))
        producer.send(TOPIC, key=str(i).encode(), value=b"x" * 300)
    producer.flush()
    producer.close()


def read_back(
    bootstrap: str, events: int, fetch_max_wait_ms: int, timeout_s: float
) -> tuple[int, float, int]:
    """(records read, seconds, polls) reading the topic from the start with this fetch wait."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, fetch_max_wait_ms=fetch_max_wait_ms, max_poll_records=5000
    )
    tps = [TopicPartition(TOPIC, p) for p in range(3)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    got = polls = 0
    started = time.monotonic()
    while got < events and time.monotonic() - started < timeout_s:
        got += sum(len(records) for records in consumer.poll(timeout_ms=200).values())
        polls += 1
    consumer.close()
    return got, time.monotonic() - started, polls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.s3_fetch", description=__doc__)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=13.0, help="events/s (broker_restart: 400 in 30 s)")
    parser.add_argument("--linger-ms", type=int, default=250, help="the scenario's input producer linger")
    parser.add_argument("--waits", type=int, nargs="+", default=[20, 500], help="fetch_max_wait_ms to try")
    parser.add_argument("--timeout-s", type=float, default=180.0)
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="querylife-s3-fetch-"))
    store = LocalObjectStore(log_dir=log_dir).start()
    broker = LocalBroker(log_dir=log_dir, store=store).start()
    try:
        write(broker.bootstrap, args.events, args.rate, args.linger_ms)
        objects = sum(
            ".batch" in line and '"PUT ' in line for line in (log_dir / "s3.log").read_text().splitlines()
        )
        print(f"{args.events} records in {objects} objects (3 partitions)")
        for wait in args.waits:
            lists = _lists(log_dir / "s3.log")
            got, seconds, polls = read_back(broker.bootstrap, args.events, wait, args.timeout_s)
            print(
                f"fetch_max_wait_ms={wait}: read {got}/{args.events} in {seconds:.1f} s, {polls} polls, "
                f"{_lists(log_dir / 's3.log') - lists} LISTs"
            )
    finally:
        broker.stop()
        store.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
