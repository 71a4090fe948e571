"""End to end on real services: paths -> tensors -> predictions -> MongoDB.

A real ``faust -A imgflow worker`` process, the embedded Kafka-protocol broker
and MongoDB-protocol server; messages are published with a plain aiokafka
producer in the documented JSON, as any Kafka client would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.dataset import write_dataset
from tests.images import bad_inputs, odd_images
from tests.support import Pipeline, Services, Worker, path_message, produce_raw, wait_until

pytestmark = pytest.mark.e2e

CATS = {"Egyptian Mau", "Egyptian cat", "tabby", "tabby cat", "tiger cat"}
BOMB_PIXELS = 4_000_000


@dataclass
class ChainRun:
    """One run of the chain over good, odd, bad and malformed input, shared by the tests below."""

    pipeline: Pipeline
    worker: Worker
    good: dict[str, Path]
    expected_failures: dict[str, str]
    malformed: list[tuple[bytes | None, bytes]]
    images: dict[str, dict]
    failures: dict[str, dict]

    def by_name(self, name: str) -> str:
        return next(i for i, p in self.good.items() if p.name == name)


@pytest.fixture(scope="module")
def chain(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainRun]:
    """Publish everything once with a plain Kafka client; wait until all of it is in MongoDB."""
    tmp_path = tmp_path_factory.mktemp("chain")
    pipeline = Pipeline(services=services, home=tmp_path / "home", image_roots=tmp_path_factory.getbasetemp())
    pipeline.home.mkdir(parents=True)
    pipeline.extra_env["IMGFLOW_MAX_PIXELS"] = str(BOMB_PIXELS)
    try:
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
        malformed: list[tuple[bytes | None, bytes]] = [
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
            lambda: (
                db.images.count_documents({}) >= len(good) and db.failures.count_documents({}) >= n_failures
            ),
            timeout=240,
            what=f"{len(good)} images and {n_failures} failures in MongoDB",
        )
        yield ChainRun(
            pipeline=pipeline,
            worker=worker,
            good=good,
            expected_failures=expected_failures,
            malformed=malformed,
            images={doc["_id"]: doc for doc in db.images.find()},
            failures={doc["_id"]: doc for doc in db.failures.find()},
        )
    finally:
        pipeline.stop()


def test_every_good_image_is_stored_once_with_the_default_models_prediction(chain: ChainRun):
    assert set(chain.images) == set(chain.good)
    for image_id, doc in chain.images.items():
        assert doc["model"] == "efficientnet-lite0" and doc["model_version"] == "1.0.0"
        assert doc["prediction"]["label"] == doc["label"]
        assert len(doc["prediction"]["top_k"]) == 5
        assert doc["file_name"] == chain.good[image_id].name
        assert len(doc["sha256"]) == 64
    assert chain.pipeline.mongo().predictions.count_documents({}) == len(chain.good)


def test_known_photos_get_their_labels(chain: ChainRun):
    chelsea = chain.images[chain.by_name("chelsea-orig.jpg")]
    assert {t["label"] for t in chelsea["prediction"]["top_k"][:3]} & CATS
    assert chain.images[chain.by_name("coffee-orig.jpg")]["label"] == "espresso"


def test_every_bad_image_has_one_failure_with_its_kind_and_a_message(chain: ChainRun):
    assert len(chain.failures) == len(chain.expected_failures) + len(chain.malformed)
    for image_id, kind in chain.expected_failures.items():
        failure = chain.failures[image_id]
        assert (failure["kind"], failure["stage"]) == (kind, "decode"), failure
        assert failure["message"]


def test_malformed_messages_are_failures_located_by_topic_and_offset(chain: ChainRun):
    docs = [d for d in chain.failures.values() if d["kind"] == "malformed_message"]
    assert len(docs) == len(chain.malformed)
    assert all(d["topic"] == chain.pipeline.topic("paths") and d["offset"] is not None for d in docs)


def test_the_worker_keeps_going_after_bad_input(chain: ChainRun):
    assert chain.worker.health()[0] == 200


def test_image_view_answers_stored_failed_or_404(chain: ChainRun):
    status, body = chain.worker.get(f"/images/{chain.by_name('coffee-orig.jpg')}")
    assert status == 200 and body["status"] == "stored"
    assert body["image"]["label"] == "espresso" and len(body["predictions"]) == 1
    some_failure = next(iter(chain.expected_failures))
    status, body = chain.worker.get(f"/images/{some_failure}")
    assert status == 200 and body["status"] == "failed"
    assert body["failure"]["kind"] == chain.expected_failures[some_failure]
    assert chain.worker.get("/images/no-such-image")[0] == 404


def test_metrics_parse_as_prometheus_and_count_what_was_sent(chain: ChainRun):
    metrics = scrape(chain.worker)
    n_good, n_failures = len(chain.good), len(chain.failures)
    assert metrics["imgflow_images_decoded_total"] == n_good
    assert metrics["imgflow_images_classified_total"] == n_good
    assert metrics["imgflow_images_stored_total"] == n_good
    assert metrics["imgflow_end_to_end_seconds_count"] == n_good
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
