"""The "Live" tab: try imgflow from the browser, with its webcam or a file.

- **Webcam**: ``pn.widgets.VideoStream`` snapshots the browser's camera at the chosen rate;
  each snapshot goes to ``imgflow-frames`` (key = this page's camera id) like any camera's
  frame, and the newest result that came back is shown: its label, or its faces drawn on
  the frame. At most ``MAX_IN_FLIGHT`` frames wait for results at a time; a snapshot taken
  while that many are waiting is **dropped and counted**, never queued without bound.
- **Upload**: files sent as frames (source ``upload-page``) and shown with their results
  once stored, or their failure.

Results are read back from MongoDB by the ids this page sent (a point lookup of at most a
few dozen ids, every ``POLL_MS``), so the page works against any worker of the cluster.
The frames are published by one producer per dashboard process (:class:`FrameSender`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections import OrderedDict, deque
from typing import Any

import panel as pn
import param
from panel.viewable import Viewer

from dashboard.data_store import DataStore
from dashboard.format import esc, meta

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 8
POLL_MS = 50
#: Uploaded results shown, newest first.
UPLOADS_SHOWN = 12
#: Frames a result is still awaited for after being sent (seconds): then it counts as lost.
GIVE_UP_S = 60.0


class FrameSender:
    """One Kafka producer per dashboard process for the frames its pages send."""

    _instance: FrameSender | None = None

    def __init__(self) -> None:
        from imgflow.settings import get_settings

        self.settings = get_settings()
        self._producer: Any = None
        self._lock = asyncio.Lock()

    @classmethod
    def shared(cls) -> FrameSender:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    async def _started(self) -> Any:
        async with self._lock:
            if self._producer is None:
                from aiokafka import AIOKafkaProducer

                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.bootstrap_servers,
                    max_request_size=self.settings.max_message_bytes,
                    acks="all",
                    linger_ms=0,
                )
                await producer.start()
                self._producer = producer
            return self._producer

    async def send(self, data: bytes, source: str, file_name: str | None = None) -> str:
        """Publish one frame and wait for the broker; returns its image id."""
        from imgflow.frames import frame_headers
        from imgflow.records import new_image_id

        producer = await self._started()
        image_id = new_image_id()
        headers = frame_headers(image_id, source=source, submitted_at=time.time(), file_name=file_name)
        await producer.send_and_wait(
            self.settings.topic("frames"), data, key=source.encode(), headers=headers
        )
        return image_id


def data_url_bytes(value: str | None) -> bytes | None:
    """The image bytes of a ``data:image/...;base64,...`` URL (what VideoStream gives)."""
    if not value or "," not in value:
        return None
    head, _, body = value.partition(",")
    if not head.startswith("data:image/") or ";base64" not in head:
        return None
    try:
        return base64.b64decode(body, validate=True)
    except ValueError:
        return None


def result_html(doc: dict[str, Any] | None, failure: dict[str, Any] | None = None) -> str:
    if failure is not None:
        return f"<b>failed</b>: {esc(failure.get('kind'))} · {esc(failure.get('message'))}"
    if doc is None:
        return "waiting for the result…"
    pred = doc.get("prediction") or {}
    faces = pred.get("faces")
    if faces is not None:
        if not faces:
            return "<b>no face</b>"
        names = ", ".join(f"<b>{esc(f.get('identity'))}</b> ({float(f.get('score', 0)):.2f})" for f in faces)
        return f"{len(faces)} face{'s' if len(faces) != 1 else ''}: {names}"
    return f"<b>{esc(doc.get('label'))}</b> {float(doc.get('score') or 0):.2f} · {esc(doc.get('model'))}"


class LiveTab(Viewer):
    """The webcam and the upload box of one browser session."""

    store = param.ClassSelector(class_=DataStore)
    fps = param.Integer(default=5, bounds=(1, 10))
    sent = param.Integer(default=0)
    received = param.Integer(default=0)
    dropped = param.Integer(default=0)

    def __init__(self, sender: FrameSender | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.sender = sender or FrameSender.shared()
        self.camera_id = f"webcam-{uuid.uuid4().hex[:6]}"
        self.latencies: deque[float] = deque(maxlen=200)
        self.video = pn.widgets.VideoStream(
            format="jpeg", timeout=1000 // self.fps, paused=True, width=320, height=240
        )
        self.rate = pn.widgets.IntSlider.from_param(self.param.fps, label="frames per second", width=200)
        self.toggle = pn.widgets.Toggle(label="Start camera", color="primary", width=160)
        self.stats = pn.pane.HTML(self._stats_html(), css_classes=["live-stats"])
        self.latest = pn.pane.HTML("Start the camera to classify what it sees.", css_classes=["live-result"])
        self.picture = pn.pane.JPG(None, width=320, height=240, visible=False)
        self.upload = pn.widgets.FileInput(accept="image/*", multiple=True)
        self.uploads = pn.Column(css_classes=["live-uploads"])
        #: Sent and awaited: image id -> (sent at, frame bytes, origin "camera" | file name).
        self.waiting: OrderedDict[str, tuple[float, bytes, str]] = OrderedDict()
        self.upload_rows: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        #: Upload results already read, so a row keeps its result while newer ones are awaited.
        self._known: dict[str, Any] = {}
        self._sending = 0
        self._polling = False
        self._poller: Any = None
        self.video.param.watch(self._on_frame, "value")
        self.toggle.param.watch(self._on_toggle, "value")
        self.upload.param.watch(self._on_upload, "value")
        self.param.watch(self._on_fps, "fps")

    # -- sending ------------------------------------------------------------------------------

    def _on_toggle(self, event: Any) -> None:
        self.video.paused = not event.new
        self.toggle.label = "Stop camera" if event.new else "Start camera"
        if event.new:  # a new run: its own figures
            self.sent = self.received = self.dropped = 0
            self.latencies.clear()
            self._show_stats()
            self._ensure_polling()

    def _on_fps(self, event: Any) -> None:
        self.video.timeout = 1000 // max(1, event.new)

    async def _on_frame(self, event: Any) -> None:
        data = data_url_bytes(event.new)
        if data is None or self.video.paused:
            return
        if len(self.waiting) + self._sending >= MAX_IN_FLIGHT:
            self.dropped += 1  # overload: counted, not queued
            self._show_stats()
            return
        await self._send(data, self.camera_id, None, "camera")

    async def _on_upload(self, event: Any) -> None:
        values = event.new if isinstance(event.new, list) else [event.new]
        names = self.upload.filename if isinstance(self.upload.filename, list) else [self.upload.filename]
        for data, name in zip(values, names, strict=False):
            if data:
                image_id = await self._send(data, "upload-page", name or "upload", name or "upload")
                if image_id is not None:
                    self.upload_rows[image_id] = (name or "upload", data)
        while len(self.upload_rows) > UPLOADS_SHOWN:
            self.upload_rows.popitem(last=False)
        self._ensure_polling()
        self._render_uploads({}, {})

    async def _send(self, data: bytes, source: str, file_name: str | None, origin: str) -> str | None:
        self._sending += 1
        started = time.time()  # latency on this page: from the snapshot's arrival to its result shown
        try:
            image_id = await self.sender.send(data, source, file_name)
        except Exception as exc:
            log.warning("could not send a frame from the Live tab: %s", exc)
            self.latest.object = f"<b>not sent</b>: the broker did not take the frame ({esc(exc)})"
            return None
        finally:
            self._sending -= 1
        self.waiting[image_id] = (started, data, origin)
        self.sent += 1
        self._show_stats()
        return image_id

    # -- results ------------------------------------------------------------------------------

    def _ensure_polling(self) -> None:
        if self._poller is None:
            self._poller = pn.state.add_periodic_callback(self.poll, period=POLL_MS)

    async def poll(self) -> None:
        """Fetch the results of what this page is waiting for; show the newest camera result.

        The reads run in a thread: the server's event loop keeps taking snapshots meanwhile."""
        if not self.waiting or self._polling:
            return
        ids = list(self.waiting)
        self._polling = True
        try:
            docs, failures = await asyncio.to_thread(self._results, ids)
        finally:
            self._polling = False
        newest_camera: tuple[str, dict[str, Any] | None, dict[str, Any] | None, bytes] | None = None
        now = time.time()
        for image_id in ids:
            sent_at, data, origin = self.waiting[image_id]
            doc, failure = docs.get(image_id), failures.get(image_id)
            if doc is None and failure is None:
                if now - sent_at > GIVE_UP_S:
                    self.waiting.pop(image_id)
                continue
            self.waiting.pop(image_id)
            self.received += 1
            self.latencies.append(now - sent_at)
            if origin == "camera":
                newest_camera = (image_id, doc, failure, data)
        if newest_camera is not None:
            _, doc, failure, data = newest_camera
            self.latest.object = result_html(doc, failure)
            self.picture.object = self._drawn(doc, data)
            self.picture.visible = True
        if self.upload_rows:
            self._render_uploads(docs, failures)
        self._show_stats()

    def _results(self, ids: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        db = self.store.db
        docs = {d["_id"]: d for d in db.images.find({"_id": {"$in": ids}})}
        missing = [i for i in ids if i not in docs]
        failures = {d["_id"]: d for d in db.failures.find({"_id": {"$in": missing}})} if missing else {}
        return docs, failures

    def _drawn(self, doc: dict[str, Any] | None, data: bytes) -> bytes:
        faces = ((doc or {}).get("prediction") or {}).get("faces")
        if not faces or not (doc or {}).get("width"):
            return data
        from dashboard.previews import faces_drawn

        return faces_drawn(data, faces, doc["width"]) if doc else data

    def _render_uploads(self, docs: dict[str, Any], failures: dict[str, Any]) -> None:
        rows = []
        for image_id, (name, data) in reversed(self.upload_rows.items()):
            doc = docs.get(image_id) or self._known.get(image_id)
            failure = failures.get(image_id)
            if doc is not None:
                self._known[image_id] = doc
            rows.append(
                pn.Row(
                    pn.pane.JPG(self._drawn(doc, data), width=120, height=90)
                    if doc is not None
                    else pn.pane.HTML("", width=120),
                    pn.pane.HTML(
                        f"{esc(name)}<br>{result_html(doc, failure)}", css_classes=["upload-result"]
                    ),
                )
            )
        self.uploads.objects = rows

    def _stats_html(self) -> str:
        lat = sorted(self.latencies)
        p50 = f"{lat[len(lat) // 2] * 1000:.0f} ms" if lat else "–"
        p95 = f"{lat[min(len(lat) - 1, int(len(lat) * 0.95))] * 1000:.0f} ms" if lat else "–"
        return (
            f"sent <b>{self.sent}</b> · results <b>{self.received}</b> · dropped <b>{self.dropped}</b>"
            f" · latency p50 {p50}, p95 {p95}"
        )

    def _show_stats(self) -> None:
        self.stats.object = self._stats_html()

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None

    def __panel__(self) -> Any:
        note = meta(
            f"Frames go to the frames topic as camera <code>{esc(self.camera_id)}</code>; at most "
            f"{MAX_IN_FLIGHT} wait for results at a time, the rest are dropped and counted."
        )
        return pn.Row(
            pn.Column(
                pn.pane.Markdown("#### Webcam"),
                pn.Row(self.toggle, self.rate),
                self.video,
                self.stats,
                note,
                width=360,
            ),
            pn.Column(
                pn.pane.Markdown("#### Latest result"),
                self.latest,
                self.picture,
                pn.pane.Markdown("#### Upload"),
                self.upload,
                self.uploads,
            ),
            sizing_mode="stretch_width",
        )
