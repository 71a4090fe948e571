"""End-to-end throughput on the embedded stack: ``make bench``.

Starts the embedded broker and MongoDB-protocol server, then for each
configuration runs real workers, publishes N image paths at once and measures
from the first publish to the last result (read from ``imgflow-stored`` / ``imgflow-failed``
by the same reader ``submit --wait`` uses).
Reports images/s and time to the first result; compare configurations as
ratios within one run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from imgflow.embedded import Service, deployment_env, free_port, start_broker, start_mongo, worker_argv
from imgflow.settings import Settings
from models.efficientnet_lite import build_default_model
from simulator.dataset import write_dataset

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"worker exited:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("worker not ready")


async def run_once(settings: Settings, paths: list[Path]) -> tuple[float, float]:
    """Publish ``paths`` and wait until each has a result: (elapsed, first result), in seconds."""
    from imgflow.sources.publish import path_message, publish_paths
    from imgflow.sources.results import ResultWatch, wait_for_results

    firsts: list[float] = []
    async with ResultWatch(settings) as watch:  # its position is taken before publishing
        started = time.perf_counter()
        messages = [path_message(p, "bench") for p in paths]
        watch.expect(m.image_id for m in messages)
        await publish_paths(messages, settings=settings)
        summary = await wait_for_results(
            watch, [m.image_id for m in messages], on_outcome=lambda _: firsts.append(time.perf_counter())
        )
    elapsed = time.perf_counter() - started
    if summary.failed:
        print(f"  {summary.failed} images failed: {dict(summary.failure_kinds)}", flush=True)
    return elapsed, (firsts[0] - started) if firsts else elapsed


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--configs", default="1x32,1x1,2x32", help="WORKERSxBATCH, comma separated")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="imgflow-bench-"))
    spec = build_default_model(ROOT / "var" / "models" / "efficientnet-lite0")
    dataset = write_dataset(home / "dataset")
    paths = [dataset[i % len(dataset)] for i in range(args.images)]
    broker = start_broker(home / "logs")
    mongo = start_mongo(home / "mongo", home / "logs")
    results = []
    try:
        for config in args.configs.split(","):
            n_workers, batch = (int(x) for x in config.split("x"))
            prefix = f"bench{uuid.uuid4().hex[:6]}"
            env = deployment_env(broker.url, mongo.url, prefix, home, spec, IMGFLOW_BATCH_SIZE=str(batch))
            settings = Settings(BROKER_URL=broker.url, IMGFLOW_TOPIC_PREFIX=prefix)
            workers: list[Service] = []
            try:
                for _ in range(n_workers):
                    port = free_port()
                    worker = Service(f"worker-{port}", port, home / f"{prefix}-{port}.log")
                    worker.start(worker_argv(port, loglevel="warn"), env=env)
                    workers.append(worker)
                for worker in workers:
                    assert worker.proc is not None
                    wait_ready(worker.port, worker.proc, worker.log_path)
                # Warm-up: the first images pay for graph tracing and connection set-up.
                _cold, cold_first = asyncio.run(run_once(settings, paths[:8]))
                print(f"{config:>6}: first result {cold_first:.2f}s after publishing to a fresh worker")
                elapsed, first = asyncio.run(run_once(settings, paths))
                results.append((config, len(paths) / elapsed, first, elapsed))
                print(
                    f"{config:>6}: {len(paths) / elapsed:6.1f} images/s end to end "
                    f"({len(paths)} in {elapsed:.1f}s, first result after {first:.2f}s)",
                    flush=True,
                )
            finally:
                for worker in workers:
                    worker.stop(timeout=30)
    finally:
        broker.stop()
        mongo.stop()
        shutil.rmtree(home, ignore_errors=True)
    base = results[0][1]
    print("\nratios to the first configuration:")
    for config, rate, _, _ in results:
        print(f"  {config:>6}: {rate / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
