"""A seed-style consumer, the baseline ``make bench`` compares imgflow with.

What the systems imgflow replaces do, per message: read the path, open and resize the image
with Pillow, ``model.predict`` on that one image with Keras, ``insert_one`` into MongoDB. A
plain synchronous consumer (librdkafka, as most of them used), one process, no batching.

Run by the benchmark: ``python -m benchmarks.seed_consumer BOOTSTRAP TOPIC MONGO_URL DB
KERAS_MODEL LABELS COUNT``; prints ``{"images": N, "seconds": S, "ips": R}`` (from the first
message to the last insert, so the model's load is not counted).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer
from PIL import Image
from pymongo import MongoClient


def main(argv: list[str]) -> int:
    bootstrap, topic, mongo_url, db_name, model_path, labels_path, count = argv
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    labels = Path(labels_path).read_text().splitlines()
    collection: Any = MongoClient(mongo_url)[db_name]["seed_predictions"]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "seed", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    done, started = 0, None
    try:
        while done < int(count):
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            started = started or time.perf_counter()
            path = json.loads(msg.value() or b"{}")["path"]
            pixels = np.asarray(Image.open(path).convert("RGB").resize((224, 224)), dtype=np.float32)
            scores = model.predict((pixels[None] - 127.0) / 128.0, verbose=0)[0]
            best = int(np.argmax(scores))
            collection.insert_one({"path": path, "label": labels[best], "score": float(scores[best])})
            done += 1
    finally:
        consumer.close()
    seconds = time.perf_counter() - (started or time.perf_counter())
    print(json.dumps({"images": done, "seconds": seconds, "ips": done / seconds if seconds else 0.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
