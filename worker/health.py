"""`/healthz`, `/readyz` and `/metrics` served by a small process of their own, so that a probe is
answered within milliseconds whatever the worker's threads are doing.

Why: every step of a request served by a thread of the worker (accept, start a thread, parse, reply)
needs the GIL, which the busy threads hold in turn (decoding and validating events, serializing a
gRPC request of up to 256 images, kafka-python's pure-Python protocol, building thousands of
scores); with a few threads busy on two shared cores a probe waits for each of those steps, and a
liveness probe with Kubernetes' 1 s timeout would restart a busy but healthy worker. The child is a
fresh interpreter that imports only the standard library: it reads the worker's liveness from a few
bytes of shared memory (the last beat on CLOCK_MONOTONIC, one clock for every process of the
machine; the silence limit; readiness) and forwards `/metrics` to the worker's in-process Prometheus
server on a loopback port (a scrape may wait for the GIL; a probe never does). It exits once its
parent is gone (`worker.health_server`). Linux only (`os.memfd_create`), as the worker image is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from http.server import ThreadingHTTPServer

from worker.health_server import STATE, Shared
from worker.observability import Liveness, serve_metrics


class SharedLiveness(Liveness):
    """`Liveness`, written through to the shared bytes the health process reads on every probe."""

    def __init__(self, max_silence_s: float = 60.0, paths: Iterable[str] = ()) -> None:
        super().__init__(max_silence_s, paths)
        fd = os.memfd_create("querylife-liveness")
        os.ftruncate(fd, STATE.size)
        self.shared = Shared(fd)
        self._publish()

    def beat(self) -> None:
        super().beat()
        self._publish()

    def running(self, path: str) -> None:
        super().running(path)
        self._publish()

    def _publish(self) -> None:
        self.shared.write(self._last, self.max_silence_s, self.ready())


class HealthServer:
    """The health process (probes on `server_port`) and the in-process `/metrics` it forwards to."""

    def __init__(self, host: str, port: int, liveness: SharedLiveness) -> None:
        self.metrics: ThreadingHTTPServer = serve_metrics("127.0.0.1", 0, liveness)
        fd = liveness.shared.fd
        args = [sys.executable, "-m", "worker.health_server", host, str(port), str(fd)]
        self.proc = subprocess.Popen(
            [*args, str(self.metrics.server_port)], stdout=subprocess.PIPE, pass_fds=(fd,)
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the port it bound, printed once listening; EOF if it died
        if not line.strip().isdigit():
            self.shutdown()
            raise RuntimeError(f"the health process did not start on {host}:{port}: {line!r}")
        self.server_port = int(line)

    def shutdown(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.metrics.shutdown()
