"""Lag-based autoscaling, simulated with real workers: ``make bench-autoscale``.

KEDA's Kafka scaler (deploy/kubernetes/autoscaling-kafka.yaml) sets the worker Deployment's
replicas from the consumer group's lag: ``desired = ceil(lag / lagThreshold)`` per trigger
topic, the largest wins, between 1 and the partition count, polled every ``pollingInterval``;
the HPA under it scales up at once and down only after its stabilisation window. The rule's
numbers (topics, threshold, polling, scale-down window) are read from that manifest. No
cluster runs here, so this applies that same rule to real ``faust -A imgflow worker``
processes on this machine (each held to about one core, as a pod with a 1-CPU limit: one
model thread, one decode thread), against a spiky load (the simulator's ``spikes`` pattern:
a steady base rate plus a burst every ``--spike-every`` s), and, as the comparison, the
same load on one fixed worker.

Writes ``benchmarks/results/autoscale.json`` and ``autoscale.png`` (lag and replicas over
time, both runs): peak lag, time to drain after the last spike, workers over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.throughput import wait_ready
from devstack.embedded import Service, deployment_env, free_port, start_broker, start_mongo, worker_argv
from devstack.kafka import backlog
from imgflow.settings import Settings
from models.efficientnet_lite import build_default_model
from simulator.dataset import write_dataset
from simulator.simulator import Pattern, schedule

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
MANIFEST = ROOT / "deploy" / "kubernetes" / "autoscaling-kafka.yaml"


def keda_rule(path: Path = MANIFEST) -> dict[str, Any]:
    """The scaling rule of the ScaledObject: trigger topic suffixes, lagThreshold, pollingInterval,
    the scale-down stabilisation window."""
    import yaml

    spec = yaml.safe_load(path.read_text())["spec"]
    triggers = [t["metadata"] for t in spec["triggers"] if t["type"] == "kafka"]
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
    return {
        "topics": [t["topic"].removeprefix("imgflow-") for t in triggers],
        "lag_threshold": int(triggers[0]["lagThreshold"]),
        "polling": float(spec.get("pollingInterval", 30)),
        "stabilization": float(behavior.get("scaleDown", {}).get("stabilizationWindowSeconds", 300)),
    }


class Fleet:
    """Worker processes of one deployment, started and stopped like a Deployment's pods."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env = env
        self.home = home
        self.workers: list[Service] = []
        self.started = 0

    def scale(self, n: int) -> None:
        while len(self.workers) < n:
            self.started += 1
            worker = Service(f"worker-{self.started}", free_port(), self.home / f"worker-{self.started}.log")
            data = self.home / "data" / f"worker-{self.started}"
            worker.start(
                worker_argv(worker.port, loglevel="warn"), env={**self.env, "IMGFLOW_DATA_DIR": str(data)}
            )
            self.workers.append(worker)
        while len(self.workers) > n:
            self.workers.pop().stop(timeout=30)  # SIGTERM: commit, leave the group

    def stop(self) -> None:
        self.scale(0)


async def publish(settings: Settings, images: list[Path], pattern: Pattern, sent: list[float]) -> None:
    """The simulator's schedule, published with a plain producer; ``sent`` gets each send time."""
    from aiokafka import AIOKafkaProducer

    from imgflow.records import dumps
    from sources.publish import path_message

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        started = time.monotonic()
        i = 0
        for at, n in schedule(pattern):
            if pattern.duration is not None and at > pattern.duration:
                break
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            for _ in range(n):
                m = path_message(images[i % len(images)], "autoscale")
                i += 1
                await producer.send(settings.topic("paths"), dumps(m), key=m.image_id.encode())
                sent.append(time.monotonic())
        await producer.flush()
    finally:
        await producer.stop()


def run(
    name: str, broker, mongo, model: Path, images: list[Path], args: argparse.Namespace, autoscale: bool
) -> dict[str, Any]:
    from pymongo import MongoClient

    prefix = f"scale{uuid.uuid4().hex[:6]}"
    home = Path(tempfile.mkdtemp(prefix=f"imgflow-{name}-"))
    env = deployment_env(
        broker.url,
        mongo.url,
        prefix,
        home,
        model,
        IMGFLOW_IMAGE_ROOTS=str(images[0].parent),
        IMGFLOW_PARTITIONS=str(PARTITIONS),
        IMGFLOW_MODEL_THREADS="1",
        IMGFLOW_DECODE_THREADS="1",
    )
    settings = Settings(
        BROKER_URL=broker.url, IMGFLOW_TOPIC_PREFIX=prefix, IMGFLOW_APP_ID=env["IMGFLOW_APP_ID"]
    )
    db: Any = MongoClient(mongo.url)[env["MONGO_DB"]]
    fleet = Fleet(env, home)
    pattern = Pattern(
        kind="spikes",
        rate=args.rate,
        spike_every=args.spike_every,
        spike_size=args.spike_size,
        duration=args.spikes * args.spike_every + 1,
        seed=1,
    )
    samples: list[dict[str, Any]] = []
    sent: list[float] = []
    try:
        fleet.scale(1)
        wait_ready(fleet.workers[0], timeout=300)
        loop = asyncio.new_event_loop()
        publisher = loop.create_task(publish(settings, images, pattern, sent))
        t0 = time.monotonic()
        below_since: float | None = None
        next_poll = t0
        while True:
            now = time.monotonic()
            lag = loop.run_until_complete(
                backlog(
                    settings.bootstrap_servers, env["IMGFLOW_APP_ID"], [settings.topic("paths")], PARTITIONS
                )
            )
            stored = db.images.count_documents({})
            if autoscale and now >= next_poll:
                next_poll = now + args.polling
                desired = min(PARTITIONS, max(1, math.ceil(lag / args.lag_threshold)))
                current = len(fleet.workers)
                if desired > current:
                    fleet.scale(desired)  # up at once
                    below_since = None
                elif desired < current:
                    below_since = below_since or now
                    if now - below_since >= args.stabilization:
                        fleet.scale(desired)
                        below_since = None
                else:
                    below_since = None
            samples.append(
                {
                    "t": round(now - t0, 1),
                    "lag": lag,
                    "replicas": len(fleet.workers),
                    "stored": stored,
                    "sent": len(sent),
                }
            )
            loop.run_until_complete(asyncio.sleep(args.sample))
            if publisher.done() and stored >= len(sent) and lag == 0:
                break
            if now - t0 > args.timeout:
                raise TimeoutError(f"{name}: not drained after {args.timeout:g}s ({stored} of {len(sent)})")
        publisher.result()
        loop.close()
    finally:
        fleet.stop()
        shutil.rmtree(home, ignore_errors=True)
    last_spike = args.spikes * args.spike_every
    peak = max(samples, key=lambda s: s["lag"])
    drained_at = samples[-1]["t"]
    return {
        "autoscale": autoscale,
        "images": len(sent),
        "peak_lag": peak["lag"],
        "peak_lag_at_s": peak["t"],
        "max_replicas": max(s["replicas"] for s in samples),
        "workers_started": fleet.started,
        "drained_at_s": drained_at,
        "drain_after_last_spike_s": round(drained_at - last_spike, 1),
        "drain_per_spike_s": drain_per_spike(samples, args.spike_every, args.spikes, args.rate),
        "samples": samples,
    }


