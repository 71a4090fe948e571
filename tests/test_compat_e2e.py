"""Kafka clients other than imgflow's own publish into the chain.

librdkafka is what most non-Python producers use (kcat, confluent-kafka, Go's
confluent-kafka-go, node-rdkafka). Debian 12's kcat (librdkafka 2.0.2) cannot
talk to the embedded broker (docs/architecture.md "Messages"); this checks that a current
librdkafka does, with the documented path message.
"""

from __future__ import annotations

from pathlib import Path

import confluent_kafka
import pytest

from tests.images import photo
from tests.support import Pipeline, path_message, wait_until

pytestmark = pytest.mark.e2e


def test_a_librdkafka_producer_publishes_a_path_that_gets_stored(pipeline: Pipeline, tmp_path: Path):
    cat = tmp_path / "cat.jpg"
    photo().save(cat)
    worker = pipeline.start_worker()
    worker.wait_ready()

    key, value = path_message(cat, source="librdkafka", attrs={"client": "confluent-kafka"})
    delivered: list = []
    producer = confluent_kafka.Producer({"bootstrap.servers": pipeline.services.bootstrap})
    producer.produce(
        pipeline.topic("paths"), value=value, key=key, on_delivery=lambda err, msg: delivered.append(err)
    )
    assert producer.flush(60) == 0
    assert delivered == [None]  # delivered, no error

    db = pipeline.mongo()
    doc = wait_until(lambda: db.images.find_one({"_id": key.decode()}), 180, "the image stored")
    assert doc["source"] == "librdkafka" and doc["attrs"] == {"client": "confluent-kafka"}
    assert doc["file_name"] == "cat.jpg" and doc["label"]
