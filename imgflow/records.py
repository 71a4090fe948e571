"""Messages that travel between the stages, one typed record per topic.

Records are plain JSON on the wire (no Faust metadata), so any Kafka client can
read them. Everything a stage consumes is parsed by :func:`parse`, which turns
anything malformed into :class:`MalformedMessage` instead of crashing an agent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

import faust

from imgflow.fields import (
    MAX_IMAGE_ID_CHARS,
    MalformedMessage,
    check_fields,
    check_time,
    json_object,
    require_fields,
)


class ImageMeta(faust.Record, include_metadata=False, validation=True):
    """Facts about the file, measured by the decode stage."""

    file_name: str
    width: int
    height: int
    format: str
    bytes: int
    sha256: str


class ImageRef(faust.Record, include_metadata=False, validation=True):
    """Which image, and which request for it: set once at the source, carried unchanged by
    every record of the chain (tensors, predictions, stored, failed) as their ``ref``."""

    image_id: str
    path: str  # a file, an object URI or a frame://
    source: str
    submitted_at: float  # when the request entered the chain (a replay is a new request)
    replay_id: str | None = None


class _ByRef:
    """The reference's fields, read through: ``record.image_id`` is ``record.ref.image_id``."""

    ref: ImageRef

    @property
    def image_id(self) -> str:
        return self.ref.image_id

    @property
    def path(self) -> str:
        return self.ref.path

    @property
    def source(self) -> str:
        return self.ref.source

    @property
    def submitted_at(self) -> float:
        return self.ref.submitted_at

    @property
    def replay_id(self) -> str | None:
        return self.ref.replay_id


class ImagePath(faust.Record, include_metadata=False, validation=True):
    """``imgflow-paths``: one image to classify (the open message format: flat, so that any
    producer writes it without knowing imgflow's internal records)."""

    image_id: str
    path: str
    source: str = "kafka"
    submitted_at: float = 0.0
    model: str | None = None  # a registered model pinning this image (replay): models/registry.py
    replay_id: str | None = None
    attrs: dict[str, Any] = {}

    @property
    def ref(self) -> ImageRef:
        return ImageRef(
            image_id=self.image_id,
            path=self.path,
            source=self.source,
            submitted_at=self.submitted_at,
            replay_id=self.replay_id,
        )


class DecodedImage(_ByRef, faust.Record, include_metadata=False, validation=True):
    """``imgflow-tensors``: an image decoded and sized for the model.

    The message's value is the pixels, raw: uint8, row-major, ``shape`` (HxWx3). This
    record travels as JSON in the message's ``imgflow-record`` header (:func:`tensor_message`):
    raw bytes are a quarter smaller than base64 inside JSON and cost nothing to encode or parse.
    """

    ref: ImageRef
    decoded_at: float
    model: str  # the registered spec the tensor was sized for
    shape: list[int]
    meta: ImageMeta
    attrs: dict[str, Any] = {}


class Prediction(_ByRef, faust.Record, include_metadata=False, validation=True):
    """``imgflow-predictions``: one model's answer for one image."""

    ref: ImageRef
    predicted_at: float
    label: str
    score: float
    top_k: list[dict[str, Any]]
    model: str
    model_version: str
    inference_ms: float
    batch_size: int
    meta: ImageMeta
    attrs: dict[str, Any] = {}
    #: A face model's answer (``output = "faces"``): one object per face, most confident first:
    #: ``box`` [x0, y0, x1, y1] in the original image's pixels, ``score`` (detection),
    #: ``identity`` (an enrolled person, or ``unknown``), ``distance`` (to that person, or to
    #: the nearest one), ``embedding`` (unit vector). ``label`` is then the first face's
    #: identity, or ``no_face``.
    faces: list[dict[str, Any]] | None = None


class Stored(_ByRef, faust.Record, include_metadata=False, validation=True):
    """``imgflow-stored``: a prediction that is durably in MongoDB."""

    ref: ImageRef
    label: str
    score: float
    model: str
    model_version: str
    stored_at: float


class Failure(faust.Record, include_metadata=False, validation=True):
    """``imgflow-failed``: an image (or message) that cannot go on.

    ``image_id`` is the failure document's key: the image's, or for a message that could not
    be parsed, one derived from its topic, partition and offset (it then has no ``ref``)."""

    image_id: str
    stage: str  # decode | classify | store | ingest
    kind: str  # missing_file, not_an_image, malformed_message, ...
    message: str  # for a person
    failed_at: float
    ref: ImageRef | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    model: str | None = None

    @property
    def path(self) -> str | None:
        return self.ref.path if self.ref is not None else None

    @property
    def source(self) -> str | None:
        return self.ref.source if self.ref is not None else None

    @property
    def submitted_at(self) -> float | None:
        return self.ref.submitted_at if self.ref is not None else None

    @property
    def replay_id(self) -> str | None:
        return self.ref.replay_id if self.ref is not None else None


