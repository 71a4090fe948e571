"""Replay selection parsing, replay headers, and the model comparison query (real MongoDB-protocol server)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from imgflow import tally
from imgflow.queries import compare_models, model_versions, split_model
from imgflow.records import ImagePath
from imgflow.storage import ensure_indexes
from lifecycle.replay import Candidate, ReplayReport, Selection, parse_offsets, parse_time, replayed
from sources.publish import path_message, replay_headers


def test_parse_time_accepts_durations_and_iso():
    now = 1_800_000_000.0
    assert parse_time("90s", now) == now - 90
    assert parse_time("2h", now) == now - 7200
    assert parse_time("1.5d", now) == now - 1.5 * 86400
    assert parse_time("2027-01-15T10:00:00Z") == parse_time("2027-01-15T10:00:00+00:00")
    assert parse_time("2027-01-15T10:00:00") == parse_time("2027-01-15T10:00:00Z")  # naive = UTC
    with pytest.raises(ValueError, match="duration"):
        parse_time("yesterday")


def test_parse_offsets():
    assert parse_offsets(["0:10-20", "3:5-"]) == {0: (10, 20), 3: (5, None)}
    for bad in ["0:20-10", "x:1-2", "1-2"]:
        with pytest.raises(ValueError):
            parse_offsets([bad])


def test_replayed_messages_carry_their_origin_in_headers_and_new_ones_none():
    """The one publisher derives the headers replay used to build by hand."""
    item = ImagePath(image_id="a", path="/x.jpg", source="submit", submitted_at=1.0)
    message = replayed(item, Candidate(2, 17, 5000, item), "imgflow-paths", "replay-1", None)
    assert replay_headers(message) == [
        ("imgflow-replay-id", b"replay-1"),
        ("imgflow-origin", b"imgflow-paths/2/17"),
    ]
    retry = ImagePath(image_id="b", path="/y.jpg", replay_id="retry-1", attrs={"retry_of": {"kind": "x"}})
    assert replay_headers(retry) == [("imgflow-replay-id", b"retry-1")]
    assert replay_headers(path_message(Path("c.jpg"), "submit")) == []


def test_the_replay_report_in_words():
    report = ReplayReport(replay_id="r1", topic="imgflow-paths", skipped_replays=2)
    report.per_partition.update({1: 3, 0: 4})
    assert report.in_words(dry_run=True).splitlines() == [
        "would replay 7 records from imgflow-paths",
        "  partition 0: 4",
        "  partition 1: 3",
        "  skipped 2 messages of earlier replays",
    ]
    assert report.in_words(dry_run=False).splitlines()[-1] == "replay id r1"


def test_selection_filters():
    sel = Selection(since=100.0, until=200.0, offsets={1: (5, 9)}, sources=frozenset({"cam"}))
    assert sel.wants_partition(1) and not sel.wants_partition(0)
    assert sel.first_offset(1) == 5 and sel.past_end(1, 10) and not sel.past_end(1, 9)
    assert sel.in_time(100_000) and sel.in_time(199_999) and not sel.in_time(200_000)
    item = ImagePath(image_id="a", path="/a", source="cam")
    assert sel.accepts(item)
    assert not sel.accepts(ImagePath(image_id="a", path="/a", source="web"))
    assert not sel.accepts(ImagePath(image_id="a", path="/a", source="cam", replay_id="r1"))
    assert Selection(include_replays=True).accepts(ImagePath(image_id="a", path="/a", replay_id="r1"))


def test_split_model():
    assert split_model("efficientnet-lite0:1.0.0") == ("efficientnet-lite0", "1.0.0")
    assert split_model("org:model:2") == ("org:model", "2")
    with pytest.raises(ValueError):
        split_model("noversion")


@pytest.fixture
def db(services):
    from pymongo import MongoClient

    client = MongoClient(services.mongo_url)
    name = f"cmp_{uuid.uuid4().hex[:8]}"
    ensure_indexes(client[name])  # as the sink creates them
    yield client[name]
    client.drop_database(name)
    client.close()


def pred(image_id, model, version, label, score, top_k):
    return {
        "_id": f"{image_id}|{model}|{version}",
        "image_id": image_id,
        "model": model,
        "model_version": version,
        "label": label,
        "score": score,
        "top_k": [{"label": lab, "score": s} for lab, s in top_k],
    }


def test_compare_models_on_known_disagreements(db):
    db.predictions.insert_many(
        [
            pred("i1", "m", "1", "cat", 0.9, [("cat", 0.9), ("dog", 0.1)]),
            pred("i1", "m", "2", "cat", 0.8, [("cat", 0.8), ("dog", 0.2)]),
            pred("i2", "m", "1", "dog", 0.6, [("dog", 0.6), ("cat", 0.4)]),
            pred("i2", "m", "2", "cat", 0.7, [("cat", 0.7), ("dog", 0.3)]),
            pred("i3", "m", "1", "cat", 0.95, [("cat", 0.95)]),
            pred("i3", "m", "2", "dog", 0.99, [("dog", 0.99)]),
            pred("i4", "m", "1", "cat", 0.5, [("cat", 0.5)]),  # only in version 1: not compared
        ]
    )
    report = compare_models(db, "m:1", "m:2")
    assert report["images"] == 3 and report["agree"] == 1
    assert report["agreement"] == pytest.approx(1 / 3)
    assert report["confusion"] == {"cat": {"cat": 1, "dog": 1}, "dog": {"cat": 1}}
    # i3 lost all of its 0.95 on "cat"; i2 lost 0.6 - 0.3 = 0.3 on "dog".
    assert [c["image_id"] for c in report["changed"]] == ["i3", "i2"]
    assert report["changed"][0]["delta"] == pytest.approx(0.95)
    assert report["changed"][1]["delta"] == pytest.approx(0.3)
    # Read range by range (bounded memory), with progress; the top changes survive any limit.
    calls: list[tuple[int, int]] = []
    top = compare_models(db, "m:1", "m:2", limit=1, progress=lambda done, total: calls.append((done, total)))
    assert [c["image_id"] for c in top["changed"]] == ["i3"] and top["images"] == 3
    assert calls[-1] == (257, 257) and len(calls) == 257
    tally.rebuild(db)  # written without the sink: count them the slow way, once
    assert model_versions(db) == ["m:1", "m:2"]
    assert compare_models(db, "m:1", "m:9")["images"] == 0


def test_failure_chunks_yield_every_retryable_dead_letter_once_in_bounded_chunks(db):
    import random

    from lifecycle.failed import failure_chunks

    rng = random.Random(3)
    docs = []
    for i in range(2500):
        doc = {"_id": uuid.UUID(int=rng.getrandbits(128)).hex, "path": f"/in/{i}.jpg", "kind": "missing_file"}
        if i % 10 == 0:
            doc["path"] = None  # a malformed message: nothing to retry
        if i % 10 == 1:
            doc["gone"] = "t-1"  # the image succeeded since: being cleared
        docs.append(doc)
    db.failures.insert_many(docs)
    want = {d["_id"] for d in docs if d["path"] is not None and "gone" not in d}
    chunks = list(failure_chunks(db, size=700))
    assert all(0 < len(c) <= 700 for c in chunks) and len(chunks) == -(-len(want) // 700)
    got = [d["_id"] for c in chunks for d in c]
    assert len(got) == len(set(got)) and set(got) == want
    some = [*sorted(want)[:5], docs[0]["_id"], "no-such-id"]  # the dashboard's selection
    assert {d["_id"] for c in failure_chunks(db, some, size=2) for d in c} == set(sorted(want)[:5])
