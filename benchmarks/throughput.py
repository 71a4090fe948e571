"""How fast imgflow is, against its own limit and against the seeds: ``make bench``.

One run, one machine, every figure measured in it (the machine is shared and noisy: read
ratios, not absolute numbers). Input: camera-sized JPEGs (``--count`` distinct 1280x960
crops of the bundled photos, :func:`simulator.dataset.write_camera_dataset`).

- ``model_only_ips``: the default model alone, ``Classifier.predict`` on decoded tensors.
- ``model_limit_ips``: the essential work, decode + inference of the same images in one
  process, no Kafka, no database, with the worker's own functions, backend and thread
  settings, on all cores (decode threads feeding the model). The chain's target is 0.8x this.
- ``e2e_ips``: real workers (1, then 2) on the embedded broker and MongoDB-protocol server;
  ``--images`` paths published at once, timed to the last result.
- ``cpu_ms_per_image``: CPU time of each process (worker(s), broker, MongoDB server) during
  that run, per image.
- ``first_result_s``: a fresh worker, ready (``/health/`` 200): publish 8 paths, time to the
  first stored result.
- ``latency_ms``: one worker fed at half its measured rate for ``--latency-seconds``, one path
  at a time; per image ``stored_at - submitted_at`` (publish -> stored in MongoDB, the
  definition the dashboard's latency tiles use): p50, p95, p99.
- ``baseline_ips``: a seed-style consumer on the same images, broker and database
  (``benchmarks/seed_consumer.py``: per message open, resize, Keras ``predict`` on one image,
  ``insert_one``).
- ``agreement``: top-1 agreement of the path before this work (full decode, Keras) and the
  default path (draft decode, TFLite), on the demo dataset and on the camera images.

Writes ``benchmarks/results/latest.json`` (``--out``) and prints the ratios and targets.
``--code DIR`` runs the workers from another checkout (the code before a change), with the
same bench, input and services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from devstack.embedded import (
    Broker,
    Mongo,
    Service,
    deployment_env,
    free_port,
    shared_cores,
    start_broker,
    start_mongo,
    worker_argv,
)
from imgflow.imaging import decode_image
from imgflow.records import Stored, parse
from imgflow.settings import Settings
from models.backends import load_classifier
from models.efficientnet_lite import KERAS_SPEC_NAME, build_default_model
from models.spec import ModelSpec, load_spec
from simulator.dataset import write_camera_dataset, write_dataset

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"e2e_vs_limit": 0.8, "e2e_vs_baseline": 5.0, "p95_ms": 300, "p99_ms": 500, "first_result_s": 3.0}


# -- the essential work, in one process -----------------------------------------------------


def model_only(spec: ModelSpec, tensors: np.ndarray, batch: int) -> float:
    model = load_classifier(spec)
    model.predict(tensors[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(tensors), batch):
        model.predict(tensors[i : i + batch])
    return len(tensors) / (time.perf_counter() - started)


def essential_work(spec: ModelSpec, paths: list[Path], settings: Settings) -> float:
    """Decode in the worker's decode threads, classify in batches as they come: images/s."""
    model = load_classifier(spec, threads=settings.model_threads or None)

    def decode(path: Path) -> np.ndarray:
        return decode_image(path, spec.input_size, spec.resize, draft=settings.decode_draft).tensor

    model.predict(np.stack([decode(p) for p in paths[:4]]))  # warm-up
    with ThreadPoolExecutor(settings.decode_threads) as pool:
        started = time.perf_counter()
        pending = [pool.submit(decode, p) for p in paths]
        for i in range(0, len(pending), settings.batch_size):
            model.predict(np.stack([f.result() for f in pending[i : i + settings.batch_size]]))
        return len(paths) / (time.perf_counter() - started)


def agreement(spec: ModelSpec, keras_spec: ModelSpec, sets: dict[str, list[Path]]) -> dict[str, Any]:
    """Top-1 of full decode + Keras (before) against draft decode + the default model (now)."""
    before, now = load_classifier(keras_spec), load_classifier(spec)
    out: dict[str, Any] = {}
    for name, paths in sets.items():
        size, resize = spec.input_size, spec.resize
        full = np.stack([decode_image(p, size, resize, draft=False).tensor for p in paths])
        fast = np.stack([decode_image(p, size, resize).tensor for p in paths])
        old, new = before.predict(full), now.predict(fast)
        same = [a[0][0] == b[0][0] for a, b in zip(old, new, strict=True)]
        flipped = [a[0][1] for a, ok in zip(old, same, strict=True) if not ok]
        out[name] = {
            "images": len(paths),
            "top1_agreement": sum(same) / len(paths),
            "median_top1_score": float(np.median([a[0][1] for a in old])),
            "max_top1_score_of_a_changed_image": max(flipped) if flipped else None,
        }
    return out


