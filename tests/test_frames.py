"""Frames, the chain's second entry (imgflow/frames.py): parsing, the frame store on a real
MongoDB-protocol server, the decode stage over bytes, previews, and the camera's sources."""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from agents import decode
from dashboard.previews import frame_preview_jpeg
from imgflow.fields import MalformedMessage
from imgflow.frames import (
    Frame,
    FrameStore,
    frame_headers,
    frame_key,
    frame_path,
    is_frame,
    parse_frame,
)
from imgflow.imaging import ImageRejected, Limits
from imgflow.records import Failure, ImagePath, parse, parse_tensor
from models.registry import ModelRegistry
from sources.camera import Pacer, folder_frames, video_frames, write_video
from tests.images import photo
from tests.test_stages import channel, drain, run_in_agent, tiny_spec


def jpeg(image: Image.Image | None = None, size: tuple[int, int] = (320, 240)) -> bytes:
    buf = io.BytesIO()
    (image or photo().resize(size)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# Parsing --------------------------------------------------------------------------------------


def test_a_key_and_bytes_are_a_whole_frame_message():
    before = time.time()
    frame = parse_frame(b"\xff\xd8jpeg", b"cam-1", None, "fallback-id")
    assert frame.data == b"\xff\xd8jpeg"
    assert frame.record.image_id == "fallback-id" and frame.record.source == "cam-1"
    assert frame.record.path == "frame://cam-1/fallback-id"
    assert frame.record.submitted_at >= before and frame.record.model is None


def test_headers_name_the_frame_and_override_the_key():
    headers = dict(
        frame_headers(
            "f1",
            source="door",
            submitted_at=12.5,
            file_name="clip.mp4#3",
            model="/m/model.toml",
            replay_id="r1",
            attrs={"site": "north"},
        )
    )
    frame = parse_frame(b"x", b"ignored-key", headers, "fallback")
    record = frame.record
    assert (record.image_id, record.source, record.submitted_at) == ("f1", "door", 12.5)
    assert record.model == "/m/model.toml" and record.replay_id == "r1"
    assert record.attrs == {"site": "north", "file_name": "clip.mp4#3"}
    assert parse_frame(b"x", None, None, "fb").record.source == "camera"


@pytest.mark.parametrize(
    "headers",
    [
        {"imgflow-submitted-at": b"yesterday"},
        {"imgflow-attrs": b"[1, 2]"},
        {"imgflow-attrs": b"{not json"},
        {"imgflow-source": b"\xff\xfe"},
        {"imgflow-image-id": b"x" * 300},
    ],
)
def test_bad_headers_are_malformed_messages(headers):
    with pytest.raises(MalformedMessage):
        parse_frame(b"x", b"k", headers, "fb")


def test_frame_paths_round_trip_any_source_and_id():
    path = frame_path("cam/1 north", "id?#1")
    assert is_frame(path) and not is_frame("/data/a.jpg") and not is_frame(None)
    assert frame_key(path) == ("cam/1 north", "id?#1")
    with pytest.raises(ValueError):
        frame_key("frame://only-a-source")


# The frame store on a real MongoDB-protocol server ---------------------------------------------


def frame(image_id: str, source: str, data: bytes) -> Frame:
    return Frame(ImagePath(image_id=image_id, path=frame_path(source, image_id), source=source), data)


@pytest.mark.e2e
def test_the_store_keeps_the_newest_frames_of_each_source(scratch_db):
    store = FrameStore(scratch_db, keep=3)
    for i in range(6):  # one put per frame: each its own time
        store.put([frame(f"a{i}", "cam-a", f"A{i}".encode())])
        time.sleep(0.002)
    store.put([frame("b0", "cam-b", b"B0")])
    store.put([frame("a5", "cam-a", b"changed")])  # redelivered: changes nothing
    assert store.prune() == 3
    assert sorted(d["_id"] for d in scratch_db.frames.find()) == ["a3", "a4", "a5", "b0"]
    assert store.get("a5") == b"A5" and store.get("a0") is None
    assert store.read(frame_path("cam-a", "a4")) == b"A4"
    with pytest.raises(ImageRejected) as gone:
        store.read(frame_path("cam-a", "a0"))
    assert gone.value.kind == "frame_gone"


@pytest.mark.e2e
def test_a_kept_frame_has_a_preview_until_it_is_dropped(scratch_db):
    store = FrameStore(scratch_db, keep=10)
    store.put([frame("p1", "cam", jpeg(size=(640, 480)))])
    preview = frame_preview_jpeg(scratch_db, frame_path("cam", "p1"), px=100)
    assert preview is not None
    with Image.open(io.BytesIO(preview)) as im:
        assert im.format == "JPEG" and max(im.size) == 100
    assert frame_preview_jpeg(scratch_db, frame_path("cam", "never-kept"), px=100) is None


# The decode stage over bytes ---------------------------------------------------------------------


@pytest.mark.e2e
async def test_decode_takes_frames_keeps_the_good_ones_and_fails_the_bad(scratch_db, tmp_path: Path):
    spec = tiny_spec(tmp_path / "model")
    store = FrameStore(scratch_db, keep=100)
    out, tensors = channel()
    bad, failed = channel()
    pool = ThreadPoolExecutor(2)
    agent = run_in_agent(
        lambda: decode.stage(
            pool,
            output=out,
            failures=bad,
            roots=[],
            frames=store,
            parse=decode.parse_frame_event,
            registry=ModelRegistry([tmp_path]),
        )
    )
    good = jpeg(size=(320, 240))
    async with agent.test_context() as a:
        await a.put(good, key=b"cam-9", headers=frame_headers("good", model=str(spec)), wait=False)
        await a.put(b"not an image", key=b"cam-9", headers=frame_headers("junk", model=str(spec)), wait=False)
        await a.put(b"", key=b"cam-9", headers=frame_headers("empty", model=str(spec)), wait=False)
        [tensor] = await drain(tensors, 1)
        kinds = {f.image_id: f.kind for f in (parse(Failure, e.value) for e in await drain(failed, 2))}
    pool.shutdown()
    record, pixels, _ = parse_tensor(tensor.value, tensor.headers)
    assert record.image_id == "good" and record.path == "frame://cam-9/good" and record.source == "cam-9"
    assert (record.meta.width, record.meta.height, record.meta.format) == (320, 240, "JPEG")
    assert record.meta.bytes == len(good) and len(pixels) == 32 * 32 * 3
    assert kinds == {"junk": "not_an_image", "empty": "empty_file"}
    assert store.get("good") == good  # kept before its tensor went on
    assert store.get("junk") is None  # what cannot be decoded is not kept


@pytest.mark.e2e
def test_a_frame_path_is_decoded_again_from_the_store(scratch_db, tmp_path: Path):
    spec = tiny_spec(tmp_path / "model")
    store = FrameStore(scratch_db, keep=100)
    store.put([frame("orig", "cam", jpeg(size=(200, 100)))])
    replayed = ImagePath(image_id="again", path=frame_path("cam", "orig"), source="cam", model=str(spec))
    decoded = decode.decode_one(
        replayed, Limits(), [], spec, frames=store, registry=ModelRegistry([tmp_path])
    )
    assert decoded.record.image_id == "again" and (decoded.record.meta.width, decoded.record.meta.height) == (
        200,
        100,
    )
    gone = ImagePath(image_id="g", path=frame_path("cam", "dropped"), source="cam", model=str(spec))
    with pytest.raises(ImageRejected) as exc:
        decode.decode_one(gone, Limits(), [], spec, frames=store, registry=ModelRegistry([tmp_path]))
    assert exc.value.kind == "frame_gone"


# The camera's sources ----------------------------------------------------------------------------


def clip(path: Path, frames: int = 20, fps: int = 10) -> Path:
    base = photo().resize((320, 240))
    return write_video([base.rotate(i * 3) for i in range(frames)], path, fps=fps)


def test_a_video_is_sampled_at_the_asked_rate_by_its_timestamps(tmp_path: Path):
    video = clip(tmp_path / "clip.mp4", frames=20, fps=10)  # two seconds
    half = list(video_frames(str(video), 5))
    assert len(half) == 10 and [f.name for f in half[:3]] == ["clip.mp4#0", "clip.mp4#2", "clip.mp4#4"]
    assert len(list(video_frames(str(video), 50))) == 20  # never more than there are
    with Image.open(io.BytesIO(half[0].data)) as im:
        assert im.format == "JPEG" and im.size == (320, 240)


def test_a_folder_is_an_image_sequence_in_name_order(tmp_path: Path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x" if name.endswith("txt") else jpeg())
    names = [f.name for f in folder_frames(tmp_path)]
    assert names == ["a.jpg", "b.png"]
    looped = folder_frames(tmp_path, loop=True)
    assert [next(looped).name for _ in range(5)] == ["a.jpg", "b.png", "a.jpg", "b.png", "a.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        next(folder_frames(tmp_path / "empty"))


def test_the_pacer_spaces_frames_and_counts_the_ones_it_is_late_for(monkeypatch):
    now = [100.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    pacer = Pacer(fps=4, clock=lambda: now[0])

    async def run() -> None:
        for _ in range(3):
            await pacer.wait()  # on time: 0, 0.25, 0.5
        now[0] += 2.0  # the source stalled for two seconds
        await pacer.wait()  # late: sent at once, counted
        await pacer.wait()

    asyncio.run(run())
    assert slept == [0.25, 0.25] and pacer.late == 2 and pacer.sent == 5
