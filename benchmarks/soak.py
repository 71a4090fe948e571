"""Soak: nothing lost, nothing doubled, nothing stalled through kills, stops and a database outage.

``make soak`` (not part of ``make test``). On the embedded broker and
MongoDB-protocol server it runs 2 workers, publishes 2,000 image paths at a
steady rate, and at random moments (seeded, printed) kills a worker with
SIGKILL three times, stops one with SIGTERM once (each is restarted, as a
routine restart would), and stops MongoDB for 30 s once. Then it checks:

- every image exactly once in ``images``, one ``predictions`` document per
  image (one model version), no failures;
- the label counts served by ``/counts/`` add up to the stored total;
- zero stalls: every image stored within a deadline after the last event,
  with no restart other than the planned ones;

and reports the takeover time of each kill/stop: from the signal to the first
result stored from a partition the stopped worker owned.

``--runs 5`` runs it five times in a row, each on a fresh stack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka.partitioner import murmur2

from devstack.embedded import (
    Mongo,
    Service,
    deployment_env,
    free_port,
    start_broker,
    start_mongo,
    worker_argv,
)
from models.efficientnet_lite import build_default_model
from simulator.dataset import write_dataset

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4


def partition_of(image_id: str, partitions: int = PARTITIONS) -> int:
    """Kafka's default partitioner for a keyed message (the paths topic is keyed by image_id)."""
    return (murmur2(image_id.encode()) & 0x7FFFFFFF) % partitions


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass
class Worker:
    name: str
    env: dict[str, str]
    home: Path
    service: Service | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        assert self.service is not None
        return f"http://127.0.0.1:{self.service.port}"

    def start(self) -> None:
        self.starts += 1
        port = free_port()
        self.service = Service(self.name, port, self.home / f"{self.name}-{self.starts}.log")
        data_dir = self.home / "data" / self.name
        self.service.start(worker_argv(port), env={**self.env, "IMGFLOW_DATA_DIR": str(data_dir)})

    def ready(self) -> bool:
        assert self.service is not None and self.service.proc is not None
        if self.service.proc.poll() is not None:
            code = self.service.proc.returncode
            raise RuntimeError(f"{self.name} exited with {code}: see {self.service.log_path}")
        try:
            with urllib.request.urlopen(self.url + "/health/", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    async def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s")
            await asyncio.sleep(0.5)

    def paths_partitions(self, prefix: str) -> set[int]:
        """Partitions of the paths topic assigned to this worker now (from its health view)."""
        try:
            with urllib.request.urlopen(self.url + "/health/", timeout=5) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:  # 503 while starting or degraded: same body
            body = exc.read()
        except OSError:
            return set()
        assigned = json.loads(body).get("assigned", [])
        topic = f"{prefix}-paths["
        return {int(tp[len(topic) : -1]) for tp in assigned if tp.startswith(topic)}


@dataclass
class Run:
    images: int
    rate: float
    seed: int
    outage: float
    kills: int
    stops: int
    deadline: float
    events: list[dict[str, Any]] = field(default_factory=list)


async def publish(bootstrap: str, topic: str, paths: list[Path], rate: float, ids: list[str]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        start = time.monotonic()
        for i, path in enumerate(paths):
            image_id = uuid.uuid4().hex
            ids.append(image_id)
            body = {"image_id": image_id, "path": str(path), "source": "soak", "submitted_at": time.time()}
            await producer.send(topic, json.dumps(body).encode(), key=image_id.encode())
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await producer.flush()
    finally:
        await producer.stop()


async def takeover(db: Any, partitions: set[int], since: datetime, timeout: float) -> float | None:
    """Seconds from ``since`` to the first result stored from one of ``partitions``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        docs = await asyncio.to_thread(
            lambda: list(db.images.find({"updated_at": {"$gt": since}}, {"_id": 1, "updated_at": 1}))
        )
        hits = [d["updated_at"] for d in docs if partition_of(d["_id"]) in partitions]
        if hits:
            return (min(hits) - since).total_seconds()
        await asyncio.sleep(0.25)
    return None


async def soak_once(run: Run, home: Path, spec: Path, dataset: list[Path]) -> dict[str, Any]:

    from imgflow.mongo import connect

    rng = random.Random(run.seed)
    broker = start_broker(home / "logs")
    mongo: Mongo = start_mongo(home / "mongo", home / "logs")
    prefix = f"soak{uuid.uuid4().hex[:6]}"
    env = deployment_env(
        broker.url,
        mongo.url,
        prefix,
        home,
        spec,
        IMGFLOW_PARTITIONS=str(PARTITIONS),
        IMGFLOW_IMAGE_ROOTS=str(home),
        # One window for the whole soak, so its total is comparable with the stored total.
        IMGFLOW_WINDOW_SECONDS="86400",
        IMGFLOW_WINDOW_EXPIRES="172800",
    )
    workers = [Worker(f"worker{i + 1}", env, home) for i in range(2)]
    client: Any = connect(mongo.url, serverSelectionTimeoutMS=60_000)  # outlives the outage
    db = client[prefix]
    ids: list[str] = []
    started = time.monotonic()
    try:
        for w in workers:
            w.start()
        for w in workers:
            await w.wait_ready()
        paths = [dataset[i % len(dataset)] for i in range(run.images)]
        duration = run.images / run.rate
        kinds = ["kill"] * run.kills + ["term"] * run.stops + ["mongo"]
        rng.shuffle(kinds)
        # Random moments in the publishing window, at least 12 s apart so each event is its own.
        slots = sorted(rng.uniform(0.08, 0.92) * duration for _ in kinds)
        for i in range(1, len(slots)):
            slots[i] = max(slots[i], slots[i - 1] + 12)
        publisher = asyncio.create_task(publish(broker.bootstrap, f"{prefix}-paths", paths, run.rate, ids))
        t0 = time.monotonic()
        for kind, at in zip(kinds, slots, strict=True):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            event: dict[str, Any] = {"event": kind, "at": round(time.monotonic() - t0, 1)}
            if kind == "mongo":
                await asyncio.to_thread(mongo.stop)
                await asyncio.sleep(run.outage)
                mongo = await asyncio.to_thread(start_mongo, home / "mongo", home / "logs", port=mongo.port)
                event["down_s"] = run.outage
            else:
                for w in workers:  # the previous restart has rejoined: a kill hits a working member
                    await w.wait_ready()
                victim = rng.choice(workers)
                owned = await asyncio.to_thread(victim.paths_partitions, prefix)
                since = datetime.now(UTC)
                assert victim.service is not None
                if kind == "kill":
                    victim.service.kill()
                else:
                    await asyncio.to_thread(victim.service.stop, 60)
                event.update(worker=victim.name, partitions=sorted(owned))
                took = await takeover(db, owned, since, timeout=120) if owned else None
                event["takeover_s"] = round(took, 1) if took is not None else None
                victim.start()  # a routine restart
            run.events.append(event)
            print(f"  event {json.dumps(event)}", flush=True)
        await publisher
        for w in workers:
            await w.wait_ready()
        # Zero stalls: everything stored by the deadline, no unplanned restart.
        deadline = time.monotonic() + run.deadline
        stored = 0
        while time.monotonic() < deadline:
            stored = await asyncio.to_thread(db.images.count_documents, {})
            if stored >= len(ids):
                break
            await asyncio.sleep(1)
        stalled: dict[str, Any] = {}
        if stored < len(ids):
            missing = set(ids) - {d["_id"] for d in db.images.find({}, {"_id": 1})}
            stalled = {
                "missing": len(missing),
                "partitions": sorted({partition_of(i) for i in missing}),
                "consumers": {w.name: get_json(w.url + "/debug/consumer") for w in workers},
            }
        # Counts are kept downstream of storage: give them a moment to catch up.
        counts_total = None
        for _ in range(120):
            body = get_json(workers[0].url + "/counts/?windows=1000")
            counts_total = sum(w["total"] for w in body["windows"])
            if body["complete"] and counts_total == stored:
                break
            await asyncio.sleep(1)
        image_ids = [d["_id"] for d in db.images.find({}, {"_id": 1})]
        result = {
            "seed": run.seed,
            "images": len(ids),
            "stored": len(image_ids),
            "exactly_once": sorted(image_ids) == sorted(ids),
            "predictions": db.predictions.count_documents({}),
            "failures": db.failures.count_documents({}),
            "counts_total": counts_total,
            "stalls": 0 if not stalled else 1,
            "takeover_s": [e["takeover_s"] for e in run.events if "takeover_s" in e],
            "events": run.events,
            "duration_s": round(time.monotonic() - started, 1),
        }
        if stalled:
            result["stalled"] = stalled
        result["ok"] = (
            result["exactly_once"]
            and result["predictions"] == len(ids)
            and result["failures"] == 0
            and counts_total == len(ids)
            and not stalled
            and all(e.get("takeover_s") is not None for e in run.events if e.get("partitions"))
        )
        return result
    finally:
        for w in workers:
            if w.service:
                w.service.stop(30)
        client.close()
        mongo.stop()
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=12.0, help="images published per second")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of a worker")
    parser.add_argument("--stops", type=int, default=1, help="SIGTERMs of a worker")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds MongoDB is down (once)")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds after publishing to finish")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs) even on success")
    args = parser.parse_args()
    spec = build_default_model(ROOT / "var" / "models" / "efficientnet-lite0")
    results = []
    for n in range(args.runs):
        seed = args.seed + n if args.seed is not None else random.randrange(1_000_000)
        home = Path(tempfile.mkdtemp(prefix="imgflow-soak-"))
        dataset = write_dataset(home / "dataset")
        run = Run(args.images, args.rate, seed, args.outage, args.kills, args.stops, args.deadline)
        print(f"soak run {n + 1}/{args.runs}: seed {seed}, {args.images} images at {args.rate:g}/s ({home})")
        result = asyncio.run(soak_once(run, home, spec, dataset))
        results.append(result)
        summary = {k: v for k, v in result.items() if k not in ("events", "stalled")}
        print(f"result {n + 1}: {json.dumps(summary)}", flush=True)
        if result["ok"] and not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        elif not result["ok"]:
            print(f"  FAILED: logs kept in {home}\n  {json.dumps(result.get('stalled', {}))[:2000]}")
    ok = sum(r["ok"] for r in results)
    takeovers = [t for r in results for t in r["takeover_s"] if t is not None]
    print(f"\n{ok}/{len(results)} runs passed", end="")
    if takeovers:
        print(f"; takeover after kill/stop: min {min(takeovers):.1f}s, max {max(takeovers):.1f}s", end="")
    print()
    return 0 if ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
