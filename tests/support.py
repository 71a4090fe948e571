"""Test helpers: real worker processes, a plain Kafka producer, bounded waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.embedded import Service, free_port, worker_argv

BIN = Path(sys.executable).parent


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Return the first truthy value of ``predicate`` or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Services:
    broker_url: str
    mongo_url: str
    model_spec: Path

    @property
    def bootstrap(self) -> str:
        return self.broker_url.split("://", 1)[1]


@dataclass
class Pipeline:
    """One isolated imgflow deployment: its own group, topic prefix and database."""

    services: Services
    home: Path
    name: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:8])
    #: IMGFLOW_IMAGE_ROOTS: tests publish images from their own temporary folders,
    #: so the fixtures pass the session's base temporary folder.
    image_roots: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)

    @property
    def db_name(self) -> str:
        return f"imgflow_{self.name}"

    def topic(self, stage: str) -> str:
        return f"{self.name}-{stage}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "BROKER_URL": self.services.broker_url,
            "MONGO_URL": self.services.mongo_url,
            "MONGO_DB": self.db_name,
            "IMGFLOW_APP_ID": f"imgflow-{self.name}",
            "IMGFLOW_TOPIC_PREFIX": self.name,
            "IMGFLOW_HOME": str(self.home),
            "IMGFLOW_MODEL": str(self.services.model_spec),
            "IMGFLOW_PARTITIONS": "4",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            # Tests write images and their own model specs in the session's temporary folder.
            **({"IMGFLOW_IMAGE_ROOTS": str(self.image_roots)} if self.image_roots else {}),
            **({"IMGFLOW_MODEL_DIRS": str(self.image_roots)} if self.image_roots else {}),
            **self.extra_env,
            **extra,
        }
        return env

    def start_worker(self, **extra: str) -> Worker:
        """A new worker: a new number, so its own log and data directory (RocksDB tables)."""
        worker = Worker(self, len(self.workers) + 1, extra)
        worker.start()
        self.workers.append(worker)
        return worker

    def restart_worker(self, worker: Worker, **extra: str) -> Worker:
        """Stop ``worker`` (SIGTERM) and start it again on the same node: same number, same data dir."""
        worker.stop()
        again = Worker(self, worker.number, {**worker.extra_env, **extra})
        again.start()
        self.workers.append(again)
        return again

    def run(self, *args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
        """Run an app command (``faust -A imgflow ...``) to completion."""
        return subprocess.run(
            [str(BIN / "faust"), "-A", "imgflow", *args],
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def mongo(self):
        from pymongo import MongoClient

        client: MongoClient = MongoClient(self.services.mongo_url, tz_aware=True)
        return client[self.db_name]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@dataclass
class Worker:
    pipeline: Pipeline
    number: int
    extra_env: dict[str, str]
    port: int = 0
    service: Service | None = None

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.service.proc if self.service else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.pipeline.home / f"worker{self.number}.log"

    @property
    def data_dir(self) -> Path:
        """RocksDB locks its files per process: each worker number has its own."""
        return self.pipeline.home / "data" / f"worker{self.number}"

    def start(self) -> None:
        self.port = free_port()
        self.service = Service(f"worker{self.number}", self.port, self.log_path)
        env = self.pipeline.env(**{"IMGFLOW_DATA_DIR": str(self.data_dir), **self.extra_env})
        self.service.start(worker_argv(self.port), env=env)

    def get(self, path: str, timeout: float = 10, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, _headers, body = self.request("GET", path, timeout=timeout, headers=headers)
        return status, body

    def request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, response headers, JSON body or text) of one plain HTTP request."""
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), _json_or_text(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), _json_or_text(exc.read())

    def health(self) -> tuple[int, Any]:
        try:
            return self.get("/health/", timeout=2)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, None

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log_tail()}")
            return self.health()[0] == 200

        try:
            wait_until(ready, timeout, f"worker {self.number} ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def metric(self, name: str, **labels: str) -> float:
        """One sample from this worker's ``/metrics`` (0 when the series has no sample yet)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final commit."""
        if self.service:
            self.service.kill()

    def stop(self, timeout: float = 30) -> None:
        if self.service:
            self.service.stop(timeout)


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError:
        return body.decode(errors="replace")


async def produce_raw(bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    """Publish with a plain Kafka client (aiokafka), not imgflow code."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def path_message(path: Path, image_id: str | None = None, **fields: Any) -> tuple[bytes, bytes]:
    """The documented open JSON of an ``imgflow-paths`` message."""
    image_id = image_id or uuid.uuid4().hex
    body = {"image_id": image_id, "path": str(path), **fields}
    return image_id.encode(), json.dumps(body).encode()
