"""The one error the consumer loop backs off on: a service the worker needs is away for now."""

from __future__ import annotations


class DependencyUnavailable(RuntimeError):
    """Transient: `dependency` (Triton, the broker) is down, overloaded or not ready. Retry later.

    The loop pauses its partitions, backs off and retries the batch without committing; it logs
    `<dependency>_unavailable`.
    """

    dependency = "dependency"


class BrokerUnavailable(DependencyUnavailable):
    """A Kafka call failed while a batch was processed (e.g. the query path following its state)."""

    dependency = "broker"
