"""Worker restart with large label-count tables, memory:// vs rocksdb://: ``make bench-recovery``.

For each store, one worker declares its topics; the label-count changelogs are then filled
with ``--keys`` keys exactly as the count agent writes them (Faust's own JSON serialisation of
windowed keys, each key on its label's partition), and the worker is started, stopped with
SIGTERM and started again on the same data dir. The restart is timed from spawning the
process to ``/health/`` answering 200 ("ready") and to ``/counts/`` serving every count
("served"). With memory:// every start replays the whole changelog; with rocksdb:// the
restart finds its tables on disk and reads only the tail (empty here). Both pay the same
process start and model load, so the difference is the recovery.

The fill sends in large batches, then re-sends each partition's last record on its own: the
embedded broker's ``end_offsets`` is only right when the last batch holds one record
(docs/design.md §8), and recovery reads up to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from devstack.embedded import Service, deployment_env, free_port, start_broker, start_mongo, worker_argv
from models.efficientnet_lite import build_default_model

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
WINDOW = 60.0
LABELS = 1000
SEP = "\t"


def get(port: int, path: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def changelog_entries(keys: int, now: float) -> tuple[dict[str, list[tuple[int, bytes, bytes]]], int]:
    """Records per changelog topic suffix, as (partition, key, value); and the images counted.

    One image per (label, window) cell, so each table gets one key per image.
    """
    from aiokafka.partitioner import murmur2
    from faust import TumblingWindow
    from faust.serializers import codecs

    images = max(1, keys // 2)
    windows = math.ceil(images / LABELS)
    window = TumblingWindow(WINDOW)
    out: dict[str, list[tuple[int, bytes, bytes]]] = {"label_model_counts": [], "label_counted": []}
    n = 0
    for w in range(windows):
        span = tuple(window.ranges(now - w * WINDOW)[0])
        for i in range(LABELS):
            if n == images:
                break
            label = f"label-{i:04d}"
            partition = (murmur2(label.encode()) & 0x7FFFFFFF) % PARTITIONS  # as the store keys it
            model_key = f"{label}{SEP}bench:1"
            # Count tables hold [count, position]; label_counted the position that counted it.
            for table, key, value in (
                ("label_model_counts", model_key, [1, 1]),
                ("label_counted", f"{model_key}{SEP}{uuid.uuid4().hex}", 1),
            ):
                out[table].append((partition, codecs.dumps("json", (key, span)), codecs.dumps("json", value)))
            n += 1
    return out, images


async def fill(bootstrap: str, app_id: str, entries: dict[str, list[tuple[int, bytes, bytes]]]) -> int:
    """Write the changelogs; each partition ends with a one-record batch. Returns records written."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    written = 0
    try:
        last: dict[tuple[str, int], tuple[bytes, bytes]] = {}
        for table, records in entries.items():
            topic = f"{app_id}-{table}-changelog"
            for partition, key, value in records:
                await producer.send(topic, value, key=key, partition=partition)
                last[(topic, partition)] = (key, value)
                written += 1
        await producer.flush()
        for (topic, partition), (key, value) in last.items():
            await producer.send_and_wait(topic, value, key=key, partition=partition)
            written += 1
    finally:
        await producer.stop()
    return written


@dataclass
class Start:
    ready: float
    served: float
    replayed: int
    counts_request: float = 0.0


