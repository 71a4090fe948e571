"""End to end on real services: paths -> tensors -> predictions -> MongoDB.

A real ``faust -A imgflow worker`` process, the embedded Kafka-protocol broker
and MongoDB-protocol server; messages are published with a plain aiokafka
producer in the documented JSON, as any Kafka client would.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from simulator.dataset import write_dataset
from tests.images import bad_inputs, odd_images
from tests.support import Pipeline, path_message, produce_raw, wait_until

pytestmark = pytest.mark.e2e

CATS = {"Egyptian Mau", "Egyptian cat", "tabby", "tabby cat", "tiger cat"}
BOMB_PIXELS = 4_000_000


def test_chain_classifies_good_images_and_records_every_bad_one(pipeline: Pipeline, tmp_path: Path):
    pipeline.extra_env["IMGFLOW_MAX_PIXELS"] = str(BOMB_PIXELS)
    worker = pipeline.start_worker()
    dataset = write_dataset(tmp_path / "dataset")
    odd = odd_images(tmp_path / "odd")
    bad = bad_inputs(tmp_path / "bad", BOMB_PIXELS)
    assert len(dataset) >= 50

    good: dict[str, Path] = {}
    messages: list[tuple[bytes | None, bytes]] = []
    for path in [*dataset, *odd.values()]:
        key, value = path_message(path, source="test")
        good[key.decode()] = path
        messages.append((key, value))
    expected_failures: dict[str, str] = {}
    for path, kind in bad.values():
        key, value = path_message(path, source="test")
        expected_failures[key.decode()] = kind
        messages.append((key, value))
    # Malformed messages: not JSON, no path, wrong type, a JSON array.
    malformed = [
        (b"m-notjson", b"\x00\x01 this is not json"),
        (b"m-nopath", json.dumps({"image_id": "m-nopath"}).encode()),
        (b"m-badtype", json.dumps({"image_id": "m-badtype", "path": 42}).encode()),
        (None, b"[1, 2, 3]"),
    ]
    messages += malformed
    # Key only, no image_id in the body: the key becomes the id.
    messages.append((b"keyed-only", json.dumps({"path": str(dataset[0])}).encode()))
    good["keyed-only"] = dataset[0]

    worker.wait_ready()
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), messages))

    db = pipeline.mongo()
    n_failures = len(expected_failures) + len(malformed)
    wait_until(
        lambda: db.images.count_documents({}) >= len(good) and db.failures.count_documents({}) >= n_failures,
        timeout=240,
        what=f"{len(good)} images and {n_failures} failures in MongoDB",
    )

    # Every good image: exactly one images document, with a prediction from the default model.
    images = {doc["_id"]: doc for doc in db.images.find()}
    assert set(images) == set(good)
    for image_id, doc in images.items():
        assert doc["model"] == "efficientnet-lite0" and doc["model_version"] == "1.0.0"
        assert doc["prediction"]["label"] == doc["label"]
        assert len(doc["prediction"]["top_k"]) == 5
        assert doc["file_name"] == good[image_id].name
        assert len(doc["sha256"]) == 64
    assert db.predictions.count_documents({}) == len(good)
    chelsea = next(i for i, p in good.items() if p.name == "chelsea-orig.jpg")
    assert {t["label"] for t in images[chelsea]["prediction"]["top_k"][:3]} & CATS
    coffee = next(i for i, p in good.items() if p.name == "coffee-orig.jpg")
    assert images[coffee]["label"] == "espresso"

    # Every bad image: exactly one failures document, with the right kind and a message.
    failures = {doc["_id"]: doc for doc in db.failures.find()}
    assert len(failures) == n_failures
    for image_id, kind in expected_failures.items():
        assert failures[image_id]["kind"] == kind, failures[image_id]
        assert failures[image_id]["stage"] == "decode"
        assert failures[image_id]["message"]
    malformed_docs = [d for d in failures.values() if d["kind"] == "malformed_message"]
    assert len(malformed_docs) == len(malformed)
    assert all(d["topic"] == pipeline.topic("paths") and d["offset"] is not None for d in malformed_docs)

    # The worker kept going: it is still healthy after all of that.
    assert worker.health()[0] == 200

    # GET /images/{id}: the stored result, a failure, or 404.
    status, body = worker.get(f"/images/{coffee}")
    assert status == 200 and body["status"] == "stored"
    assert body["image"]["label"] == "espresso" and len(body["predictions"]) == 1
    some_failure = next(iter(expected_failures))
    status, body = worker.get(f"/images/{some_failure}")
    assert status == 200 and body["status"] == "failed"
    assert body["failure"]["kind"] == expected_failures[some_failure]
    assert worker.get("/images/no-such-image")[0] == 404

    # GET /metrics parses as Prometheus text and its counters match what was sent.
    metrics = scrape(worker)
    assert metrics["imgflow_images_decoded_total"] == len(good)
    assert metrics["imgflow_images_classified_total"] == len(good)
    assert metrics["imgflow_images_stored_total"] == len(good)
    assert metrics["imgflow_end_to_end_seconds_count"] == len(good)
    assert metrics["imgflow_images_failed_total"] == n_failures
    assert metrics["imgflow_inference_seconds_count"] >= 1


def scrape(worker) -> dict[str, float]:
    """Sum each sample name over its labels."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_submit_command_publishes_files_and_folders(pipeline: Pipeline, tmp_path: Path):
    pipeline.extra_env["IMGFLOW_HOME"] = str(tmp_path / "home-that-does-not-exist-yet" / "var")
    worker = pipeline.start_worker()
    dataset = write_dataset(tmp_path / "dataset", variants=1)
    worker.wait_ready()
    ids_file = tmp_path / "ids.txt"
    result = pipeline.run("submit", str(tmp_path / "dataset"), "--ids-out", str(ids_file))
    assert result.returncode == 0, result.stderr
    ids = ids_file.read_text().split()
    assert len(ids) == len(dataset) == len(set(ids))
    db = pipeline.mongo()
    wait_until(lambda: db.images.count_documents({}) >= len(ids), 180, "submitted images stored")
    assert {d["_id"] for d in db.images.find({}, {"_id": 1})} == set(ids)
    assert {d["source"] for d in db.images.find()} == {"submit"}
