"""Faces end to end: a worker whose default model is the bundled face model (MTCNN + FaceNet),
a person enrolled with ``faces enroll``, frames from a plain Kafka client; identities in
MongoDB, ``/images/{id}``, the live counts, and the opt-in annotated topic.

Images that ship in wheels: scikit-image's ``astronaut()`` (Eileen Collins, NASA, public
domain), matplotlib's ``grace_hopper.jpg`` (US Navy, public domain) and ``coffee()``.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from cli.faces import DEFAULT_FACE_SPEC
from tests.support import Pipeline, Services, Worker, produce_raw, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: Eileen Collins' face in ``astronaut()`` (x0, y0, x1, y1), set by eye on an enlarged crop.
TRUE_FACE = (186, 80, 268, 178)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def photos() -> dict[str, Image.Image]:
    from matplotlib import cbook
    from skimage import data

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
        grace = hopper.convert("RGB")
    astronaut = Image.fromarray(data.astronaut())
    return {
        "astronaut": astronaut,
        "astronaut-mirrored": ImageOps.mirror(astronaut).resize((384, 384)),
        "grace": grace,
        "coffee": Image.fromarray(data.coffee()),
    }


@pytest.fixture(scope="module")
def running(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pipeline, Worker]]:
    root = tmp_path_factory.mktemp("faces")
    pipeline = Pipeline(
        services=services,
        home=root / "home",
        image_roots=tmp_path_factory.getbasetemp(),
        extra_env={"IMGFLOW_MODEL": str(DEFAULT_FACE_SPEC), "IMGFLOW_ANNOTATE": "1"},
    )
    pipeline.home.mkdir(parents=True)
    worker = pipeline.start_worker()
    try:
        worker.wait_ready(timeout=240)
        yield pipeline, worker
    finally:
        pipeline.stop()


async def read_annotated(bootstrap: str, topic: str, want: int) -> list:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        got: list = []
        for _ in range(60):
            batches = await consumer.getmany(timeout_ms=1000)
            got += [r for records in batches.values() for r in records]
            if len(got) >= want:
                break
        return got
    finally:
        await consumer.stop()


def test_an_enrolled_person_is_recognised_another_is_unknown_and_no_face_is_no_face(running, tmp_path: Path):
    pipeline, worker = running
    images = photos()
    enrol_file = tmp_path / "eileen.jpg"
    enrol_file.write_bytes(jpeg(images["astronaut"]))
    cat = tmp_path / "coffee.jpg"
    cat.write_bytes(jpeg(images["coffee"]))
    enrolled = pipeline.run(
        "--json", "faces", "enroll", "Eileen Collins", str(enrol_file), str(cat), timeout=180
    )
    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout.strip().splitlines()[-1])["added"] == 1
    assert "coffee.jpg: no face found" in enrolled.stderr
    listed = pipeline.run("faces", "list")
    assert "Eileen Collins\tfaces:mtcnn-1.0.0+facenet-20180408-102900\t1 faces" in listed.stdout

    frames = [(b"door", jpeg(images[name])) for name in ("astronaut-mirrored", "grace", "coffee")]
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("frames"), frames))
    db = pipeline.mongo()
    wait_until(lambda: db.images.count_documents({"source": "door"}) >= 3, 180, "three frames stored")
    by_width = {doc["width"]: doc for doc in db.images.find({"source": "door"})}
    mirrored, grace, coffee = by_width[384], by_width[images["grace"].width], by_width[images["coffee"].width]

    assert mirrored["label"] == "Eileen Collins" and mirrored["model"] == "faces"
    [face] = mirrored["prediction"]["faces"]
    assert face["identity"] == "Eileen Collins" and face["distance"] < 0.9 and face["score"] > 0.9
    x0, y0, x1, y1 = TRUE_FACE  # mirrored and scaled to 384 px: the true box moves with it
    s = 384 / 512
    assert iou(face["box"], ((512 - x1) * s, y0 * s, (512 - x0) * s, y1 * s)) >= 0.5
    assert grace["label"] == "unknown" and grace["prediction"]["faces"][0]["distance"] > 0.9
    assert coffee["label"] == "no_face" and coffee["prediction"]["faces"] == []

    # The embeddings are kept with every model's prediction; /images/{id} serves them.
    status, body = worker.get(f"/images/{mirrored['_id']}")
    assert status == 200
    [stored] = body["predictions"]
    assert len(stored["faces"][0]["embedding"]) == 512 and stored["faces"][0]["identity"] == "Eileen Collins"

    # Live counts count identities.
    def counted() -> Counter:
        status, body = worker.get("/counts/?windows=100")
        assert status == 200, body
        out: Counter = Counter()
        for window in body["windows"]:
            out.update(window["counts"])
        return out

    # Each image's stored event is counted on its own partition: wait for all three labels.
    labels = ("Eileen Collins", "unknown", "no_face")
    wait_until(lambda: all(counted().get(label, 0) >= 1 for label in labels), 60, "every label counted")

    # Opt-in annotated output: the frames drawn, with the result in a header.
    records = asyncio.run(read_annotated(pipeline.services.bootstrap, pipeline.topic("annotated"), 3))
    drawn = {r.key.decode(): r for r in records}
    assert set(drawn) >= {mirrored["_id"], grace["_id"], coffee["_id"]}
    header = json.loads(dict(drawn[mirrored["_id"]].headers)["imgflow-record"])
    assert header["faces"][0]["identity"] == "Eileen Collins" and "embedding" not in header["faces"][0]
    with Image.open(io.BytesIO(drawn[mirrored["_id"]].value)) as im:
        assert im.size == (384, 384)

    # Removing a person: gone from the list; removing her again is an error.
    assert pipeline.run("faces", "remove", "Eileen Collins").returncode == 0
    assert "Eileen Collins" not in pipeline.run("faces", "list").stdout
    assert pipeline.run("faces", "remove", "Eileen Collins").returncode != 0