def counts_request_seconds(port: int, n: int = 5) -> float:
    """Median time of one ``/counts/`` answer (it reads every key of the count tables)."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        status, _ = get(port, "/counts/?windows=10")
        assert status == 200
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed_start(
    name: str, env: dict[str, str], home: Path, images: int, timeout: float = 900
) -> tuple[Service, Start]:
    """Spawn a worker; seconds to /health/ 200 and to /counts/ serving all ``images``."""
    port = free_port()
    worker = Service(name, port, home / f"{name}.log")
    started = time.perf_counter()
    worker.start(worker_argv(port, loglevel="info"), env=env)
    assert worker.proc is not None
    deadline = started + timeout
    ready = served = None
    while time.perf_counter() < deadline:
        if worker.proc.poll() is not None:
            tail = "\n".join(worker.log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{name} exited:\n{tail}")
        if ready is None:
            if get(port, "/health/")[0] == 200:
                ready = time.perf_counter() - started
        else:
            status, body = get(port, "/counts/?windows=1000")
            if status == 200 and isinstance(body, dict) and body["complete"]:
                total = sum(w["total"] for w in body["windows"])
                if total == images:
                    served = time.perf_counter() - started
                    break
        time.sleep(0.1)
    if ready is None or served is None:
        worker.stop(timeout=30)
        raise TimeoutError(f"{name}: not ready and served within {timeout:.0f}s (see {worker.log_path})")
    return worker, Start(ready, served, replayed(port))


def replayed(port: int) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return int(
        sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "imgflow_table_changelog_recovered_total"
        )
    )


def run_store(store: str, keys: int, broker, mongo, spec: Path, home: Path) -> tuple[Start, Start, int]:
    prefix = f"rec{uuid.uuid4().hex[:6]}"
    app_id = f"imgflow-{prefix}"
    env = deployment_env(
        broker.url,
        mongo.url,
        prefix,
        home,
        spec,
        IMGFLOW_APP_ID=app_id,
        IMGFLOW_PARTITIONS=str(PARTITIONS),
        IMGFLOW_TABLE_STORE=store,
        IMGFLOW_DATA_DIR=str(home / prefix / "data"),
        IMGFLOW_WINDOW_SECONDS=str(WINDOW),
        IMGFLOW_WINDOW_EXPIRES=str(7 * 86400),
    )
    # The worker declares its topics (the changelogs with their partitions), then stops.
    declare, _ = timed_start(f"{prefix}-declare", env, home, images=0)
    declare.stop(timeout=60)
    entries, images = changelog_entries(keys, time.time())
    records = asyncio.run(fill(broker.bootstrap, app_id, entries))
    first, cold = timed_start(f"{prefix}-first", env, home, images)
    first.stop(timeout=120)  # SIGTERM
    again, warm = timed_start(f"{prefix}-restart", env, home, images)
    warm.counts_request = counts_request_seconds(again.port)
    again.stop(timeout=120)
    return cold, warm, records


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery")
    parser.add_argument("--keys", type=int, default=100_000, help="keys across the three count tables")
    parser.add_argument("--stores", default="memory://,rocksdb://")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="imgflow-recovery-"))
    spec = build_default_model(ROOT / "var" / "models" / "efficientnet-lite0")
    broker = start_broker(home / "logs")
    mongo = start_mongo(home / "mongo", home / "logs")
    results: dict[str, Start] = {}
    try:
        for store in args.stores.split(","):
            cold, warm, records = run_store(store, args.keys, broker, mongo, spec, home)
            results[store] = warm
            print(
                f"{store:<11} {records} changelog records ({args.keys} keys): first start ready "
                f"{cold.ready:.1f}s, served {cold.served:.1f}s, read {cold.replayed}; restart ready "
                f"{warm.ready:.1f}s, served {warm.served:.1f}s, read {warm.replayed}; "
                f"one /counts/ request {warm.counts_request:.2f}s",
                flush=True,
            )
    finally:
        broker.stop()
        mongo.stop()
        shutil.rmtree(home, ignore_errors=True)
    if {"memory://", "rocksdb://"} <= results.keys():
        mem, rocks = results["memory://"], results["rocksdb://"]
        print(
            f"\nrestart to counts served: memory:// {mem.served:.1f}s, rocksdb:// {rocks.served:.1f}s "
            f"({mem.served / rocks.served:.1f}x); to ready: {mem.ready:.1f}s vs {rocks.ready:.1f}s "
            f"({mem.ready / rocks.ready:.1f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