# -- the chain, on real services ----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(worker: Service, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            tail = "\n".join(worker.log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"worker exited:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/health/", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("worker not ready")


def messages(paths: list[Path], tag: str) -> list[Any]:
    from sources.publish import path_message

    out = []
    for i, path in enumerate(paths):
        message = path_message(path, "bench")
        message.image_id = f"{tag}-{i}"
        out.append(message)
    return out


async def publish_and_wait(
    settings: Settings, paths: list[Path], tag: str, rate: float = 0.0
) -> tuple[float, float]:
    """Publish (all at once, or one every 1/rate s) and wait for every result: (seconds, first result s)."""
    from aiokafka import AIOKafkaProducer

    from imgflow.records import dumps
    from sources.results import ResultWatch, wait_for_results

    batch = messages(paths, tag)
    firsts: list[float] = []
    async with ResultWatch(settings) as watch:  # positioned before publishing
        watch.expect(m.image_id for m in batch)
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
        await producer.start()
        started = time.perf_counter()
        try:
            sent = []
            for i, m in enumerate(batch):
                if rate:
                    await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
                m.submitted_at = time.time()
                sent.append(await producer.send(settings.topic("paths"), dumps(m), key=m.image_id.encode()))
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        summary = await wait_for_results(
            watch,
            [m.image_id for m in batch],
            timeout=900,
            on_outcome=lambda _: firsts.append(time.perf_counter()),
        )
    if summary.failed or summary.timed_out:
        raise RuntimeError(
            f"{tag}: {summary.failed} failed, {summary.pending} missing: {dict(summary.failure_kinds)}"
        )
    return time.perf_counter() - started, (firsts[0] - started) if firsts else float("nan")


async def latencies_ms(settings: Settings, tag: str) -> list[float]:
    """publish -> stored of the images tagged ``tag``, read back from ``imgflow-stored``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic("stored"), bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[str, float] = {}
    try:
        while batch := await consumer.getmany(timeout_ms=2000):
            for records in batch.values():
                for record in records:
                    stored = parse(Stored, record.value)
                    if stored.image_id.startswith(f"{tag}-"):
                        found[stored.image_id] = (stored.stored_at - stored.submitted_at) * 1000
    finally:
        await consumer.stop()
    return sorted(found.values())


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def run_workers(
    n: int,
    broker: Broker,
    mongo: Mongo,
    spec: Path,
    home: Path,
    paths: list[Path],
    args: argparse.Namespace,
    code: Path | None = None,
    latency: bool = True,
) -> dict[str, Any]:
    """``n`` fresh workers: first result, saturation throughput with CPU per process, (n=1) latency."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    env = deployment_env(
        broker.url, mongo.url, prefix, home, spec, IMGFLOW_IMAGE_ROOTS=str(paths[0].parent), **shared_cores(n)
    )
    if code:
        env["PYTHONPATH"] = str(code)
    settings = Settings(BROKER_URL=broker.url, IMGFLOW_TOPIC_PREFIX=prefix)
    workers = [Service(f"worker-{i}", free_port(), home / f"{prefix}-worker-{i}.log") for i in range(n)]
    result: dict[str, Any] = {}
    try:
        for worker in workers:
            worker.start(worker_argv(worker.port, loglevel="warn"), env=env, cwd=code)
        for worker in workers:
            wait_ready(worker)
        _, result["first_result_s"] = asyncio.run(publish_and_wait(settings, paths[:8], "cold"))
        load = [paths[i % len(paths)] for i in range(args.images)]
        pids = {"worker": [w.pid for w in workers], "broker": [broker.pid], "mongo": [mongo.pid]}
        before = {k: sum(cpu_seconds(p) for p in v if p) for k, v in pids.items()}
        seconds, _ = asyncio.run(publish_and_wait(settings, load, "load"))
        after = {k: sum(cpu_seconds(p) for p in v if p) for k, v in pids.items()}
        result["e2e_ips"] = len(load) / seconds
        result["cpu_ms_per_image"] = {k: (after[k] - before[k]) * 1000 / len(load) for k in pids}
        rate, first = result["e2e_ips"], result["first_result_s"]
        print(f"  {n} worker(s): {rate:.1f} images/s, first result {first:.2f} s", flush=True)
        if n == 1 and latency:
            rate = result["e2e_ips"] / 2
            count = max(50, int(rate * args.latency_seconds))
            asyncio.run(
                publish_and_wait(settings, [paths[i % len(paths)] for i in range(count)], "paced", rate)
            )
            ordered = asyncio.run(latencies_ms(settings, "paced"))
            result["latency_ms"] = {
                "rate_ips": rate,
                "count": len(ordered),
                **{f"p{q}": percentile(ordered, q) for q in (50, 95, 99)},
                "mean": statistics.fmean(ordered),
            }
            print(f"  latency at {rate:.1f} images/s: {result['latency_ms']}", flush=True)
    finally:
        for worker in workers:
            worker.stop(timeout=30)
    return result