#: The fields that hold a record, checked as one (imgflow/fields.py).
NESTED: dict[str, type[faust.Record]] = {"meta": ImageMeta, "ref": ImageRef}

R = TypeVar("R", bound=faust.Record)


def parse(record_type: type[R], raw: bytes | str | None) -> R:
    """Parse JSON bytes into ``record_type`` or raise :class:`MalformedMessage`."""
    return _from_object(record_type, json_object(raw))


def _from_object(record_type: type[R], data: dict[str, Any]) -> R:
    require_fields(record_type, data)
    check_fields(data, NESTED)
    try:
        return record_type.from_data(data)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise MalformedMessage(f"invalid {record_type.__name__}: {str(exc)[:200]}") from None


def parse_image_path(raw: bytes | None, key: bytes | None, fallback_id: str) -> ImagePath:
    """Parse an ``imgflow-paths`` message from any producer.

    ``path`` is required. ``image_id`` defaults to the message key, then to
    ``fallback_id`` (derived from topic/partition/offset, so a redelivered
    message keeps its id). ``submitted_at`` defaults to now; a time later than now (within
    the allowed skew) is taken as now, the time the chain first saw the request: a chosen
    time cannot rank a result above later replays (imgflow/storage.py, ``recency``).
    """
    data = json_object(raw)
    if not data.get("image_id"):
        key_text = key.decode("utf-8", "replace").strip() if key else ""
        data["image_id"] = key_text or fallback_id
    image_id = data["image_id"]
    if isinstance(image_id, str) and len(image_id) > MAX_IMAGE_ID_CHARS:
        # Every record about the image carries its id: an unbounded one could make even
        # the failure record too large to publish.
        raise MalformedMessage(f"image_id is {len(image_id):,} characters, over {MAX_IMAGE_ID_CHARS}")
    now = time.time()
    if data.get("submitted_at") is None or data.get("submitted_at") == 0:
        data["submitted_at"] = now
    data["submitted_at"] = min(check_time("submitted_at", data["submitted_at"], now), now)
    attrs = data.get("attrs", {})
    if not isinstance(attrs, dict):
        raise MalformedMessage("field 'attrs' must be a JSON object")
    return _from_object(ImagePath, data)


#: The header of an ``imgflow-tensors`` message that holds its :class:`DecodedImage` record.
RECORD_HEADER = "imgflow-record"


def tensor_message(
    record: DecodedImage, pixels: bytes, elsewhere: bytes | None = None
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """An ``imgflow-tensors`` message: the pixels as its value, the record in a header.

    ``elsewhere`` (``imgflow.tensors.IN_MONGO``): the pixels are stored beside the message,
    which then carries an empty value and says where in the ``imgflow-pixels`` header.
    """
    from imgflow.tensors import HEADER

    headers = [(RECORD_HEADER, dumps(record))]
    if elsewhere is not None:
        return b"", [*headers, (HEADER, elsewhere)]
    return pixels, headers


def parse_tensor(
    value: bytes | None, headers: Mapping[str, bytes] | None
) -> tuple[DecodedImage, bytes, bytes | None]:
    """Read an ``imgflow-tensors`` message: (record, pixels, where the pixels are if elsewhere),
    or :class:`MalformedMessage`."""
    from imgflow.tensors import HEADER

    raw = (headers or {}).get(RECORD_HEADER)
    if raw is None:
        raise MalformedMessage(f"no {RECORD_HEADER!r} header (a tensor message carries its record there)")
    return parse(DecodedImage, raw), value or b"", (headers or {}).get(HEADER)


def message_id(topic: str, partition: int, offset: int) -> str:
    """A stable id for a message that carried none."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kafka:{topic}/{partition}/{offset}"))


def new_image_id() -> str:
    return uuid.uuid4().hex


def dumps(record: faust.Record) -> bytes:
    return json.dumps(record.asdict(), default=_json_default, separators=(",", ":")).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, faust.Record):
        return value.asdict()
    raise TypeError(f"cannot serialise {type(value).__name__}")
