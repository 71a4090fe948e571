"""End to end: specific failures become failure records, and the worker keeps going.

Real ``faust -A imgflow worker`` processes against the embedded Kafka-protocol
broker and MongoDB-protocol server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devstack.embedded import free_port, start_broker
from tests.images import photo
from tests.support import Pipeline, path_message, produce_raw, wait_until
from tests.tiny_model import redblue_spec

pytestmark = pytest.mark.e2e

#: Over a 224x224x3 tensor message (~200 KB of base64) and far over a failure record.
SMALL_LIMIT = 128 * 1024


def small_model_spec(folder: Path) -> Path:
    """A real Keras classifier with a 32x32 input: its tensor messages are ~4 KB."""
    return redblue_spec(
        folder, name="small", version="1.0.0", labels=("reddish", "bluish"), size=32, resize="stretch"
    )


def test_a_message_over_the_size_limit_fails_its_image_and_the_batch_goes_on(
    pipeline: Pipeline, tmp_path: Path
):
    pipeline.extra_env["IMGFLOW_MAX_MESSAGE_BYTES"] = str(SMALL_LIMIT)
    small = small_model_spec(tmp_path / "small-model")
    cat = tmp_path / "cat.jpg"
    photo().save(cat)
    worker = pipeline.start_worker()
    worker.wait_ready()

    # One batch: two images whose 224x224 tensors are too large, two small-model neighbours.
    big = [path_message(cat, source="test") for _ in range(2)]
    fine = [path_message(cat, source="test", model=str(small)) for _ in range(2)]
    messages = [big[0], fine[0], big[1], fine[1]]
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), messages))

    db = pipeline.mongo()
    big_ids = {key.decode() for key, _ in big}
    fine_ids = {key.decode() for key, _ in fine}
    wait_until(
        lambda: db.failures.count_documents({}) >= 2 and db.images.count_documents({}) >= 2,
        timeout=180,
        what="2 failures and 2 stored images",
    )
    failures = {d["_id"]: d for d in db.failures.find()}
    assert set(failures) == big_ids
    for doc in failures.values():
        assert (doc["kind"], doc["stage"]) == ("message_too_large", "decode")
        assert f"{SMALL_LIMIT:,}-byte limit" in doc["message"]
        assert "IMGFLOW_MAX_MESSAGE_BYTES" in doc["message"]
        assert doc["path"] == str(cat)
    images = {d["_id"]: d for d in db.images.find()}
    assert set(images) == fine_ids
    assert {d["model"] for d in images.values()} == {"small"}

    # Later images still go through: the stage did not stall on the refused messages.
    later = path_message(cat, source="test", model=str(small))
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), [later]))
    wait_until(lambda: db.images.find_one({"_id": later[0].decode()}), 120, "the later image stored")
    assert worker.health()[0] == 200
    assert worker.proc is not None and worker.proc.poll() is None


def test_a_worker_started_before_the_broker_waits_for_it_and_then_works(pipeline: Pipeline, tmp_path: Path):
    port = free_port()  # nothing listens here yet
    broker_url = f"kafka://127.0.0.1:{port}"
    cat = tmp_path / "cat.jpg"
    photo().save(cat)
    worker = pipeline.start_worker(BROKER_URL=broker_url)
    broker = None
    try:
        # It keeps trying (a second attempt logged), stays alive, and does not claim to be ready.
        wait_until(
            lambda: worker.log_tail(200).count("waiting for the Kafka broker") >= 2,
            timeout=60,
            what="the worker to retry the broker",
        )
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
        assert worker.health()[0] != 200

        broker = start_broker(tmp_path / "late-broker", port=port)
        worker.wait_ready()
        key, value = path_message(cat, source="test")
        asyncio.run(produce_raw(broker.bootstrap, pipeline.topic("paths"), [(key, value)]))
        db = pipeline.mongo()
        doc = wait_until(lambda: db.images.find_one({"_id": key.decode()}), 180, "the image stored")
        assert doc["model"] == "efficientnet-lite0"
        assert "is up after" in worker.log_tail(400)
    finally:
        pipeline.stop()  # workers first: they would otherwise shut down against a dead broker
        if broker is not None:
            broker.stop()
