"""Live label counts: cluster-wide answers from any worker, windows, recovery."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from simulator.dataset import write_dataset
from tests.support import Pipeline, path_message, produce_raw, wait_until

pytestmark = pytest.mark.e2e

WINDOW = 8.0


def send(pipeline: Pipeline, paths: list[Path]) -> set[str]:
    messages = [path_message(p, source="test") for p in paths]
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), messages))
    return {key.decode() for key, _ in messages}


def totals(body: dict) -> Counter:
    """Counts summed over every window in a /counts/ answer."""
    out: Counter = Counter()
    for window in body["windows"]:
        out.update(window["counts"])
    return out


def truth(pipeline: Pipeline) -> Counter:
    """What MongoDB holds: one stored image per label count."""
    return Counter(doc["label"] for doc in pipeline.mongo().images.find({}, {"label": 1}))


def counts(worker) -> dict:
    status, body = worker.get("/counts/?windows=100")
    assert status == 200, body
    return body


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_counts_are_cluster_wide_windowed_and_recovered(pipeline: Pipeline, tmp_path: Path, store: str):
    pipeline.extra_env.update(
        {
            "IMGFLOW_WINDOW_SECONDS": str(WINDOW),
            "IMGFLOW_WINDOW_EXPIRES": "600",
            "IMGFLOW_TABLE_STORE": store,
        }
    )
    dataset = write_dataset(tmp_path / "dataset")
    a = pipeline.start_worker()
    b = pipeline.start_worker()
    a.wait_ready()
    b.wait_ready()

    seen: list = []

    def settled(n: int, x=a, y=b):
        """Both workers agree, the answer is complete and covers n images."""
        ca, cb = counts(x), counts(y)
        seen[:] = [(ca["complete"], cb["complete"], sum(totals(ca).values()), sum(totals(cb).values()))]
        ok = ca["complete"] and cb["complete"] and sum(totals(ca).values()) == n
        return (ca, cb) if ok and totals(ca) == totals(cb) else None

    first = send(pipeline, dataset[:40])
    db = pipeline.mongo()
    wait_until(lambda: db.images.count_documents({}) >= len(first), 180, "first batch stored")
    ca, cb = wait_until(lambda: settled(len(first)), 60, "counts of the first batch")

    # Each worker owns part of the labels, yet either one answers for all of them.
    owners = ca["owners"]
    assert len(owners) == 2 and all(owners.values())
    assert sorted(p for ps in owners.values() for p in ps) == list(range(4))
    assert totals(ca) == totals(cb) == truth(pipeline)
    assert ca["answered_by"] != cb["answered_by"]
    # The per-model breakdown adds up to the same counts.
    newest = ca["windows"][0]
    assert sum(newest["by_model"]["efficientnet-lite0:1.0.0"].values()) == newest["total"]

    # Windows roll over: wait for a new window, then send a second batch.
    last_end = max(w["end"] for w in ca["windows"])
    time.sleep(max(0.0, last_end - time.time()) + 0.5)
    second = send(pipeline, dataset[40:70])
    wait_until(lambda: db.images.count_documents({}) >= len(first) + len(second), 180, "second batch")
    ca, cb = wait_until(lambda: settled(len(first) + len(second)), 60, "counts of both batches")
    assert len(ca["windows"]) >= 2
    assert ca["windows"][0]["start"] > last_end - WINDOW  # a window that began after the first batch
    assert all(w["end"] - w["start"] <= WINDOW for w in ca["windows"])
    assert totals(ca) == truth(pipeline)
    before = totals(ca)

    # Recovery: a killed worker comes back with its table from the changelog.
    b.kill()
    b2 = pipeline.start_worker()
    b2.wait_ready()
    try:
        ca, cb = wait_until(
            lambda: settled(len(first) + len(second), a, b2) if b2.health()[0] == 200 else None,
            120,
            "counts after restart",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last (complete A, complete B, total A, total B): {seen}") from None
    owners_after = ca["owners"]
    assert owners_after.get(b2.url)
    assert totals(ca) == totals(cb) == before
