"""No partition stalls after a restart, even when the recovery seek is slow.

DESIGN section 8: Faust 0.15.3 resumed the stream partitions and sought them
*before* clearing the agent queues, so records delivered in between were
dropped from the queues while the fetch position had moved past them; those
offsets were never processed and never committed past (a stall), and a
partition never committed before was not sought back at all. A seek delay
injected in the worker (tests/faults/sitecustomize.py) widens that window to
seconds: on the old code this test stored 132 of 300 images.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from simulator.dataset import write_dataset
from tests.support import Pipeline, path_message, produce_raw, wait_until

pytestmark = pytest.mark.e2e

FAULTS = Path(__file__).parent / "faults"


def publish(pipeline: Pipeline, paths: list[Path]) -> set[str]:
    messages = [path_message(p, source="test") for p in paths]
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), messages))
    return {key.decode() for key, _ in messages}


def test_restart_with_a_slow_seek_processes_every_image(pipeline: Pipeline, tmp_path: Path):
    dataset = write_dataset(tmp_path / "dataset")
    first = pipeline.start_worker()
    first.wait_ready()
    ids = publish(pipeline, (dataset * 2)[:100])
    db = pipeline.mongo()
    wait_until(lambda: db.images.count_documents({}) >= len(ids), 180, "the first 100 results")
    first.stop()

    # Published while no worker runs: the restarted worker finds a backlog on every partition.
    ids |= publish(pipeline, (dataset * 3)[:200])
    second = pipeline.start_worker(
        PYTHONPATH=f"{FAULTS}:{pipeline.env().get('PYTHONPATH', '')}".rstrip(":"),
        IMGFLOW_FAULT_SEEK_DELAY="3",
    )
    second.wait_ready(timeout=180)
    try:
        wait_until(lambda: db.images.count_documents({}) >= len(ids), 240, "all results after the restart")
    except AssertionError as exc:  # say how many: a stalled partition never delivers its backlog
        raise AssertionError(f"{exc}: {db.images.count_documents({})} of {len(ids)} stored") from None
    assert "FAULT: " in second.log_path.read_text(errors="replace"), "the seek delay was not injected"
    assert {d["_id"] for d in db.images.find({}, {"_id": 1})} == ids
    assert db.predictions.count_documents({}) == len(ids)
