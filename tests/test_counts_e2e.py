"""Live label counts: cluster-wide answers from any worker, windows, recovery."""

from __future__ import annotations

import asyncio
import math
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


STEP = 20.0
SIZE = 60.0


def covering(ts: float, size: float = SIZE, step: float = STEP) -> list[float]:
    """Starts of the hopping windows ``[start, start + size)`` on the step grid that hold ``ts``."""
    newest = math.floor(ts / step) * step
    return [newest - k * step for k in range(round(size / step))]


def test_hopping_windows_count_every_result_in_each_window_that_covers_it(pipeline: Pipeline, tmp_path: Path):
    """IMGFLOW_WINDOW_STEP: 60 s windows every 20 s, so each result is in three windows."""
    pipeline.extra_env.update(
        {"IMGFLOW_WINDOW_SECONDS": "60", "IMGFLOW_WINDOW_STEP": "20", "IMGFLOW_WINDOW_EXPIRES": "3600"}
    )
    dataset = write_dataset(tmp_path / "dataset")
    worker = pipeline.start_worker()
    worker.wait_ready()

    # Requests at chosen times (``submitted_at``, the documented field that places a result in
    # its windows), 20 s apart so that each group shares some windows with its neighbours and
    # not others; the last group has none (null), so the worker stamps it when it reads it (now).
    newest = math.floor(time.time() / STEP) * STEP
    groups = {
        newest - 55: dataset[0:6],
        newest - 35: dataset[6:12],
        newest - 15: dataset[12:18],
        None: dataset[18:22],
    }
    messages = [
        path_message(p, source="test", submitted_at=at) for at, paths in groups.items() for p in paths
    ]
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), messages))
    db = pipeline.mongo()
    wait_until(lambda: db.images.count_documents({}) >= len(messages), 180, "every image stored")
    wait_until(
        lambda: worker.metric("imgflow_labels_counted_total") >= len(messages), 60, "every result counted"
    )
    body = counts(worker)

    # What the windows must hold, from what MongoDB stored (label, request time) and the
    # definition of a hopping window, not from Faust's window arithmetic.
    expected: dict[float, Counter] = {}
    requested = {doc["_id"]: doc for doc in db.images.find({}, {"label": 1, "submitted_at": 1})}
    assert len(requested) == len(messages)
    for doc in requested.values():
        for start in covering(doc["submitted_at"].timestamp()):
            expected.setdefault(start, Counter())[doc["label"]] += 1

    assert body["window"] == {"seconds": SIZE, "step": STEP, "expires": 3600.0}
    assert body["complete"], body
    got = {w["start"]: Counter(w["counts"]) for w in body["windows"]}
    assert got == expected
    for w in body["windows"]:
        assert SIZE - 0.1 <= w["end"] - w["start"] <= SIZE
        assert w["total"] == sum(w["counts"].values())
        assert sum(w["by_model"]["efficientnet-lite0:1.0.0"].values()) == w["total"]
    # Each result is in size / step = 3 windows, and windows one step apart overlap: the
    # first group (newest - 55) is in the windows from newest - 100, -80 and -60, the second
    # in those from -80, -60 and -40, the third in those from -60, -40 and -20.
    assert sum(w["total"] for w in body["windows"]) == 3 * len(messages)
    assert [got[newest - 100].total(), got[newest - 80].total(), got[newest - 60].total()] == [6, 12, 18]

    # The current window is the newest one open now (Faust's ``current``): it began at the
    # last multiple of the step.
    now_start = math.floor(body["now"] / STEP) * STEP
    current = body["current"]
    if now_start in expected:
        assert current["start"] == now_start and Counter(current["counts"]) == expected[now_start]
    else:
        assert current["start"] is None and current["total"] == 0
