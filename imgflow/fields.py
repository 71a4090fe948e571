"""One rule per field name, for every record of every topic: what a message may hold.

Everything a stage consumes is read as a JSON object (:func:`json_object`: bounded, no NaN or
Infinity, no Faust metadata), then every field it has is checked by the rule for its name
(:func:`check_fields`): bounded text without NUL, finite numbers in range, times no later than
now plus the allowed clock skew, ``attrs`` bounded in size, depth and key names. Anything else
is a :class:`MalformedMessage`, which a stage turns into a failure record.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

import faust


class MalformedMessage(ValueError):
    """A message that cannot be parsed into its topic's record type."""


#: The largest message value parsed as JSON (a record is a few KB; a face model's prediction
#: with its embeddings the largest, ~100 KB). Larger is malformed, before any parsing.
MAX_RECORD_BYTES = 4 * 2**20


def refuse_constant(name: str) -> Any:
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
        data = json.loads(raw, parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise MalformedMessage(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"expected a JSON object, got {type(data).__name__}")
    data.pop("__faust", None)
    return data


def require_fields(record_type: type[faust.Record], data: dict[str, Any]) -> None:
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
            require_fields(typ, value)


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


def check_fields(data: dict[str, Any], nested: Mapping[str, type[faust.Record]] | None = None) -> None:
    """The strict rules for every field present in ``data`` (one rule per field name);
    ``nested``: the record type of each field that holds a record (``meta``, ``ref``)."""
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
            if nested is not None and name in nested:
                require_fields(nested[name], value)
            check_fields(value, nested)
