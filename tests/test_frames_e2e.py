"""Frames end to end: bytes on ``imgflow-frames`` from a plain Kafka client and from
``faust -A imgflow camera`` end as stored results, with previews and replays from MongoDB."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from dashboard.previews import frame_preview_jpeg
from sources.camera import write_video
from tests.images import photo
from tests.support import Pipeline, Services, Worker, path_message, produce_raw, wait_until
from tests.tiny_model import redblue_spec

pytestmark = pytest.mark.e2e


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def running(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pipeline, Worker]]:
    root = tmp_path_factory.mktemp("frames")
    pipeline = Pipeline(services=services, home=root / "home", image_roots=tmp_path_factory.getbasetemp())
    pipeline.home.mkdir(parents=True)
    worker = pipeline.start_worker()
    try:
        worker.wait_ready()
        yield pipeline, worker
    finally:
        pipeline.stop()


def test_frames_from_a_plain_kafka_client_are_stored_with_previews(running, tmp_path: Path):
    pipeline, worker = running
    base = photo()
    frames = [jpeg(base.resize((640, 480)).rotate(angle)) for angle in (0, 4, 8)]
    asyncio.run(
        produce_raw(
            pipeline.services.bootstrap,
            pipeline.topic("frames"),
            [*((b"door-cam", data) for data in frames), (b"door-cam", b"these bytes are no image")],
        )
    )
    db = pipeline.mongo()
    wait_until(
        lambda: (
            db.images.count_documents({"source": "door-cam"}) >= 3
            and db.failures.count_documents({"source": "door-cam"}) >= 1
        ),
        timeout=120,
        what="3 frames stored and 1 failed",
    )
    docs = list(db.images.find({"source": "door-cam"}))
    assert len(docs) == 3
    for doc in docs:
        assert doc["path"] == f"frame://door-cam/{doc['_id']}"
        assert doc["label"] and doc["model_version"]
        preview = frame_preview_jpeg(db, doc["path"], px=160)
        assert preview is not None and Image.open(io.BytesIO(preview)).size == (160, 120)
    [failure] = db.failures.find({"source": "door-cam"})
    assert failure["kind"] == "not_an_image" and failure["path"].startswith("frame://door-cam/")
    status, body = worker.get(f"/images/{docs[0]['_id']}")
    assert status == 200 and body["image"]["path"] == docs[0]["path"]
    assert body["image"]["width"] == 640

    # A replay of a frame's path decodes it again from MongoDB, as for a file.
    key, value = path_message(docs[0]["path"], image_id="frame-replayed", source="replay-test")  # type: ignore[arg-type]
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), [(key, value)]))
    wait_until(lambda: db.images.find_one({"_id": "frame-replayed"}), 60, "the replayed frame stored")
    again = db.images.find_one({"_id": "frame-replayed"})
    assert again["label"] == docs[0]["label"] and again["path"] == docs[0]["path"]


def test_camera_sends_a_video_file_and_waits_for_every_result(running, tmp_path: Path):
    pipeline, _worker = running
    base = photo().resize((320, 240))
    video = write_video([base.rotate(i * 2) for i in range(20)], tmp_path / "lobby.mp4", fps=10)
    done = pipeline.run("--json", "camera", "--file", str(video), "--fps", "5", "--wait", "--timeout", "90")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["source"] == "lobby" and summary["sent"] == 10  # 2 s of video at 5 frames/s
    assert summary["stored"] == 10 and summary["failed"] == 0
    db = pipeline.mongo()
    names = sorted(doc["file_name"] for doc in db.images.find({"source": "lobby"}))
    assert names == sorted(f"lobby.mp4#{i}" for i in range(0, 20, 2))

    # Replay of the frames topic with another model: each frame decoded again from MongoDB.
    spec2 = redblue_spec(tmp_path / "v2", name="redblue", version="2.0.0", labels=("red", "blue"))
    out = pipeline.run("replay", "--topic", "frames", "--source", "lobby", "--model", str(spec2), timeout=120)
    assert out.returncode == 0 and "replayed 10 records" in out.stdout, out.stdout + out.stderr
    ids = {doc["_id"] for doc in db.images.find({"source": "lobby"}, {"_id": 1})}
    v2 = {"model": "redblue", "model_version": "2.0.0"}
    wait_until(lambda: db.predictions.count_documents(v2) >= 10, 120, "the frames' v2 predictions")
    assert set(db.predictions.distinct("image_id", v2)) == ids


def test_camera_refuses_a_missing_source_and_two_at_once(running, tmp_path: Path):
    pipeline, _worker = running
    missing = pipeline.run("camera", "--file", str(tmp_path / "nope.mp4"))
    assert missing.returncode != 0 and "no such video file" in missing.stderr
    both = pipeline.run("camera", "--folder", str(tmp_path), "--file", str(tmp_path / "x.mp4"))
    assert both.returncode != 0 and "exactly one of" in both.stderr
