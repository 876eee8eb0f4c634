"""The health process: `/healthz`, `/readyz` from shared liveness bytes, `/metrics` forwarded.

`python -m worker.health_server HOST PORT FD METRICS_PORT`, started by `worker.health` (which says
why). Standard library only, so it starts in a fraction of a second and never waits for the GIL of
the worker; it prints the port it bound, then serves until its parent is gone.
"""

from __future__ import annotations

import argparse
import mmap
import os
import struct
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STATE = struct.Struct("<ddB")  # last beat (time.monotonic), max silence (s), ready (0/1)


class Shared:
    """The liveness bytes both processes map."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.map = mmap.mmap(fd, STATE.size)

    def write(self, last: float, max_silence_s: float, ready: bool) -> None:
        self.map[: STATE.size] = STATE.pack(last, max_silence_s, ready)

    def read(self) -> tuple[float, float, bool]:
        last, silence, ready = STATE.unpack(self.map[: STATE.size])
        return last, silence, bool(ready)


def _handler(shared: Shared, metrics_port: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            last, silence, ready = shared.read()
            if path == "/healthz":
                ok = time.monotonic() - last < silence
                self._reply(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
            elif path == "/readyz":
                self._reply(200 if ready else 503, b"ready\n" if ready else b"starting\n")
            elif path == "/metrics":
                self._forward()
            else:
                self._reply(404, b"not found\n")

        def _forward(self) -> None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
                    body, ctype = r.read(), r.headers.get("Content-Type", "text/plain")
            except OSError as exc:
                self._reply(503, f"metrics unavailable: {exc}\n".encode())
                return
            self._reply(200, body, ctype)

        def _reply(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: probes are not news
            return

    return Handler


class _ChildServer(ThreadingHTTPServer):
    daemon_threads = True
    parent = 0

    def service_actions(self) -> None:
        """Called between requests (every 0.5 s at most): leave with the worker."""
        if os.getppid() != self.parent:
            raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.health_server", description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("fd", type=int, help="the shared liveness bytes (inherited)")
    parser.add_argument("metrics_port", type=int, help="the worker's in-process Prometheus server")
    args = parser.parse_args(argv)
    server = _ChildServer((args.host, args.port), _handler(Shared(args.fd), args.metrics_port))
    server.parent = os.getppid()
    print(server.server_port, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
