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


class ImageMeta(faust.Record, include_metadata=False, validation=True):
    """Facts about the file, measured by the decode stage."""

    file_name: str
    width: int
    height: int
    format: str
    bytes: int
    sha256: str


class ImagePath(faust.Record, include_metadata=False, validation=True):
    """``imgflow-paths``: one image to classify (the open message format)."""

    image_id: str
    path: str
    source: str = "kafka"
    submitted_at: float = 0.0
    model: str | None = None  # spec path pinning this image to a model (replay)
    replay_id: str | None = None
    attrs: dict[str, Any] = {}


class DecodedImage(faust.Record, include_metadata=False, validation=True):
    """``imgflow-tensors``: an image decoded and sized for the model.

    The message's value is the pixels, raw: uint8, row-major, ``shape`` (HxWx3). This
    record travels as JSON in the message's ``imgflow-record`` header (:func:`tensor_message`):
    raw bytes are a quarter smaller than base64 inside JSON and cost nothing to encode or parse.
    """

    image_id: str
    path: str
    source: str
    submitted_at: float
    decoded_at: float
    model: str  # spec path the tensor was sized for
    shape: list[int]
    meta: ImageMeta
    replay_id: str | None = None
    attrs: dict[str, Any] = {}


class Prediction(faust.Record, include_metadata=False, validation=True):
    """``imgflow-predictions``: one model's answer for one image."""

    image_id: str
    path: str
    source: str
    submitted_at: float
    predicted_at: float
    label: str
    score: float
    top_k: list[dict[str, Any]]
    model: str
    model_version: str
    inference_ms: float
    batch_size: int
    meta: ImageMeta
    replay_id: str | None = None
    attrs: dict[str, Any] = {}
    #: A face model's answer (``output = "faces"``): one object per face, most confident first:
    #: ``box`` [x0, y0, x1, y1] in the original image's pixels, ``score`` (detection),
    #: ``identity`` (an enrolled person, or ``unknown``), ``distance`` (to that person, or to
    #: the nearest one), ``embedding`` (unit vector). ``label`` is then the first face's
    #: identity, or ``no_face``.
    faces: list[dict[str, Any]] | None = None


class Stored(faust.Record, include_metadata=False, validation=True):
    """``imgflow-stored``: a prediction that is durably in MongoDB."""

    image_id: str
    label: str
    score: float
    model: str
    model_version: str
    submitted_at: float
    stored_at: float
    replay_id: str | None = None


class Failure(faust.Record, include_metadata=False, validation=True):
    """``imgflow-failed``: an image (or message) that cannot go on."""

    image_id: str
    stage: str  # decode | classify | store | ingest
    kind: str  # missing_file, not_an_image, malformed_message, ...
    message: str  # for a person
    failed_at: float
    path: str | None = None
    source: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    model: str | None = None
    replay_id: str | None = None
    submitted_at: float | None = None


class MalformedMessage(ValueError):
    """A message that cannot be parsed into its topic's record type."""


R = TypeVar("R", bound=faust.Record)


def parse(record_type: type[R], raw: bytes | str | None) -> R:
    """Parse JSON bytes into ``record_type`` or raise :class:`MalformedMessage`."""
    return _from_object(record_type, json_object(raw))


def json_object(raw: bytes | str | None) -> dict[str, Any]:
    """A message value as a JSON object (Faust metadata dropped), or MalformedMessage."""
    if raw is None:
        raise MalformedMessage("empty message (no value)")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"expected a JSON object, got {type(data).__name__}")
    data.pop("__faust", None)
    return data


def _from_object(record_type: type[R], data: dict[str, Any]) -> R:
    _require_fields(record_type, data)
    try:
        return record_type.from_data(data)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"invalid {record_type.__name__}: {exc}") from None


def _require_fields(record_type: type[faust.Record], data: dict[str, Any]) -> None:
    """Faust coerces ``None`` and numbers into ``str`` fields; reject that here."""
    fields = record_type._options.fields
    defaults = record_type._options.defaults
    for name, typ in fields.items():
        if name not in data:
            if name not in defaults:
                raise MalformedMessage(f"missing required field {name!r}")
            continue
        value = data[name]
        if typ is str and not (isinstance(value, str) and value):
            raise MalformedMessage(f"field {name!r} must be a non-empty string, got {value!r}")
        if typ in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise MalformedMessage(f"field {name!r} must be a number, got {value!r}")


MAX_IMAGE_ID_CHARS = 256


def parse_image_path(raw: bytes | None, key: bytes | None, fallback_id: str) -> ImagePath:
    """Parse an ``imgflow-paths`` message from any producer.

    ``path`` is required. ``image_id`` defaults to the message key, then to
    ``fallback_id`` (derived from topic/partition/offset, so a redelivered
    message keeps its id).
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
    if not data.get("submitted_at"):
        data["submitted_at"] = time.time()
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