def seed_baseline(
    broker: Broker, mongo: Mongo, spec: ModelSpec, keras_spec: ModelSpec, paths: list[Path]
) -> float:
    """The seed-style consumer in its own process, on paths published to a topic of its own."""
    from aiokafka import AIOKafkaProducer

    from imgflow.records import dumps

    topic = f"seed-{uuid.uuid4().hex[:6]}"

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for m in messages(paths, "seed"):
                await producer.send(topic, dumps(m), key=m.image_id.encode())
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(publish())
    argv = [sys.executable, "-m", "benchmarks.seed_consumer", broker.bootstrap, topic, mongo.url, topic]
    argv += [str(keras_spec.artefact), str(spec.spec_path.parent / "labels.txt"), str(len(paths))]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"seed consumer failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["ips"])


def versus(args: argparse.Namespace) -> int:
    """A/B in one run: one worker from this checkout and one from ``--vs`` (the code before a
    change), ``--repeat`` rounds in turn (the first of a round alternates) on the same images,
    broker and database; the median worker CPU per image of each, and their ratio."""
    spec_path = (args.model or build_default_model(ROOT / "var" / "models" / "efficientnet-lite0")).resolve()
    home = Path(tempfile.mkdtemp(prefix="imgflow-bench-"))
    cpu: dict[str, list[float]] = {"this": [], "vs": []}
    ips: dict[str, list[float]] = {"this": [], "vs": []}
    try:
        camera = write_camera_dataset(home / "camera", count=args.count)
        broker, mongo = start_broker(home / "logs"), start_mongo(home / "mongo", home / "logs")
        try:
            pair = [("this", None), ("vs", args.vs.resolve())]
            for i in range(args.repeat):
                # Each goes first in every other round: the broker and database fill as runs go.
                for name, code in pair if i % 2 == 0 else pair[::-1]:
                    run = run_workers(1, broker, mongo, spec_path, home, camera, args, code, latency=False)
                    cpu[name].append(run["cpu_ms_per_image"]["worker"])
                    ips[name].append(run["e2e_ips"])
                    print(f"  run {i + 1} {name}: worker {cpu[name][-1]:.1f} ms CPU per image", flush=True)
        finally:
            broker.stop()
            mongo.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in cpu.items()}
    result = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "vs": str(args.vs),
        "worker_cpu_ms_per_image": cpu,
        "e2e_ips": ips,
        "median_worker_cpu_ms_per_image": median,
        "ratio_this_vs": median["this"] / median["vs"],
    }
    out = args.out.with_name("versus.json") if args.out.name == "latest.json" else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"worker CPU per image, median of {args.repeat}: this {median['this']:.1f} ms, "
        f"{args.vs} {median['vs']:.1f} ms, ratio {result['ratio_this_vs']:.3f}\nwritten to {out}"
    )
    return 0


