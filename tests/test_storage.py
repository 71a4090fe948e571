"""MongoDB writes against the real MongoDB-protocol server: redelivery never goes back in time.

Delivery is at least once, so a result can arrive again after a newer one (a
redelivered batch, a replay of an older model version). ``images`` must keep the
newest prediction whatever the arrival order, ``predictions`` keeps one document
per (image, model, version), and user state is never touched by the pipeline.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from imgflow.mongo import connect
from imgflow.records import ImageMeta, ImageRef, Prediction
from imgflow.storage import Store, prediction_id

# Store clients are bound to one event loop: fixtures and tests share the session loop.
pytestmark = pytest.mark.asyncio(loop_scope="session")

T0 = 1_795_000_000.123456  # sub-millisecond digits: BSON keeps milliseconds


@pytest_asyncio.fixture(loop_scope="session")
async def store(mongo_url: str) -> AsyncIterator[Store]:
    s = Store(mongo_url, f"imgflow_storage_{uuid.uuid4().hex[:8]}")
    await s.ensure_indexes()
    yield s
    await s.client.drop_database(s.db.name)
    await s.close()


@pytest.fixture
def db(store: Store, mongo_url: str):
    client = connect(mongo_url)
    yield client[store.db.name]
    client.close()


def prediction(
    image_id: str,
    version: str,
    predicted_at: float,
    label: str,
    model: str = "net",
    replay_id=None,
    submitted_at: float = T0 - 100,
) -> Prediction:
    return Prediction(
        ref=ImageRef(
            image_id=image_id,
            path=f"/data/{image_id}.jpg",
            source="test",
            submitted_at=submitted_at,
            replay_id=replay_id,
        ),
        predicted_at=predicted_at,
        label=label,
        score=0.9,
        top_k=[{"label": label, "score": 0.9}],
        model=model,
        model_version=version,
        inference_ms=3.0,
        batch_size=1,
        meta=ImageMeta(
            file_name=f"{image_id}.jpg", width=4, height=3, format="JPEG", bytes=10, sha256="0" * 64
        ),
    )


async def test_late_redelivery_of_an_older_version_does_not_overwrite_the_newer(store: Store, db):
    v2 = prediction("img", "2.0", T0 + 10, "tabby")
    v1 = prediction("img", "1.0", T0, "tiger cat")
    await store.write_predictions([v2])
    db.images.update_one({"_id": "img"}, {"$set": {"hidden": True, "feedback": {"label": "lynx"}}})
    before = db.images.find_one({"_id": "img"})

    await store.write_predictions([v1])  # the late redelivery

    assert db.images.find_one({"_id": "img"}) == before
    assert before["model_version"] == "2.0" and before["label"] == "tabby"
    assert before["prediction"]["label"] == "tabby"
    # Every version is kept beside the others.
    versions = {d["model_version"]: d["label"] for d in db.predictions.find({"image_id": "img"})}
    assert versions == {"1.0": "tiger cat", "2.0": "tabby"}


async def test_a_newer_result_replaces_the_older_and_keeps_user_state(store: Store, db):
    await store.write_predictions([prediction("img", "1.0", T0, "tiger cat")])
    db.images.update_one({"_id": "img"}, {"$set": {"hidden": True, "feedback": {"label": "lynx"}}})
    created = db.images.find_one({"_id": "img"})["created_at"]

    await store.write_predictions([prediction("img", "2.0", T0 + 10, "tabby")])

    doc = db.images.find_one({"_id": "img"})
    assert (doc["model_version"], doc["label"], doc["prediction"]["label"]) == ("2.0", "tabby", "tabby")
    assert doc["hidden"] is True and doc["feedback"] == {"label": "lynx"}
    assert doc["created_at"] == created
    assert db.predictions.count_documents({"image_id": "img"}) == 2


async def test_redelivery_of_the_same_result_changes_nothing(store: Store, db):
    p = prediction("img", "1.0", T0, "tabby")
    await store.write_predictions([p])
    images, predictions = db.images.find_one({"_id": "img"}), db.predictions.find_one({"image_id": "img"})

    await store.write_predictions([p])

    assert db.images.find_one({"_id": "img"}) == images
    assert list(db.predictions.find({"image_id": "img"})) == [predictions]


async def test_an_older_prediction_of_the_same_version_does_not_overwrite_a_newer_one(store: Store, db):
    newer = prediction("img", "1.0", T0 + 5, "tabby", replay_id="replay-2")
    older = prediction("img", "1.0", T0, "tiger cat")
    await store.write_predictions([newer])
    await store.write_predictions([older])

    assert db.images.find_one({"_id": "img"})["label"] == "tabby"
    stored = db.predictions.find_one({"_id": prediction_id("img", "net", "1.0")})
    assert (stored["label"], stored["replay_id"]) == ("tabby", "replay-2")


async def test_one_batch_holding_old_and_new_results_keeps_the_newest(store: Store, db):
    old = prediction("img", "1.0", T0, "tiger cat")
    new = prediction("img", "2.0", T0 + 1, "tabby")
    same_version_older = prediction("img", "2.0", T0 + 0.5, "lynx")
    await store.write_predictions([new, old, same_version_older])

    assert db.images.find_one({"_id": "img"})["label"] == "tabby"
    assert db.predictions.find_one({"_id": prediction_id("img", "net", "2.0")})["label"] == "tabby"
    assert db.images.count_documents({}) == 1 and db.predictions.count_documents({}) == 2


async def test_an_exact_tie_ends_the_same_whatever_the_arrival_order(store: Store, db):
    a = prediction("one", "1.0", T0, "from-a", model="alpha")
    b = prediction("one", "1.0", T0, "from-b", model="beta")
    await store.write_predictions([a])
    await store.write_predictions([b])
    await store.write_predictions([prediction("two", "1.0", T0, "from-b", model="beta")])
    await store.write_predictions([prediction("two", "1.0", T0, "from-a", model="alpha")])

    assert db.images.find_one({"_id": "one"})["label"] == "from-b"
    assert db.images.find_one({"_id": "two"})["label"] == "from-b"


async def test_a_recomputed_old_request_never_displaces_a_replay_with_a_newer_model(store: Store, db):
    """After a rebalance the classify stage may redo the original request *after* a replay:

    its prediction is made later, but it answers the older request (docs/design.md §8)."""
    original = prediction("img", "1.0", T0, "tiger cat", model="lite", submitted_at=T0 - 100)
    replayed = prediction("img", "2.0", T0 + 10, "tabby", model="redblue", submitted_at=T0 + 5)
    recomputed = prediction("img", "1.0", T0 + 20, "tiger cat", model="lite", submitted_at=T0 - 100)
    for batch in ([original], [replayed], [recomputed]):
        await store.write_predictions(batch)
    doc = db.images.find_one({"_id": "img"})
    assert (doc["model"], doc["label"]) == ("redblue", "tabby")
    # The recomputation still refreshes its own version's document.
    lite = db.predictions.find_one({"image_id": "img", "model": "lite"})
    assert lite["predicted_at"].timestamp() == pytest.approx(T0 + 20, abs=0.001)


async def test_a_document_written_before_ranks_existed_is_replaced(store: Store, db):
    db.images.insert_one({"_id": "old", "label": "stale", "prediction": {"label": "stale"}, "hidden": True})
    await store.write_predictions([prediction("old", "1.0", T0, "tabby")])
    doc = db.images.find_one({"_id": "old"})
    assert (doc["label"], doc["prediction"]["label"], doc["hidden"]) == ("tabby", "tabby", True)


async def test_values_that_look_like_field_paths_are_stored_as_written(store: Store, db):
    """The guarded write is an update pipeline, where "$name" would read a field: values stay literal."""
    p = prediction("dollar", "1.0", T0, "$label")
    p.ref = ImageRef(**{**p.ref.asdict(), "path": "$HOME/image.jpg"})
    p.attrs = {"camera": "$cam", "tags": ["$a", "b"]}
    await store.write_predictions([p])
    doc = db.images.find_one({"_id": "dollar"})
    assert (doc["path"], doc["label"], doc["prediction"]["label"]) == ("$HOME/image.jpg", "$label", "$label")
    assert doc["attrs"] == {"camera": "$cam", "tags": ["$a", "b"]}
    assert doc["hidden"] is False and doc["created_at"] == doc["updated_at"]


async def test_upgrade_brings_an_older_database_to_what_the_sink_writes_now(store: Store, db, mongo_url: str):
    """A database stored before counters, effective labels and choices: `upgrade-store` fills them in."""
    import os
    import subprocess
    import sys

    from dashboard import feedback
    from imgflow.tally import totals

    for i in range(6):
        await store.write_predictions([prediction(f"u{i}", "1.0", T0 + i, "tabby" if i % 2 else "espresso")])
    await store.write_predictions([prediction("u0", "2.0", T0 + 50, "tabby", submitted_at=T0 + 40)])
    feedback.correct_label(db, "u1", "lynx", by="test")
    feedback.set_hidden(db, "u2", True, by="test")
    now = totals(db)
    # What an older imgflow left: no elabel, no choices, no counters.
    db.images.update_many({}, {"$unset": {"elabel": ""}})
    db.choices.drop()
    db.counters.drop()
    db.rates.update_many({}, {"$unset": {"t": ""}})
    assert totals(db)["images"] == 0

    env = {**os.environ, "MONGO_URL": mongo_url, "MONGO_DB": db.name}
    run = [sys.executable, "-m", "faust", "-A", "imgflow"]
    done = subprocess.run([*run, "upgrade-store"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "images: 6" in done.stdout and "labelled: 6" in done.stdout
    after = totals(db)
    assert {k: after[k] for k in ("images", "failures", "hidden", "corrected", "predictions")} == {
        k: now[k] for k in ("images", "failures", "hidden", "corrected", "predictions")
    }
    assert db.images.find_one({"_id": "u1"})["elabel"] == "lynx"  # the correction wins
    assert db.images.find_one({"_id": "u0"})["elabel"] == "tabby"
    assert db.rates.count_documents({}) > 0 and all(d["t"] == d["_id"] for d in db.rates.find())
    kinds = {(d["kind"], d["value"]) for d in db.choices.find()}
    assert {("label", "lynx"), ("label", "espresso"), ("model", "net:2.0"), ("source", "test")} <= kinds

    latest = subprocess.run(
        [*run, "latest", "--limit", "3"], env=env, capture_output=True, text=True, timeout=300
    )
    assert latest.returncode == 0, latest.stderr
    lines = latest.stdout.splitlines()
    assert lines[0].startswith("6 images stored, 0 failures")
    assert len(lines) == 4 and "u0.jpg" in lines[1]  # the newest first: u0's replay with 2.0