def drain_per_spike(
    samples: list[dict[str, Any]], spike_every: float, spikes: int, rate: float
) -> list[float | None]:
    """Seconds from each spike until the lag is back to what the base load alone leaves
    (two seconds of it) (None: not within the run)."""
    floor = max(1.0, 2 * rate)
    out: list[float | None] = []
    for k in range(1, spikes + 1):
        at = k * spike_every
        busy = [s for s in samples if s["t"] > at + 1]
        started = next((i for i, s in enumerate(busy) if s["lag"] > floor), None)
        done = (
            next((s["t"] for s in busy[started:] if s["lag"] <= floor), None) if started is not None else None
        )
        out.append(round(done - at, 1) if done is not None else None)
    return out


def plot(results: dict[str, Any], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for name, colour in (("fixed", "tab:grey"), ("autoscaled", "tab:blue")):
        samples = results[name]["samples"]
        ts = [s["t"] for s in samples]
        top.plot(ts, [s["lag"] for s in samples], label=f"{name}: lag", color=colour)
        bottom.step(ts, [s["replicas"] for s in samples], where="post", label=name, color=colour)
    for k in range(1, args.spikes + 1):
        for ax in (top, bottom):
            ax.axvline(k * args.spike_every, color="tab:red", alpha=0.2)
    top.set_ylabel(f"lag ({', '.join(args.topics)})")
    top.legend(loc="upper right")
    bottom.set_ylabel("workers")
    bottom.set_xlabel("seconds (red: a spike)")
    bottom.set_yticks(range(0, PARTITIONS + 1))
    bottom.legend(loc="upper right")
    fig.suptitle(
        f"Spikes of {args.spike_size} every {args.spike_every:g}s over {args.rate:g}/s; "
        f"desired = max over topics of ceil(lag / {args.lag_threshold}), 1..{PARTITIONS}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.autoscale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rate", type=float, default=4.0, help="base images/s")
    parser.add_argument("--spike-size", type=int, default=900)
    parser.add_argument("--spike-every", type=float, default=60.0)
    parser.add_argument("--spikes", type=int, default=3)
    rule = keda_rule()
    parser.add_argument("--lag-threshold", type=int, default=rule["lag_threshold"], help="(the manifest's)")
    parser.add_argument("--polling", type=float, default=rule["polling"], help="(the manifest's)")
    parser.add_argument("--stabilization", type=float, default=rule["stabilization"], help="(the manifest's)")
    parser.add_argument("--topics", nargs="+", default=rule["topics"], help="(the manifest's triggers)")
    parser.add_argument("--sample", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "autoscale.json")
    args = parser.parse_args()
    model = build_default_model(ROOT / "var" / "models" / "efficientnet-lite0").resolve()
    home = Path(tempfile.mkdtemp(prefix="imgflow-autoscale-"))
    try:
        images = write_dataset(home / "dataset")
        broker, mongo = start_broker(home / "logs"), start_mongo(home / "mongo", home / "logs")
        results: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
            ).stdout.strip(),
            "rule": {
                k: getattr(args, k)
                for k in (
                    "rate",
                    "spike_size",
                    "spike_every",
                    "spikes",
                    "lag_threshold",
                    "polling",
                    "stabilization",
                )
            },
            "partitions": PARTITIONS,
        }
        try:
            for name, autoscale in (("fixed", False), ("autoscaled", True)):
                print(f"{name}...", flush=True)
                results[name] = run(name, broker, mongo, model, images, args, autoscale)
                r = results[name]
                print(
                    f"  {r['images']} images, peak lag {r['peak_lag']} at {r['peak_lag_at_s']}s, "
                    f"drained {r['drain_after_last_spike_s']}s after the last spike, "
                    f"up to {r['max_replicas']} workers; each spike drained in {r['drain_per_spike_s']} s",
                    flush=True,
                )
        finally:
            broker.stop()
            mongo.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"), args)
    print(f"written to {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