# -- report -------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> list[str]:
    one = results["runs"]["1"]
    lines = [
        f"backend {results['backend']}, input {results['input']['width']}x{results['input']['height']} JPEG"
    ]
    ratios = {"e2e_vs_limit": one["e2e_ips"] / results["model_limit_ips"]}
    if results.get("baseline_ips"):
        ratios["e2e_vs_baseline"] = one["e2e_ips"] / results["baseline_ips"]
    if "2" in results["runs"]:
        ratios["two_vs_one_worker"] = results["runs"]["2"]["e2e_ips"] / one["e2e_ips"]
    results["ratios"] = ratios
    checks = {
        "e2e_vs_limit": (ratios["e2e_vs_limit"], ">=", TARGETS["e2e_vs_limit"]),
        "e2e_vs_baseline": (ratios.get("e2e_vs_baseline"), ">=", TARGETS["e2e_vs_baseline"]),
        "p95_ms": (one["latency_ms"]["p95"], "<", TARGETS["p95_ms"]),
        "p99_ms": (one["latency_ms"]["p99"], "<", TARGETS["p99_ms"]),
        "first_result_s": (one["first_result_s"], "<", TARGETS["first_result_s"]),
    }
    for name, (value, op, target) in checks.items():
        if value is None:
            continue
        met = value >= target if op == ">=" else value < target
        lines.append(f"  {name:<18} {value:8.2f}  target {op} {target:<6} {'met' if met else 'NOT met'}")
    if "two_vs_one_worker" in ratios:
        lines.append(f"  {'two_vs_one_worker':<18} {ratios['two_vs_one_worker']:8.2f}  (target: no slower)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--images", type=int, default=600, help="paths published at once per run")
    parser.add_argument("--count", type=int, default=300, help="distinct camera-sized images")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--model", type=Path, default=None, help="spec (default: the built default model)")
    parser.add_argument("--code", type=Path, default=None, help="run the workers from this checkout")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-two", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    parser.add_argument(
        "--vs", type=Path, default=None, help="A/B: worker CPU per image, this checkout vs DIR"
    )
    parser.add_argument("--repeat", type=int, default=3, help="A/B runs of each (the median is reported)")
    args = parser.parse_args()
    if args.vs:
        return versus(args)
    settings = Settings()
    default = build_default_model(ROOT / "var" / "models" / "efficientnet-lite0")
    spec_path = (args.model or default).resolve()
    spec, keras_spec = load_spec(spec_path), load_spec(default.with_name(KERAS_SPEC_NAME))
    home = Path(tempfile.mkdtemp(prefix="imgflow-bench-"))
    try:
        camera = write_camera_dataset(home / "camera", count=args.count)
        demo = write_dataset(home / "demo")
        results: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=args.code or ROOT
            ).stdout.strip(),
            "machine": {"cores": os.cpu_count(), "loadavg": os.getloadavg()},
            "backend": spec.format,
            "model_spec": str(spec_path),
            "input": {
                "width": 1280,
                "height": 960,
                "count": len(camera),
                "mean_bytes": int(statistics.fmean(p.stat().st_size for p in camera)),
            },
            "settings": {
                "model_threads": settings.model_threads or os.cpu_count(),
                "decode_threads": settings.decode_threads,
                "batch_size": settings.batch_size,
                "decode_draft": settings.decode_draft,
            },
        }
        print("the limit (one process, no Kafka, no database)...", flush=True)
        tensors = np.stack([decode_image(p, spec.input_size, spec.resize).tensor for p in camera])
        results["model_only_ips"] = model_only(spec, tensors, settings.batch_size)
        results["model_limit_ips"] = essential_work(spec, camera, settings)
        alone, limit = results["model_only_ips"], results["model_limit_ips"]
        print(f"  model alone {alone:.1f} images/s; decode + model {limit:.1f}", flush=True)
        results["agreement"] = agreement(spec, keras_spec, {"demo": demo, "camera": camera})
        print(f"  top-1 agreement with full decode + Keras: {json.dumps(results['agreement'])}", flush=True)
        broker, mongo = start_broker(home / "logs"), start_mongo(home / "mongo", home / "logs")
        try:
            print("the chain (embedded broker and MongoDB-protocol server)...", flush=True)
            results["runs"] = {"1": run_workers(1, broker, mongo, spec_path, home, camera, args, args.code)}
            if not args.skip_two:
                results["runs"]["2"] = run_workers(2, broker, mongo, spec_path, home, camera, args, args.code)
            if not args.skip_baseline:
                print("the seed-style consumer...", flush=True)
                results["baseline_ips"] = seed_baseline(broker, mongo, spec, keras_spec, camera[:150])
                print(f"  {results['baseline_ips']:.1f} images/s", flush=True)
        finally:
            broker.stop()
            mongo.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    lines = report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + "\n".join(lines) + f"\n\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
