"""``camera``: frames from a camera device, a video file or a folder, onto ``imgflow-frames``.

Frames are read with PyAV (FFmpeg's libraries, in its wheel): ``/dev/video0`` through
Video4Linux2, any video file FFmpeg reads. A video is sampled at the asked rate by
its own timestamps, so a 30 frames/s clip at ``--fps 5`` sends every sixth frame, and a
live camera's extra frames are skipped the same way. A folder is an image sequence,
sent in name order, each file's bytes as they are.

Video frames are sent as JPEG (quality 90), scaled down to fit ``max_side`` pixels first:
a 640x480 frame is ~50 KB (docs/design.md §11). Publishing is paced to the rate: frame
``i`` goes at ``start + i / fps``; a publisher that falls behind sends at once and counts
the frames it was late for, it never skips a frame it has read.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgflow.files import IMAGE_SUFFIXES

#: Video frames are scaled down to fit this many pixels on their longer side before JPEG.
MAX_SIDE = 1280
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SourceFrame:
    """One frame to send: its encoded bytes and a name for people (file or frame number)."""

    data: bytes
    name: str


def folder_frames(folder: Path, *, loop: bool = False) -> Iterator[SourceFrame]:
    """The images of ``folder`` (not recursive) in name order, as they are on disk."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images in {folder}")
    while True:
        for path in files:
            yield SourceFrame(path.read_bytes(), path.name)
        if not loop:
            return


def encode_jpeg(image: Any, max_side: int = MAX_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """A Pillow image as JPEG bytes, scaled down to fit ``max_side``."""
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def video_frames(
    target: str,
    fps: float,
    *,
    device: bool = False,
    loop: bool = False,
    max_side: int = MAX_SIDE,
) -> Iterator[SourceFrame]:
    """Frames of a video file (or a V4L2 ``device``) sampled at ``fps`` by their timestamps."""
    import av

    step = 1.0 / fps
    while True:
        with av.open(target, "r", format="v4l2" if device else None) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            next_at: float | None = None
            for number, frame in enumerate(container.decode(stream)):
                at = float(frame.time) if frame.time is not None else number * step
                if next_at is not None and at + 1e-6 < next_at:
                    continue  # between two samples
                next_at = (at if next_at is None else next_at) + step
                yield SourceFrame(encode_jpeg(frame.to_image(), max_side), f"{Path(target).name}#{number}")
        if device or not loop:
            return


def write_video(frames: list[Any], path: Path, fps: int = 10) -> Path:
    """Pillow images as an MPEG-4 clip (the demo's and the tests' bundled clip)."""
    import av

    width, height = frames[0].size
    width, height = width - width % 2, height - height % 2  # the encoder wants even sides
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_image(image.convert("RGB").resize((width, height)))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@dataclass
class Pacer:
    """Frame ``i`` is due at ``start + i / fps``; counts the frames it could not keep up with."""

    fps: float
    clock: Callable[[], float] = time.monotonic
    start: float | None = None
    sent: int = 0
    late: int = 0

    async def wait(self) -> None:
        now = self.clock()
        if self.start is None:
            self.start = now
        due = self.start + self.sent / self.fps
        if now > due + 1.0 / self.fps:
            self.late += 1
        elif due > now:
            await asyncio.sleep(due - now)
        self.sent += 1


@dataclass
class CameraRun:
    """What one ``camera`` run sent."""

    source: str
    image_ids: list[str] = field(default_factory=list)
    late: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = len(self.image_ids) / self.seconds if self.seconds else 0.0
        late = f", {self.late} late" if self.late else ""
        sent = len(self.image_ids)
        return f"sent {sent} frames from {self.source} in {self.seconds:.1f}s ({rate:.1f}/s{late})"


async def send_frames(
    frames: Iterator[SourceFrame],
    source: str,
    fps: float,
    *,
    count: int | None = None,
    model: str | None = None,
    expect: Callable[[list[str]], object] | None = None,
    on_sent: Callable[[CameraRun], object] | None = None,
) -> CameraRun:
    """Publish ``frames`` to ``imgflow-frames`` at ``fps``, each acknowledged by the broker
    before the next; stops after ``count`` frames or when the source ends.

    ``expect`` is told each id before its frame is sent (a result watch must not miss it).
    """
    from imgflow.frames import frame_headers
    from imgflow.records import new_image_id
    from imgflow.topics import frames_topic, publish

    run = CameraRun(source)
    pacer = Pacer(fps)
    started = time.monotonic()
    it = iter(frames)
    while count is None or len(run.image_ids) < count:
        frame = await asyncio.to_thread(next, it, None)  # a camera blocks until its next frame
        if frame is None:
            break
        await pacer.wait()
        image_id = new_image_id()
        headers = frame_headers(
            image_id, source=source, submitted_at=time.time(), file_name=frame.name, model=model
        )
        if expect is not None:
            expect([image_id])
        refused = await publish(frames_topic, [(source, frame.data, headers)])
        if refused:
            raise refused[0]  # over the message size limit: every frame of this source would be
        run.image_ids.append(image_id)
        run.late, run.seconds = pacer.late, time.monotonic() - started
        if on_sent is not None:
            on_sent(run)
    run.seconds = time.monotonic() - started
    return run
