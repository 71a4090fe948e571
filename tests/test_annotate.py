"""Results drawn on their images (imgflow/annotate.py) and the opt-in annotate stage."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from agents import annotate
from dashboard.previews import faces_drawn
from imgflow.annotate import KNOWN, STRANGER, annotated_jpeg, draw_result
from imgflow.frames import Frame, FrameStore, frame_path
from imgflow.records import RECORD_HEADER, ImageMeta, ImagePath, ImageRef, Prediction, dumps
from tests.test_stages import channel, drain, run_in_agent

FACES = [
    {"box": [20, 20, 60, 70], "score": 0.99, "identity": "ada", "distance": 0.3},
    {"box": [100, 30, 140, 80], "score": 0.95, "identity": "unknown", "distance": 1.2},
]


def grey(size=(200, 120)) -> Image.Image:
    return Image.new("RGB", size, (128, 128, 128))


def test_faces_are_boxed_green_when_known_and_red_when_not():
    out = draw_result(grey(), "ada", 0.99, FACES)
    assert out.getpixel((40, 69)) == KNOWN  # bottom edge of the first box
    assert out.getpixel((120, 79)) == STRANGER
    assert out.getpixel((80, 100)) == (128, 128, 128)  # outside every box
    half = draw_result(grey((100, 60)), "ada", 0.99, FACES, scale=0.5)  # a preview at half size
    assert half.getpixel((20, 34)) == KNOWN


def test_a_classifier_result_gets_a_banner_and_large_images_are_scaled_down():
    buf = io.BytesIO()
    grey((2560, 1920)).save(buf, "JPEG")
    jpeg = annotated_jpeg(buf.getvalue(), "espresso", 0.91, None, max_side=1280)
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.size == (1280, 960)
        r, g, b = im.getpixel((2, 2))
        assert max(r, g, b) < 60  # the dark banner at the top left
        assert im.getpixel((640, 700)) != (20, 20, 20)


def test_the_dashboard_draws_faces_on_a_smaller_preview():
    buf = io.BytesIO()
    grey((100, 60)).save(buf, "JPEG", quality=95)
    drawn = faces_drawn(buf.getvalue(), FACES, original_width=200)
    with Image.open(io.BytesIO(drawn)) as im:
        r, g, _b = im.getpixel((20, 34))
        assert g > 150 and r < 120  # green, give or take JPEG


def prediction(image_id: str, path: str, faces=None) -> Prediction:
    return Prediction(
        ref=ImageRef(image_id=image_id, path=path, source="cam", submitted_at=time.time()),
        predicted_at=time.time(),
        label="ada",
        score=0.99,
        top_k=[{"label": "ada", "score": 0.99}],
        model="faces",
        model_version="1",
        inference_ms=5.0,
        batch_size=1,
        meta=ImageMeta(file_name="f.jpg", width=200, height=120, format="JPEG", bytes=1, sha256="0" * 64),
        faces=faces,
    )


@pytest.mark.e2e
async def test_the_annotate_stage_sends_drawn_frames_and_skips_what_is_gone(scratch_db):
    store = FrameStore(scratch_db, keep=10)
    buf = io.BytesIO()
    grey().save(buf, "JPEG")
    store.put([Frame(ImagePath(image_id="f1", path=frame_path("cam", "f1"), source="cam"), buf.getvalue())])
    faces = [{**f, "embedding": [0.1, 0.2]} for f in FACES]
    out, annotated = channel()
    bad, _failed = channel()
    agent = run_in_agent(lambda: annotate.stage(store, output=out, failures=bad, roots=[]))
    async with agent.test_context() as a:
        await a.put(dumps(prediction("gone", frame_path("cam", "dropped"))), key=b"gone", wait=False)
        await a.put(dumps(prediction("f1", frame_path("cam", "f1"), faces)), key=b"f1", wait=False)
        [event] = await drain(annotated, 1)
    assert event.key == b"f1"
    record = json.loads(dict(event.headers)[RECORD_HEADER])
    assert record["label"] == "ada" and [f["identity"] for f in record["faces"]] == ["ada", "unknown"]
    assert "embedding" not in record["faces"][0]
    with Image.open(io.BytesIO(event.value)) as im:
        assert im.size == (200, 120) and im.getpixel((40, 69))[1] > 150
