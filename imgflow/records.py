"""Messages that travel between the stages, one typed record per topic.

Records are plain JSON on the wire (no Faust metadata), so any Kafka client can
read them. Everything a stage consumes is parsed by :func:`parse`, which turns
anything malformed into :class:`MalformedMessage` instead of crashing an agent.
"""

from __future__ import annotations

import json
import math
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


class MalformedMessage(ValueError):
    """A message that cannot be parsed into its topic's record type."""


R = TypeVar("R", bound=faust.Record)


def parse(record_type: type[R], raw: bytes | str | None) -> R:
    """Parse JSON bytes into ``record_type`` or raise :class:`MalformedMessage`."""
    return _from_object(record_type, json_object(raw))


#: The largest message value parsed as JSON (a record is a few KB; a face model's prediction
#: with its embeddings the largest, ~100 KB). Larger is malformed, before any parsing.
MAX_RECORD_BYTES = 4 * 2**20


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_object(raw: bytes | str | None) -> dict[str, Any]:
    """A message value as a JSON object (Faust metadata dropped), or MalformedMessage."""
    if raw is None:
        raise MalformedMessage("empty message (no value)")
    if len(raw) > MAX_RECORD_BYTES:
        raise MalformedMessage(
            f"message is {len(raw):,} bytes, over the {MAX_RECORD_BYTES:,}-byte record limit"
        )
    try:
        # NaN and Infinity are not JSON: refused here, as 1e400 (infinite) is by the field checks.
        data = json.loads(raw, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise MalformedMessage(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"expected a JSON object, got {type(data).__name__}")
    data.pop("__faust", None)
    return data


def _from_object(record_type: type[R], data: dict[str, Any]) -> R:
    _require_fields(record_type, data)
    check_fields(data)
    try:
        return record_type.from_data(data)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise MalformedMessage(f"invalid {record_type.__name__}: {str(exc)[:200]}") from None


def _require_fields(record_type: type[faust.Record], data: dict[str, Any]) -> None:
    """Faust coerces ``None`` and numbers into ``str`` fields; reject that here."""
    fields = record_type._options.fields
    defaults = record_type._options.defaults
    unknown = set(data) - set(fields)
    if unknown:
        raise MalformedMessage(f"unknown field(s) {', '.join(sorted(map(str, unknown)))[:200]}")
    for name, typ in fields.items():
        if name not in data:
            if name not in defaults:
                raise MalformedMessage(f"missing required field {name!r}")
            continue
        value = data[name]
        if typ is str and not (isinstance(value, str) and value):
            raise MalformedMessage(f"field {name!r} must be a non-empty string, got {_excerpt(value)}")
        if typ in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise MalformedMessage(f"field {name!r} must be a number, got {_excerpt(value)}")
        if isinstance(typ, type) and issubclass(typ, faust.Record):
            if not isinstance(value, dict):
                raise MalformedMessage(f"field {name!r} must be a JSON object, got {_excerpt(value)}")
            _require_fields(typ, value)


# Strict fields ------------------------------------------------------------------------------
# One rule per field name, the same in every record that has the field: bounded text (no NUL:
# MongoDB keys and C libraries end there), finite numbers in range, times no later than now
# plus the allowed clock skew, and ``attrs`` bounded in size, depth and key names.

MAX_IMAGE_ID_CHARS = 256
#: Text fields and their longest allowed value (characters).
TEXT_LIMITS = {
    "image_id": MAX_IMAGE_ID_CHARS,
    "path": 4096,
    "source": 256,
    "replay_id": 256,
    "model": 1024,
    "label": 512,
    "model_version": 128,
    "stage": 32,
    "kind": 64,
    "message": 4096,
    "topic": 256,
    "file_name": 1024,
    "format": 32,
    "sha256": 128,
}
TIME_FIELDS = ("submitted_at", "decoded_at", "predicted_at", "stored_at", "failed_at")
INT_FIELDS = ("width", "height", "bytes", "batch_size", "partition", "offset")
#: ``attrs``: what a producer may attach to an image (stored with it, shown by the dashboard).
MAX_ATTRS_BYTES = 16 * 1024
MAX_ATTRS_DEPTH = 8
MAX_KEY_CHARS = 128
MAX_TOP_K = 1000
MAX_FACES = 256
MAX_FACES_BYTES = 2 * 2**20
MAX_INT = 2**53  # exact in a double, and in BSON's int64


def _excerpt(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def check_text(name: str, value: Any, limit: int) -> None:
    if not isinstance(value, str):
        raise MalformedMessage(f"field {name!r} must be text, got {_excerpt(value)}")
    if len(value) > limit:
        raise MalformedMessage(f"field {name!r} is {len(value):,} characters, over {limit:,}")
    if "\x00" in value:
        raise MalformedMessage(f"field {name!r} contains a NUL character")


def check_time(name: str, value: Any, now: float | None = None) -> float:
    """A time as epoch seconds: finite, not negative, not later than now + the allowed skew
    (``IMGFLOW_MAX_CLOCK_SKEW``). Old times are fine: backlogs and retries carry them."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedMessage(f"field {name!r} must be a finite number of seconds, got {_excerpt(value)}")
    if value < 0:
        raise MalformedMessage(f"field {name!r} must not be negative, got {value!r}")
    from imgflow.settings import get_settings

    latest = (now or time.time()) + get_settings().max_clock_skew
    if value > latest:
        raise MalformedMessage(
            f"field {name!r} is {value - latest + get_settings().max_clock_skew:,.0f} s in the future "
            "(more than IMGFLOW_MAX_CLOCK_SKEW)"
        )
    return float(value)


def _check_number(name: str, value: Any, *, integer: bool = False, low: float = -MAX_INT) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedMessage(f"field {name!r} must be a number, got {_excerpt(value)}")
    if integer and not isinstance(value, int):
        raise MalformedMessage(f"field {name!r} must be a whole number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= MAX_INT:
        raise MalformedMessage(f"field {name!r} is out of range: {_excerpt(value)}")


def check_json(name: str, value: Any, *, max_bytes: int, depth: int = MAX_ATTRS_DEPTH) -> None:
    """A JSON value that MongoDB can store as it is: keys are non-empty text without NUL,
    ``$`` at the start or ``.``; numbers finite and within 64 bits; nested at most ``depth``
    deep; at most ``max_bytes`` once serialised."""

    def walk(node: Any, level: int) -> None:
        if level > depth:
            raise MalformedMessage(f"field {name!r} is nested more than {depth} levels deep")
        if isinstance(node, dict):
            for key, inner in node.items():
                if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
                    raise MalformedMessage(
                        f"field {name!r} has a key that is empty or over {MAX_KEY_CHARS} characters"
                    )
                if "\x00" in key or key.startswith("$") or "." in key:
                    raise MalformedMessage(
                        f"field {name!r} has a key MongoDB cannot store (NUL, a leading $ or a dot): "
                        f"{_excerpt(key)}"
                    )
                walk(inner, level + 1)
        elif isinstance(node, list):
            for inner in node:
                walk(inner, level + 1)
        elif isinstance(node, bool) or node is None or isinstance(node, str):
            return
        elif isinstance(node, int | float):
            if not math.isfinite(node) or abs(node) > 2**63 - 1:
                raise MalformedMessage(f"field {name!r} holds a number out of range: {_excerpt(node)}")
        else:
            raise MalformedMessage(f"field {name!r} holds a {type(node).__name__}")

    walk(value, 0)
    size = len(json.dumps(value, separators=(",", ":")))
    if size > max_bytes:
        raise MalformedMessage(f"field {name!r} is {size:,} bytes as JSON, over {max_bytes:,}")


def check_fields(data: dict[str, Any]) -> None:
    """The strict rules for every field present in ``data`` (one rule per field name)."""
    now = time.time()
    for name, value in data.items():
        if name in TEXT_LIMITS:
            if value is None and name in ("replay_id", "model", "path", "source", "topic"):
                continue
            check_text(name, value, TEXT_LIMITS[name])
        elif name in TIME_FIELDS:
            if value is not None:
                check_time(name, value, now)
        elif name in INT_FIELDS:
            if value is not None:
                _check_number(name, value, integer=True, low=-1 if name in ("partition", "offset") else 0)
        elif name in ("score", "inference_ms"):
            _check_number(name, value, low=0 if name == "inference_ms" else -MAX_INT)
        elif name == "attrs":
            if not isinstance(value, dict):
                raise MalformedMessage("field 'attrs' must be a JSON object")
            check_json(name, value, max_bytes=MAX_ATTRS_BYTES)
        elif name == "shape":
            if not (isinstance(value, list) and len(value) == 3):
                raise MalformedMessage(f"field 'shape' must be [height, width, 3], got {_excerpt(value)}")
            for dim in value:
                _check_number("shape", dim, integer=True, low=1)
                if dim > 65535:
                    raise MalformedMessage(f"field 'shape' is out of range: {_excerpt(value)}")
        elif name == "top_k":
            if not isinstance(value, list) or len(value) > MAX_TOP_K:
                raise MalformedMessage(f"field 'top_k' must be a list of at most {MAX_TOP_K} answers")
            for entry in value:
                if not isinstance(entry, dict) or set(entry) != {"label", "score"}:
                    raise MalformedMessage("field 'top_k' holds {label, score} objects only")
                check_text("top_k.label", entry["label"], TEXT_LIMITS["label"])
                _check_number("top_k.score", entry["score"])
        elif name == "faces":
            if value is None:
                continue
            if not isinstance(value, list) or len(value) > MAX_FACES:
                raise MalformedMessage(f"field 'faces' must be a list of at most {MAX_FACES} faces")
            if not all(isinstance(face, dict) for face in value):
                raise MalformedMessage("field 'faces' holds objects only")
            check_json(name, value, max_bytes=MAX_FACES_BYTES, depth=4)
        elif name in ("meta", "ref"):
            if value is None and name == "ref":
                continue
            if not isinstance(value, dict):
                raise MalformedMessage(f"field {name!r} must be a JSON object, got {_excerpt(value)}")
            _require_fields(ImageMeta if name == "meta" else ImageRef, value)
            check_fields(value)


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
