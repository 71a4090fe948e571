"""What the dashboard costs the database as history grows: ``make bench-dashboard``.

Seeds the embedded MongoDB-protocol server through the real store path (the
functions the sinks call: ``imgflow.storage.write_predictions`` /
``write_failures``, with their counters, rates and filter choices) in stages
(``--sizes``, default 10k, 100k, 1M images; one database that grows), and at
each size times the dashboard's own functions, the median of ``--repeat`` runs
after one warm-up:

- ``refresh``: one shared refresh's MongoDB work (``LiveFeed.collect`` with no
  worker URLs: the sweep, the counters, the rates), and its parts;
- ``gallery_first``, ``gallery_tenth``: a page of the 24 newest, and the tenth
  page reached with the Older button (the step from page 9 to 10 is timed);
- ``label``, ``rare_label``, ``model``, ``source``, ``score``, ``last_hour``: the
  first page with one filter set (including its match count);
- ``options``, ``failures``: the filter choices and model versions, the failures list;
- ``totals``: the exact totals, checked against what was seeded;
- ``compare``: the model comparison (``imgflow.queries.compare_models``) of the two
  versions seeded (a fifth of the images replayed with the second), with the peak of
  Python memory it allocated (tracemalloc), once.

History is realistic: about 100 images/s (the newest 5 minutes hold ~30,000
results), labels skewed like a real stream, four sources, 1% failures, 0.1%
hidden and 0.1% corrected by the dashboard's own edit functions.

``--before DIR`` also times the same figures with another checkout's code (the
dashboard before this change) on the same database, up to ``--before-max`` images
(the old totals took seconds per refresh at 200k). Writes
``benchmarks/results/dashboard.json`` and prints each figure per size with its
growth (largest size / smallest: the goal is flat).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from imgflow.records import ImageRef

ROOT = Path(__file__).resolve().parent.parent
MODEL = "efficientnet-lite0"
V1, V2 = "1.0.0", "2.0.0"
RATE = 100.0  # images per second of history
SOURCES = ["simulator", "watch", "upload", "kafka"]
LABELS = [
    "tabby", "Egyptian cat", "golden retriever", "espresso", "space shuttle", "lab coat", "wall clock",
    "sorrel", "mountain bike", "pizza", "volcano", "lakeside", "seashore", "broccoli", "banana",
    "airliner", "container ship", "sports car", "fire engine", "school bus", "teddy", "umbrella",
    "laptop", "cellular telephone", "daisy", "bee", "goldfish", "king penguin", "zebra", "panda",
]  # fmt: skip
PAGE_GOAL_S, REFRESH_GOAL_S = 0.300, 0.200


def weights(n: int) -> list[float]:
    return [1.0 / (rank + 1) ** 1.1 for rank in range(n)]  # Zipf-like: a few labels dominate


def prediction(image_id: str, stored: float, version: str, rng: random.Random) -> Any:
    from imgflow.records import ImageMeta, Prediction

    labels = rng.choices(LABELS, weights(len(LABELS)), k=5)
    scores = sorted((rng.random() for _ in range(5)), reverse=True)
    total = sum(scores) * rng.uniform(1.0, 1.6)
    top = [{"label": lab, "score": round(s / total, 4)} for lab, s in zip(labels, scores, strict=True)]
    submitted = stored - rng.uniform(0.05, 0.15)
    return Prediction(
        ref=ImageRef(
            image_id=image_id,
            path=f"/data/camera/{image_id[:2]}/{image_id}.jpg",
            source=rng.choice(SOURCES),
            submitted_at=submitted,
        ),
        predicted_at=stored - 0.02,
        label=top[0]["label"],
        score=top[0]["score"],
        top_k=top,
        model=MODEL,
        model_version=version,
        inference_ms=6.0,
        batch_size=16,
        meta=ImageMeta(
            file_name=f"{image_id}.jpg",
            width=1280,
            height=960,
            format="JPEG",
            bytes=165_000,
            sha256="ab" * 32,
        ),
    )


class Seeder:
    """Grows one database through the sinks' own write functions; knows the exact totals."""

    def __init__(self, db: Any, seed: int = 7) -> None:
        from imgflow import storage
        from imgflow.tally import Tally

        self.db = db
        self.rng = random.Random(seed)
        storage.ensure_indexes(db)
        self.sink = Tally(db, "sink")
        self.dead_letters = Tally(db, "dead-letters")
        self.expected = {"images": 0, "failures": 0, "hidden": 0, "corrected": 0}

    def resume(self, state: Path) -> None:
        """Continue a database seeded by an earlier run (``--home``): its totals, a new random stream."""
        if state.exists():
            self.expected = json.loads(state.read_text())
            self.rng = random.Random(f"{self.rng.random()}-{self.expected['images']}")

    def save(self, state: Path) -> None:
        state.write_text(json.dumps(self.expected))

    def grow(self, target: int, batch: int = 500) -> float:
        """Add images until there are ``target``; the newest are stored ~now at ``RATE``."""
        from dashboard import feedback
        from imgflow import storage

        start = time.perf_counter()
        new_ids: list[str] = []
        while self.expected["images"] < target:
            n = min(batch, target - self.expected["images"])
            remaining = target - self.expected["images"] - n
            now = time.time() - remaining / RATE  # this batch's place in a 100 images/s history
            preds = []
            for i in range(n):
                image_id = uuid.UUID(int=self.rng.getrandbits(128)).hex
                preds.append(prediction(image_id, now - (n - i) / RATE, V1, self.rng))
            stored_at = datetime.fromtimestamp(now, UTC)
            storage.write_predictions(self.db, self.sink, preds, stored_at)
            replayed = [p for p in preds if self.rng.random() < 0.2]  # a fifth replayed with v2
            if replayed:
                again = [prediction(p.image_id, now + 0.5, V2, self.rng) for p in replayed]
                storage.write_predictions(self.db, self.sink, again, stored_at + timedelta(seconds=0.5))
            failed = [
                self._failure(now) for _ in range(max(0, round(n * 0.01 + self.rng.uniform(-0.5, 0.5))))
            ]
            if failed:
                storage.write_failures(self.db, self.dead_letters, failed)
            self.expected["images"] += n
            self.expected["failures"] += len(failed)
            new_ids += [p.image_id for p in preds]
            if len(new_ids) % 50_000 < batch:
                rate = len(new_ids) / (time.perf_counter() - start)
                print(f"  seeded {self.expected['images']:,} images ({rate:,.0f}/s)", flush=True)
        for image_id in self.rng.sample(new_ids, len(new_ids) // 1000):
            feedback.set_hidden(self.db, image_id, True, by="bench")
            self.expected["hidden"] += 1
        for image_id in self.rng.sample(new_ids, len(new_ids) // 1000):
            hidden_or_not = self.db.images.find_one({"_id": image_id}, {"feedback": 1})
            if not (hidden_or_not or {}).get("feedback"):
                feedback.correct_label(self.db, image_id, self.rng.choice(LABELS), by="bench")
                self.expected["corrected"] += 1
        return len(new_ids) / (time.perf_counter() - start)

    def _failure(self, at: float) -> Any:
        from imgflow.records import Failure

        image_id = uuid.UUID(int=self.rng.getrandbits(128)).hex
        return Failure(
            ref=ImageRef(
                image_id=image_id,
                path=f"/data/camera/bad/{image_id}.jpg",
                source=self.rng.choice(SOURCES),
                submitted_at=0.0,
            ),
            image_id=image_id,
            stage="decode",
            kind=self.rng.choice(["not_an_image", "missing_file", "too_large"]),
            message="synthetic",
            failed_at=at,
        )


def timed(call: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Median seconds of ``repeat`` calls after a warm-up; an error is recorded, not raised."""
    try:
        call()
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            call()
            runs.append(time.perf_counter() - t0)
        return {"s": statistics.median(runs), "runs": runs}
    except Exception as exc:  # a figure the code under test does not have
        return {"error": f"{type(exc).__name__}: {exc}"}


def measure(db: Any, repeat: int, compare: bool) -> dict[str, Any]:
    """Time the dashboard's own functions (whatever the imported code is) on ``db``."""
    from param.parameterized import discard_events

    from dashboard import stats
    from dashboard.data_store import DataStore

    out: dict[str, Any] = {}
    labels = [
        d["_id"] for d in db.images.aggregate([{"$sample": {"size": 2000}}, {"$group": {"_id": "$label"}}])
    ]
    ranked = sorted(labels, key=LABELS.index) if all(lab in LABELS for lab in labels) else labels
    mid, rare = ranked[len(ranked) // 3], ranked[-1]

    def fresh(**filters: Any) -> Callable[[], Any]:
        def load() -> Any:
            store = DataStore(db=db, roots=[], feed=None)
            if filters:
                with discard_events(store):
                    store.param.update(**filters)
            store.load_images()
            if store.error:
                raise RuntimeError(store.error)
            return store

        return load

    try:
        from dashboard.feed import LiveFeed

        out["refresh"] = timed(lambda: LiveFeed(db=db, worker_urls=[]).collect(), repeat)
    except ImportError as exc:
        out["refresh"] = {"error": str(exc)}
    for name in ("throughput", "totals", "data_stamp"):
        fn = getattr(stats, name, None)
        out[name] = timed(partial(fn, db), repeat) if fn else {"error": "missing"}
    out["gallery_first"] = timed(fresh(), repeat)

    def tenth() -> float:
        store = fresh()()
        for page in range(1, 9):
            store.page = page
        t0 = time.perf_counter()
        store.page = 9
        elapsed = time.perf_counter() - t0
        if len(store.images) != store.page_size:
            raise RuntimeError(f"page 10 held {len(store.images)} images")
        return elapsed

    try:
        tenth()
        runs = [tenth() for _ in range(repeat)]
        out["gallery_tenth"] = {"s": statistics.median(runs), "runs": runs}
    except Exception as exc:
        out["gallery_tenth"] = {"error": f"{type(exc).__name__}: {exc}"}
    model = f"{MODEL}:{V2}"
    out["label"] = timed(fresh(label=mid), repeat)
    out["rare_label"] = timed(fresh(label=rare), repeat)
    out["model"] = timed(fresh(model=model), repeat)
    out["source"] = timed(fresh(source="upload"), repeat)
    out["score"] = timed(fresh(score=(0.0, 0.3)), repeat)
    out["last_hour"] = timed(fresh(time_range="last hour"), repeat)
    out["options"] = timed(lambda: DataStore(db=db, roots=[], feed=None).load_options(), repeat)
    out["failures"] = timed(lambda: DataStore(db=db, roots=[], feed=None).load_failures(), repeat)
    try:
        out["totals_value"] = stats.totals(db)
    except Exception as exc:
        out["totals_value"] = {"error": str(exc)}
    if compare:
        from imgflow.queries import compare_models

        tracemalloc.start()
        t0 = time.perf_counter()
        report = compare_models(db, f"{MODEL}:{V1}", model)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["compare"] = {"s": elapsed, "images": report["images"], "peak_mb": peak / 1e6}
    return out


def measure_with(code: Path, mongo_url: str, db_name: str, repeat: int) -> dict[str, Any]:
    """``measure`` run by another checkout's code, in a subprocess, on the same database."""
    env = {**os.environ, "PYTHONPATH": str(code)}  # its imgflow and dashboard, this script
    argv = [sys.executable, str(Path(__file__).resolve()), "--measure-only", "--mongo-url", mongo_url]
    argv += ["--db", db_name, "--repeat", str(repeat)]
    done = subprocess.run(argv, cwd=code, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


FIGURES = [
    "refresh",
    "throughput",
    "totals",
    "data_stamp",
    "gallery_first",
    "gallery_tenth",
    "label",
    "rare_label",
    "model",
    "source",
    "score",
    "last_hour",
    "options",
    "failures",
    "compare",
]


def cell(entry: Any) -> str:
    if not isinstance(entry, dict):
        return "-"
    if "error" in entry:
        return "error"
    return f"{entry['s'] * 1000:,.0f} ms"


def report(results: dict[str, Any]) -> None:
    sizes = [int(s) for s in results["sizes"] if str(s) in results["by_size"]]
    for code in ("after", "before"):
        rows = {size: results["by_size"][str(size)].get(code) for size in sizes}
        if not any(rows.values()):
            continue
        print(f"\n{code}: " + " | ".join(f"{s:>10,}" for s in sizes) + " | growth")
        for fig in FIGURES:
            values = [(rows[s] or {}).get(fig) for s in sizes]
            if not any(isinstance(v, dict) and "s" in v for v in values):
                continue
            ok = [v["s"] for v in values if isinstance(v, dict) and "s" in v]
            growth = f"{ok[-1] / ok[0]:.1f}x" if len(ok) > 1 and ok[0] > 0 else "-"
            print(f"  {fig:<14}" + " | ".join(f"{cell(v):>10}" for v in values) + f" | {growth}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another checkout to time on the same data")
    parser.add_argument("--before-max", type=int, default=200_000)
    parser.add_argument(
        "--home", type=Path, help="keep the database here and grow it across runs (default: a new temp dir)"
    )
    parser.add_argument(
        "--seed-only", action="store_true", help="grow the database to the sizes, measure nothing"
    )
    parser.add_argument(
        "--fresh",
        type=int,
        default=0,
        help="before measuring a kept database (--home), add this many images stored now (a live stream)",
    )
    parser.add_argument(
        "--skip-compare", action="store_true", help="leave out the comparison (it reads every prediction)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dashboard.json")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mongo-url", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from pymongo import MongoClient

    if args.measure_only:  # run as a script (by measure_with): its folder must not be "dashboard"
        here = Path(__file__).resolve().parent
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
        client: MongoClient = MongoClient(args.mongo_url, tz_aware=True)
        print(json.dumps(measure(client[args.db], args.repeat, compare=False), default=str))
        return

    from devstack.embedded import start_mongo

    sizes = [int(s) for s in args.sizes.split(",")]
    home = args.home or Path(tempfile.mkdtemp(prefix="imgflow-bench-dashboard-"))
    home.mkdir(parents=True, exist_ok=True)
    state = home / "seeded.json"
    mongo = start_mongo(home / "db", home)
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    results: dict[str, Any] = {
        "sizes": sorted({*sizes, *(int(s) for s in earlier.get("by_size", {}))}),
        "by_size": earlier.get("by_size", {}),  # sizes measured by an earlier run stay (each has its commit)
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "when": datetime.now(UTC).isoformat(),
        "goals": {"refresh_s": REFRESH_GOAL_S, "page_s": PAGE_GOAL_S},
    }
    try:
        client = MongoClient(mongo.url, tz_aware=True, journal=True)
        db = client["bench"]
        seeder = Seeder(db)
        seeder.resume(state)
        for size in sizes:
            print(f"seeding to {size:,} images ...", flush=True)
            rate = seeder.grow(size)
            seeder.save(state)
            if args.seed_only:
                continue
            if args.fresh:
                print(f"adding {args.fresh:,} images stored now ...", flush=True)
                seeder.grow(seeder.expected["images"] + args.fresh)
                seeder.save(state)
            print(f"measuring at {size:,} images ...", flush=True)
            after = measure(db, args.repeat, compare=not args.skip_compare)
            exact = after.get("totals_value") == seeder.expected
            entry: dict[str, Any] = {"seed_rate": rate, "expected": dict(seeder.expected), "after": after}
            entry["commit"], entry["when"] = results["commit"], datetime.now(UTC).isoformat()
            entry["totals_exact"] = exact
            if args.before and size <= args.before_max:
                entry["before"] = measure_with(args.before, mongo.url, "bench", args.repeat)
            elif "before" in results["by_size"].get(str(size), {}):  # measured by an earlier run: kept
                entry["before"] = results["by_size"][str(size)]["before"]
                entry["before_from"] = results["by_size"][str(size)].get("when")
            results["by_size"][str(size)] = entry
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2, default=str))
            report(results)
            print(f"  totals exact: {exact} ({seeder.expected})", flush=True)
    finally:
        mongo.stop()
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
