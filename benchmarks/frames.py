"""Frames and faces: ``make bench-frames``.

One run, one machine (read ratios, not absolute numbers):

- ``engine``: the face model alone (MTCNN + FaceNet, ``FaceEngine.faces``) on 640x480 frames,
  in batches of ``IMGFLOW_BATCH_SIZE``: frames/s, faces/s, ms per frame.
- ``chain``: one real worker on the embedded broker and MongoDB-protocol server, frames
  published by a plain Kafka client to ``imgflow-frames`` at ``--fps`` (a webcam's rate) for
  ``--seconds``; per frame ``stored_at - submitted_at`` read back from ``imgflow-stored``
  (publish -> stored, what the Live tab waits for before its next poll): p50/p95/p99, for the
  default classifier and for the face model. Then ``--burst`` frames at once: the worker's
  frames/s at saturation with each model.

- ``page``: the whole way, as a person sees it: the dashboard's Live tab in headless
  Chromium with its fake camera at the tab's default 5 frames/s for ``--seconds`` (after a
  10 s first run that warms up the page's producer and the worker, also reported); the
  tab's own figures (sent, results, dropped; latency from a snapshot's arrival at the
  dashboard to its result on the page, which polls MongoDB every ``POLL_MS``).

Writes ``benchmarks/results/frames.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from benchmarks.throughput import cpu_seconds, percentile, wait_ready
from devstack.embedded import Service, deployment_env, free_port, start_broker, start_mongo, worker_argv
from imgflow.records import Stored, parse
from imgflow.settings import Settings
from models.efficientnet_lite import build_default_model

ROOT = Path(__file__).resolve().parent.parent
FACE_SPEC = ROOT / "models" / "specs" / "faces.toml"
TARGET_P95_MS = 500
#: The Live tab's first run, not measured (its stats line is kept in the results).
WARM_UP_S = 10


def frames(count: int) -> list[bytes]:
    """640x480 JPEG frames: faces (two people, mirrored and shifted) and scenes without one."""
    from matplotlib import cbook
    from skimage import data

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
        grace = hopper.convert("RGB")
    sources = [
        Image.fromarray(data.astronaut()),
        grace,
        Image.fromarray(data.coffee()),
        Image.fromarray(data.chelsea()),
    ]
    out = []
    for i in range(count):
        image = sources[i % len(sources)]
        if (i // len(sources)) % 2:
            image = ImageOps.mirror(image)
        shift = (i * 7) % 40
        image = ImageOps.fit(image.crop((shift, 0, image.width, image.height)), (640, 480))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def engine_alone(jpegs: list[bytes], batch: int) -> dict[str, Any]:
    from models.face_model import load_face_model
    from models.preprocess import fit_to_input
    from models.spec import load_spec

    spec = load_spec(FACE_SPEC)
    model = load_face_model(spec)
    tensors = [fit_to_input(Image.open(io.BytesIO(j)), spec.input_size, spec.resize) for j in jpegs]
    model.faces(np.stack(tensors[:batch]))  # warm-up
    started = time.perf_counter()
    faces = 0
    for i in range(0, len(tensors), batch):
        faces += sum(len(hits) for hits in model.faces(np.stack(tensors[i : i + batch])))
    seconds = time.perf_counter() - started
    return {
        "frames": len(tensors),
        "faces": faces,
        "frames_per_s": len(tensors) / seconds,
        "faces_per_s": faces / seconds,
        "ms_per_frame": seconds * 1000 / len(tensors),
        "batch": batch,
    }


async def send(settings: Settings, jpegs: list[bytes], tag: str, fps: float) -> None:
    """Publish frames with a plain producer, one every 1/fps s (0: all at once)."""
    from aiokafka import AIOKafkaProducer

    from imgflow.frames import frame_headers

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        started = time.perf_counter()
        pending = []
        for i, data in enumerate(jpegs):
            if fps:
                await asyncio.sleep(max(0.0, started + i / fps - time.perf_counter()))
            headers = frame_headers(f"{tag}-{i}", source="bench-cam", submitted_at=time.time())
            pending.append(
                await producer.send(settings.topic("frames"), data, key=b"bench-cam", headers=headers)
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def stored_times(
    settings: Settings, tag: str, want: int, timeout: float
) -> dict[str, tuple[float, float]]:
    """(submitted_at, stored_at) of the frames tagged ``tag``, read from ``imgflow-stored``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic("stored"), bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[str, tuple[float, float]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(found) < want and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    stored = parse(Stored, record.value)
                    if stored.image_id.startswith(f"{tag}-"):
                        found[stored.image_id] = (stored.submitted_at, stored.stored_at)
    finally:
        await consumer.stop()
    return found


def chain(
    model: Path, jpegs: list[bytes], broker, mongo, home: Path, args: argparse.Namespace
) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    env = deployment_env(broker.url, mongo.url, prefix, home, model)
    settings = Settings(BROKER_URL=broker.url, IMGFLOW_TOPIC_PREFIX=prefix)
    worker = Service("worker", free_port(), home / f"{prefix}-worker.log")
    result: dict[str, Any] = {"model": str(model)}
    try:
        worker.start(worker_argv(worker.port, loglevel="warn"), env=env)
        wait_ready(worker, timeout=300)
        count = int(args.fps * args.seconds)
        paced = [jpegs[i % len(jpegs)] for i in range(count)]
        asyncio.run(send(settings, paced, "paced", args.fps))
        times = asyncio.run(stored_times(settings, "paced", count, timeout=300))
        ordered = sorted((s - p) * 1000 for p, s in times.values())
        result["paced"] = {
            "fps": args.fps,
            "sent": count,
            "stored": len(ordered),
            **{f"p{q}": percentile(ordered, q) for q in (50, 95, 99)},
            "mean": statistics.fmean(ordered),
        }
        print(f"  {args.fps:g} frames/s: {json.dumps(result['paced'])}", flush=True)
        burst = [jpegs[i % len(jpegs)] for i in range(args.burst)]
        pids = {"worker": worker.pid, "broker": broker.pid, "mongo": mongo.pid}
        before = {k: cpu_seconds(p) for k, p in pids.items() if p}
        started = time.perf_counter()
        asyncio.run(send(settings, burst, "burst", 0))
        done = asyncio.run(stored_times(settings, "burst", len(burst), timeout=900))
        last = max(s for _, s in done.values())
        after = {k: cpu_seconds(p) for k, p in pids.items() if p}
        first_submit = min(p for p, _ in done.values())
        result["burst"] = {
            "frames": len(burst),
            "stored": len(done),
            "frames_per_s": len(done) / max(1e-9, last - first_submit),
            "wall_s": time.perf_counter() - started,
            "cpu_ms_per_frame": {k: (after[k] - before[k]) * 1000 / len(burst) for k in before},
        }
        print(f"  burst: {json.dumps(result['burst'])}", flush=True)
    finally:
        worker.stop(timeout=30)
    return result


def page(model: Path, broker, mongo, home: Path, seconds: float) -> dict[str, Any]:
    """The Live tab in Chromium with a fake camera: what its stats line says after ``seconds``."""
    import re

    from playwright.sync_api import sync_playwright

    prefix = f"bench{uuid.uuid4().hex[:6]}"
    env = deployment_env(broker.url, mongo.url, prefix, home, model)
    worker = Service("worker", free_port(), home / f"{prefix}-worker.log")
    dash = Service("dashboard", free_port(), home / f"{prefix}-dashboard.log")
    try:
        worker.start(worker_argv(worker.port, loglevel="warn"), env=env)
        wait_ready(worker, timeout=300)
        dash_env = {**env, "IMGFLOW_WORKER_URLS": f"http://127.0.0.1:{worker.port}"}
        argv = [
            sys.executable,
            "-m",
            "panel",
            "serve",
            str(ROOT / "dashboard" / "app.py"),
            "--address",
            "127.0.0.1",
            "--port",
            str(dash.port),
            "--allow-websocket-origin",
            f"127.0.0.1:{dash.port}",
        ]
        dash.start(argv, env=dash_env)
        url = f"http://127.0.0.1:{dash.port}/app"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        from devstack.browser import FAKE_CAMERA, launch_chromium

        with sync_playwright() as p:
            browser = launch_chromium(p, FAKE_CAMERA)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                context.grant_permissions(["camera"])
                tab = context.new_page()
                tab.goto(url)
                tab.locator(".bk-tab").filter(has_text="Live").click()
                # A first run warms everything up (the page's producer, the worker's first
                # batches); starting again resets the tab's figures: the second run is measured.
                tab.get_by_role("button", name="Start camera").click()
                tab.wait_for_timeout(WARM_UP_S * 1000)
                warm = tab.get_by_text(re.compile(r"^sent \d+")).inner_text()
                tab.get_by_role("button", name="Stop camera").click()
                tab.wait_for_timeout(2000)
                tab.get_by_role("button", name="Start camera").click()
                tab.wait_for_timeout(seconds * 1000)
                text = tab.get_by_text(re.compile(r"^sent \d+")).inner_text()
            finally:
                browser.close()
    finally:
        dash.stop(timeout=15)
        worker.stop(timeout=30)
    numbers = dict(re.findall(r"(sent|results|dropped) (\d+)", text))
    latency = dict(re.findall(r"(p50|p95) (\d+) ms", text))
    return {
        "seconds": seconds,
        "warm_up": {"seconds": WARM_UP_S, "stats": warm},
        "stats": text,
        **{k: int(v) for k, v in numbers.items()},
        **{f"{k}_ms": int(v) for k, v in latency.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frames", description=__doc__.split("\n")[0])
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--burst", type=int, default=120)
    parser.add_argument("--count", type=int, default=48, help="distinct frames")
    parser.add_argument("--skip-page", action="store_true", help="no dashboard + Chromium run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "frames.json")
    args = parser.parse_args()
    settings = Settings()
    classifier = build_default_model(ROOT / "var" / "models" / "efficientnet-lite0").resolve()
    jpegs = frames(args.count)
    results: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "machine": {"cores": os.cpu_count(), "loadavg": os.getloadavg()},
        "input": {
            "width": 640,
            "height": 480,
            "count": len(jpegs),
            "mean_bytes": int(statistics.fmean(map(len, jpegs))),
        },
    }
    print("the face model alone...", flush=True)
    results["engine"] = engine_alone(jpegs, settings.batch_size)
    print(f"  {json.dumps(results['engine'])}", flush=True)
    home = Path(tempfile.mkdtemp(prefix="imgflow-bench-frames-"))
    try:
        broker, mongo = start_broker(home / "logs"), start_mongo(home / "mongo", home / "logs")
        try:
            print("the chain, default classifier...", flush=True)
            results["classifier"] = chain(classifier, jpegs, broker, mongo, home, args)
            print("the chain, face model...", flush=True)
            results["faces"] = chain(FACE_SPEC, jpegs, broker, mongo, home, args)
            if not args.skip_page:
                results["page"] = {}
                for name, spec in (("classifier", classifier), ("faces", FACE_SPEC)):
                    print(f"the Live tab in Chromium, fake camera, {name}...", flush=True)
                    results["page"][name] = page(spec, broker, mongo, home, args.seconds)
                    print(f"  {results['page'][name]['stats']}", flush=True)
        finally:
            broker.stop()
            mongo.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    for name in ("classifier", "faces"):
        p95 = results[name]["paced"]["p95"]
        verdict = "meets" if p95 < TARGET_P95_MS else "misses"
        print(
            f"{name}: p95 publish -> stored {p95:.0f} ms at {args.fps:g} frames/s "
            f"({verdict} < {TARGET_P95_MS} ms)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
