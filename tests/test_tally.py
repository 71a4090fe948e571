"""Exact totals (imgflow.tally) through redelivery, replay, retries, crashes and edits.

Against the real MongoDB-protocol server (``mongo_url``), written with the sink's own
functions. A crash is reproduced by doing what a killed writer had done so far (its
intent and some writes, no settle) and letting another process's sweep finish it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dashboard import feedback, stats
from imgflow import storage, tally
from imgflow.records import Failure, ImageMeta, ImageRef, Prediction
from imgflow.tally import Tally

pytestmark = pytest.mark.e2e

MODEL = "efficientnet-lite0"


@pytest.fixture
def db(mongo_url: str) -> Iterator[Any]:
    from pymongo import MongoClient

    client: MongoClient = MongoClient(mongo_url, tz_aware=True)
    name = f"tally_{uuid.uuid4().hex[:10]}"
    storage.ensure_indexes(client[name])
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


def pred(image_id: str, version: str = "1.0.0", label: str = "tabby", at: float | None = None) -> Prediction:
    at = at or datetime.now(UTC).timestamp()
    return Prediction(
        ref=ImageRef(image_id=image_id, path=f"/data/{image_id}.jpg", source="simulator", submitted_at=at),
        predicted_at=at + 0.1,
        label=label,
        score=0.9,
        top_k=[{"label": label, "score": 0.9}],
        model=MODEL,
        model_version=version,
        inference_ms=5.0,
        batch_size=1,
        meta=ImageMeta(file_name=f"{image_id}.jpg", width=8, height=8, format="JPEG", bytes=10, sha256="ab"),
    )


def failure(image_id: str) -> Failure:
    return Failure(
        image_id=image_id,
        stage="decode",
        kind="not_an_image",
        message="cannot identify image file",
        failed_at=datetime.now(UTC).timestamp(),
    )


def totals(db) -> dict[str, Any]:
    counted = tally.totals(db)
    return {
        "images": counted["images"],
        "failures": counted["failures"],
        "hidden": counted["hidden"],
        "corrected": counted["corrected"],
        "predictions": counted["predictions"],
    }


def exact(db) -> dict[str, Any]:
    """The same totals counted the slow way, from the documents."""
    per_version: dict[str, int] = {}
    for doc in db.predictions.find({}, {"model": 1, "model_version": 1}):
        key = f"{doc['model']}:{doc['model_version']}"
        per_version[key] = per_version.get(key, 0) + 1
    return {
        "images": db.images.count_documents({}),
        "failures": db.failures.count_documents({}),
        "hidden": db.images.count_documents({"hidden": True}),
        "corrected": db.images.count_documents({"feedback.label": {"$exists": True}}),
        "predictions": per_version,
    }


def write(db, writer: Tally, preds: list[Prediction]) -> None:
    storage.write_predictions(db, writer, preds, datetime.now(UTC))


def test_redelivered_batches_count_once_and_a_replay_counts_per_version(db):
    sink = Tally(db, "sink")
    batch = [pred(f"img-{i}") for i in range(10)]
    write(db, sink, batch)
    write(db, sink, batch)  # redelivered after a rebalance
    write(db, Tally(db, "sink"), batch[:5])  # ...and by another worker
    assert totals(db)["images"] == 10
    assert totals(db)["predictions"] == {f"{MODEL}:1.0.0": 10}

    later = datetime.now(UTC).timestamp() + 1
    write(db, sink, [pred(f"img-{i}", version="2.0.0", at=later) for i in range(4)])  # a replay
    write(db, sink, [pred(f"img-{i}", version="2.0.0", at=later) for i in range(4)])
    counted = totals(db)
    assert counted == exact(db)
    assert counted["images"] == 10
    assert counted["predictions"] == {f"{MODEL}:1.0.0": 10, f"{MODEL}:2.0.0": 4}
    assert stats.totals(db) == {"images": 10, "failures": 0, "hidden": 0, "corrected": 0}


def test_a_writer_killed_before_its_settle_is_settled_once_by_a_sweep(db):
    dead = Tally(db, "sink")
    write(db, dead, [pred("a"), pred("b")])
    # The killed batch: intent recorded, documents written with its token, no settle.
    token = dead.begin()
    ops = storage.prediction_ops([pred("c"), pred("d"), pred("e")], datetime.now(UTC), token)
    db.predictions.bulk_write(ops["predictions"], ordered=False)
    db.images.bulk_write(ops["images"], ordered=False)
    assert totals(db)["images"] == 2

    assert tally.sweep(db) == 1
    assert totals(db) == exact(db) and totals(db)["images"] == 5
    assert tally.sweep(db) == 0  # settled once
    # The batch is redelivered to another worker: nothing new, nothing counted twice.
    write(db, Tally(db, "sink"), [pred("c"), pred("d"), pred("e")])
    assert totals(db) == exact(db) and totals(db)["images"] == 5


def test_a_sweep_that_sees_half_a_batch_in_flight_is_completed_by_the_writer(db):
    sink = Tally(db, "sink")
    token = sink.begin()
    first = storage.prediction_ops([pred("a"), pred("b")], datetime.now(UTC), token)
    db.images.bulk_write(first["images"], ordered=False)
    tally.sweep(db)  # another process takes the writer for dead and counts what is there
    assert totals(db)["images"] == 2
    second = storage.prediction_ops([pred("c"), pred("d"), pred("e")], datetime.now(UTC), token)
    db.images.bulk_write(second["images"], ordered=False)
    sink.settle({tally.IMAGES: 5})  # the writer finishes its batch and settles all of it
    assert totals(db)["images"] == 5
    tally.sweep(db)
    assert totals(db)["images"] == 5


def test_a_batch_retried_after_a_failed_write_counts_what_the_failed_attempt_did(db):
    sink = Tally(db, "sink")
    token = sink.begin()  # the first attempt wrote two images, then MongoDB went away
    ops = storage.prediction_ops([pred("a"), pred("b")], datetime.now(UTC), token)
    db.images.bulk_write(ops["images"], ordered=False)
    db.predictions.bulk_write(ops["predictions"], ordered=False)
    write(db, sink, [pred(x) for x in "abcd"])  # the retry (imgflow.retry.retry) under a new token
    assert totals(db) == exact(db) and totals(db)["images"] == 4


def test_failures_count_in_and_out_and_a_crash_before_the_delete_is_finished(db):
    dead_letters = Tally(db, "dead-letters")
    storage.write_failures(db, dead_letters, [failure("x"), failure("y"), failure("z")])
    storage.write_failures(db, dead_letters, [failure("x")])  # redelivered
    assert totals(db)["failures"] == 3
    write(db, Tally(db, "sink"), [pred("x")])  # retried and succeeded: leaves the failures
    assert totals(db)["failures"] == 2 and db.failures.count_documents({}) == 2

    # Killed after settling a removal, before deleting: counted out, deleted by the next sweep.
    sink = Tally(db, "sink")
    token = sink.begin()
    db.failures.update_many({"_id": "y"}, {"$set": {"gone": token}})
    sink.settle({tally.FAILURES: -1})
    assert totals(db)["failures"] == 1
    tally.sweep(db)
    assert db.failures.count_documents({}) == 1 and totals(db) == exact(db)


def test_edits_count_each_change_once(db):
    write(db, Tally(db, "sink"), [pred(x) for x in "abc"])
    assert feedback.set_hidden(db, "a", True, by="ann")
    assert feedback.set_hidden(db, "a", True, by="ann")  # already hidden
    assert feedback.set_hidden(db, "b", True, by="ann")
    assert feedback.set_hidden(db, "b", False, by="ann")
    assert not feedback.set_hidden(db, "nope", True, by="ann")
    assert feedback.correct_label(db, "c", "espresso", by="ann")
    assert feedback.correct_label(db, "c", "latte", by="bob")  # corrected again: one image
    assert feedback.correct_label(db, "a", "tabby", by="bob")
    assert feedback.clear_correction(db, "a", by="bob")
    assert feedback.clear_correction(db, "a", by="bob")  # nothing left to clear
    counted = totals(db)
    assert counted == exact(db)
    assert (counted["hidden"], counted["corrected"]) == (1, 1)
    # The effective label follows the correction and falls back when it is cleared.
    assert db.images.find_one({"_id": "c"})["elabel"] == "latte"
    assert db.images.find_one({"_id": "a"})["elabel"] == "tabby"
    # A newer result keeps a person's label as the effective one.
    write(db, Tally(db, "sink"), [pred("c", label="tabby", at=datetime.now(UTC).timestamp() + 5)])
    assert db.images.find_one({"_id": "c"})["elabel"] == "latte"


def test_rebuild_recounts_data_stored_before_counters(db):
    write(db, Tally(db, "sink"), [pred(x) for x in "abcd"])
    feedback.set_hidden(db, "a", True, by="ann")
    db.counters.delete_many({})  # as if written by an older imgflow
    assert totals(db)["images"] == 0
    tally.rebuild(db)
    assert totals(db) == exact(db) and totals(db)["images"] == 4


def test_first_at_is_the_oldest_store(db):
    old = datetime.now(UTC) - timedelta(hours=3)
    sink = Tally(db, "sink")
    storage.write_predictions(db, sink, [pred("a")], old)
    storage.write_predictions(db, sink, [pred("b")], datetime.now(UTC))
    assert abs((tally.totals(db)["first_at"] - old).total_seconds()) < 0.01
