"""``camera``: frames from a camera, a video file or a folder onto ``imgflow-frames``
(the source itself: ``sources/camera.py``).

Exactly one of ``--device``, ``--file``, ``--folder``. Runs until the source ends,
``--count`` frames are sent, or Ctrl-C / SIGTERM; prints a line per ten seconds and a
summary. With ``--wait`` it then blocks until every frame sent is stored or failed
(as ``submit --wait``; ``faust --json -A imgflow camera ... --wait``: one JSON object).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from faust.cli import option

from cli.command import command

EXIT_TIMEOUT = 2


@command(
    option("--device", default=None, help="A Video4Linux2 camera, e.g. /dev/video0."),
    option("--file", "video", default=None, help="A video file (anything FFmpeg reads)."),
    option("--folder", default=None, help="A folder of images, sent in name order."),
    option("--fps", type=float, default=5.0, show_default=True, help="Frames per second to send."),
    option("--source", default=None, help="Camera id: the message key and the stored source."),
    option("--count", type=int, default=None, help="Stop after this many frames."),
    option("--loop", "repeat", is_flag=True, default=False, help="Start a file or folder again at its end."),
    option("--model", default=None, help="Pin these frames to another model spec file."),
    option("--wait", is_flag=True, default=False, help="Then block until every frame is stored or failed."),
    option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds."),
)
async def camera(
    self,
    device: str | None,
    video: str | None,
    folder: str | None,
    fps: float,
    source: str | None,
    count: int | None,
    repeat: bool,
    model: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Send frames from a camera, a video file or a folder to the frames topic."""
    from sources.camera import folder_frames, send_frames, video_frames
    from sources.results import ResultWatch, wait_for_results

    chosen = [x for x in (device, video, folder) if x]
    if len(chosen) != 1:
        raise SystemExit("camera: give exactly one of --device, --file, --folder")
    if fps <= 0:
        raise SystemExit("camera: --fps must be above 0")
    if device:
        frames = video_frames(device, fps, device=True)
        name = source or Path(device).name
    elif video:
        if not Path(video).is_file():
            raise SystemExit(f"camera: no such video file: {video}")
        frames = video_frames(video, fps, loop=repeat)
        name = source or Path(video).stem
    else:
        assert folder is not None
        if not Path(folder).is_dir():
            raise SystemExit(f"camera: no such folder: {folder}")
        frames = folder_frames(Path(folder), loop=repeat)
        name = source or Path(folder).resolve().name
    model_path = str(Path(model).resolve()) if model else None

    last = [time.monotonic()]

    def progress(run) -> None:
        if not self.json and time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            self.say(run.line())

    watch = ResultWatch() if wait else None
    if watch is not None:
        await watch.start()  # before the first frame: no result can slip past
    try:
        try:
            run = await send_frames(
                frames,
                name,
                fps,
                count=count,
                model=model_path,
                expect=watch.expect if watch else None,
                on_sent=progress,
            )
        except ValueError as exc:  # an empty folder
            raise SystemExit(f"camera: {exc}") from None
        if not self.json:
            self.say(run.line())
        if watch is None:
            if self.json:
                self.say(json.dumps({"source": name, "sent": len(run.image_ids), "late": run.late}))
            return
        summary = await wait_for_results(watch, run.image_ids, timeout)
    finally:
        if watch is not None:
            await watch.stop()
    if self.json:
        self.say(
            json.dumps({"source": name, "sent": len(run.image_ids), "late": run.late, **summary.as_json()})
        )
    else:
        for line in summary.lines():
            self.say(line)
    if summary.timed_out:
        self.say(f"timed out after {timeout:g}s with {summary.pending} frames pending", file=self.stderr)
        raise SystemExit(EXIT_TIMEOUT)
