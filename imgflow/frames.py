"""The second entry to the chain: ``<prefix>-frames``, encoded images as bytes.

For sources that have bytes and no path every node can open (a camera, a browser's
webcam, a phone), a frame message carries the image itself:

- **value**: the encoded image (JPEG, PNG, anything the decode stage reads), raw;
- **key**: the camera or source id (one camera's frames stay in order on one partition);
- **headers**, all optional: ``imgflow-image-id`` (else one is derived from the
  message's topic/partition/offset, stable across redeliveries), ``imgflow-source``
  (else the key, else ``camera``), ``imgflow-submitted-at`` (epoch seconds, else now),
  ``imgflow-file-name``, ``imgflow-model`` (a spec path pinning the frame to a model),
  ``imgflow-replay-id`` and ``imgflow-attrs`` (a JSON object).

So a plain Kafka client needs nothing but a key and the bytes. The decode stage keeps
each frame in MongoDB ``frames`` before it passes the frame on, and names it by a
path of its own, ``frame://<source>/<image_id>``: previews read it from there and a
replay of that path decodes it again from there, as long as it is kept (the newest
``IMGFLOW_FRAMES_KEEP`` per source; an older one is ``frame_gone``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from bson import Binary
from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne

from imgflow.fields import (
    MAX_ATTRS_BYTES,
    MAX_IMAGE_ID_CHARS,
    MalformedMessage,
    check_fields,
    check_time,
    refuse_constant,
)
from imgflow.imaging import ImageRejected
from imgflow.records import ImagePath

COLLECTION = "frames"
SCHEME = "frame://"
INDEXES = [
    IndexModel([("source", ASCENDING), ("at", DESCENDING)], name="source_at"),
    IndexModel([("at", DESCENDING)], name="at"),
]
#: Sources pruned one by one per round (those written most); the total cap covers the rest.
PRUNE_SOURCES = 100
#: A source's old frames are dropped at most this often (seconds) by each worker.
PRUNE_EVERY = 30.0

HEADER_IMAGE_ID = "imgflow-image-id"
HEADER_SOURCE = "imgflow-source"
HEADER_SUBMITTED_AT = "imgflow-submitted-at"
HEADER_FILE_NAME = "imgflow-file-name"
HEADER_MODEL = "imgflow-model"
HEADER_REPLAY_ID = "imgflow-replay-id"
HEADER_ATTRS = "imgflow-attrs"


@dataclass(frozen=True)
class Frame:
    """A frame message parsed: the image it is (``record``, with its ``frame://`` path) and its bytes."""

    record: ImagePath
    data: bytes


def frame_path(source: str, image_id: str) -> str:
    """The path a frame is known by in every record and stored result."""
    return f"{SCHEME}{quote(source, safe='')}/{quote(image_id, safe='')}"


def is_frame(path: str | None) -> bool:
    return bool(path) and str(path).startswith(SCHEME)


def frame_key(path: str) -> tuple[str, str]:
    """``(source, image_id)`` of a ``frame://`` path; ValueError if it is not one."""
    if not is_frame(path):
        raise ValueError(f"not a frame path: {path!r}")
    source, sep, image_id = path[len(SCHEME) :].partition("/")
    if not sep or not image_id:
        raise ValueError(f"not a frame path: {path!r}")
    return unquote(source), unquote(image_id)


def _text(headers: Mapping[str, bytes], name: str) -> str | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise MalformedMessage(f"header {name!r} is not UTF-8") from None
    return text or None


def parse_frame(
    value: bytes | None, key: bytes | None, headers: Mapping[str, bytes] | None, fallback_id: str
) -> Frame:
    """Parse an ``imgflow-frames`` message from any producer (see the module docstring)."""
    headers = headers or {}
    image_id = _text(headers, HEADER_IMAGE_ID) or fallback_id
    if len(image_id) > MAX_IMAGE_ID_CHARS:
        raise MalformedMessage(f"image_id is {len(image_id):,} characters, over {MAX_IMAGE_ID_CHARS}")
    key_text = key.decode("utf-8", "replace").strip() if key else ""
    source = _text(headers, HEADER_SOURCE) or key_text or "camera"
    now = time.time()
    submitted = _text(headers, HEADER_SUBMITTED_AT)
    try:
        submitted_at = float(submitted) if submitted else now
    except ValueError:
        raise MalformedMessage(
            f"header {HEADER_SUBMITTED_AT!r} is not a number: {(submitted or '')[:80]!r}"
        ) from None
    # As for paths (imgflow/records.py): finite, not negative, a future time is taken as now.
    submitted_at = min(check_time("submitted_at", submitted_at, now), now)
    attrs_text = _text(headers, HEADER_ATTRS)
    attrs: Any = {}
    if attrs_text:
        if len(attrs_text) > MAX_ATTRS_BYTES:
            raise MalformedMessage(f"header {HEADER_ATTRS!r} is over {MAX_ATTRS_BYTES:,} bytes")
        try:
            attrs = json.loads(attrs_text, parse_constant=refuse_constant)
        except (ValueError, RecursionError):
            raise MalformedMessage(f"header {HEADER_ATTRS!r} is not JSON") from None
        if not isinstance(attrs, dict):
            raise MalformedMessage(f"header {HEADER_ATTRS!r} must be a JSON object")
    name = _text(headers, HEADER_FILE_NAME)
    if name:
        attrs = {**attrs, "file_name": name}
    fields = {
        "image_id": image_id,
        "source": source,
        "model": _text(headers, HEADER_MODEL),
        "replay_id": _text(headers, HEADER_REPLAY_ID),
        "file_name": name,
        "attrs": attrs,
    }
    check_fields({k: v for k, v in fields.items() if v is not None})
    record = ImagePath(
        image_id=image_id,
        path=frame_path(source, image_id),
        source=source,
        submitted_at=submitted_at,
        model=fields["model"],
        replay_id=fields["replay_id"],
        attrs=attrs,
    )
    return Frame(record, value or b"")


def frame_headers(
    image_id: str,
    *,
    source: str | None = None,
    submitted_at: float | None = None,
    file_name: str | None = None,
    model: str | None = None,
    replay_id: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> list[tuple[str, bytes]]:
    """The headers of a frame message imgflow's own sources send (``camera``, the Live tab)."""
    headers = [(HEADER_IMAGE_ID, image_id.encode())]
    optional = {
        HEADER_SOURCE: source,
        HEADER_SUBMITTED_AT: None if submitted_at is None else repr(submitted_at),
        HEADER_FILE_NAME: file_name,
        HEADER_MODEL: model,
        HEADER_REPLAY_ID: replay_id,
        HEADER_ATTRS: json.dumps(dict(attrs)) if attrs else None,
    }
    headers += [(name, text.encode()) for name, text in optional.items() if text]
    return headers


class FrameStore:
    """MongoDB ``frames``: each frame by its image id, the newest ``keep`` per source.

    Synchronous (pymongo), called from threads like the other stores. Writing the same
    frame again (a redelivered message) changes nothing.
    """

    def __init__(self, db: Any, keep: int, keep_total: int | None = None) -> None:
        self.collection = db[COLLECTION]
        self.keep = keep
        self.keep_total = keep_total
        self._written: Counter[str] = Counter()
        self._pruned_at = 0.0

    def put(self, frames: Iterable[Frame]) -> None:
        now = time.time()
        ops = [
            UpdateOne(
                {"_id": f.record.image_id},
                {
                    "$setOnInsert": {
                        "source": f.record.source,
                        "at": now,
                        "data": Binary(f.data),
                        "bytes": len(f.data),
                    }
                },
                upsert=True,
            )
            for f in frames
        ]
        if not ops:
            return
        self.collection.bulk_write(ops, ordered=False)
        for f in frames:
            self._written[f.record.source] += 1
        if now - self._pruned_at >= PRUNE_EVERY:
            self.prune()

    def get(self, image_id: str) -> bytes | None:
        doc = self.collection.find_one({"_id": image_id}, {"data": 1})
        return None if doc is None else bytes(doc["data"])

    def read(self, path: str) -> bytes:
        """The bytes of the frame a ``frame://`` path names, or ``frame_gone``."""
        source, image_id = frame_key(path)
        data = self.get(image_id)
        if data is None:
            raise ImageRejected(
                "frame_gone",
                f"frame {image_id} from {source} is no longer kept (the newest "
                f"{self.keep:,} per source are: IMGFLOW_FRAMES_KEEP)",
            )
        return data

    def prune(self, sources: Iterable[str] | None = None) -> int:
        """Drop all but the newest ``keep`` frames of each source this store wrote to most
        since its last prune (or of ``sources``), and all but the newest ``keep_total`` in all
        (a producer inventing a source per frame is bounded by that); how many were dropped."""
        self._pruned_at = time.time()
        names = (
            list(sources) if sources is not None else [s for s, _ in self._written.most_common(PRUNE_SOURCES)]
        )
        self._written.clear()
        dropped = 0
        if self.keep_total is not None:
            newest = list(
                self.collection.find({}, {"at": 1}).sort("at", DESCENDING).skip(self.keep_total - 1).limit(1)
            )
            if newest:
                dropped += self.collection.delete_many({"at": {"$lt": newest[0]["at"]}}).deleted_count
        for source in names:
            newest = list(
                self.collection.find({"source": source}, {"at": 1})
                .sort("at", DESCENDING)
                .skip(self.keep - 1)
                .limit(1)
            )
            if newest:
                oldest_kept = newest[0]["at"]
                dropped += self.collection.delete_many(
                    {"source": source, "at": {"$lt": oldest_kept}}
                ).deleted_count
        return dropped
