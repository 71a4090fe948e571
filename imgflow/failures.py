"""Failure records: what every stage turns an input it cannot process into.

One :class:`~imgflow.records.Failure` per image (or per malformed message),
with a stable ``kind`` a program can count and a message a person understands.
The free text copied from the input is bounded, so a record stays far below the
smallest allowed message size even when the input itself was too large.
"""

from __future__ import annotations

import logging
import time
from typing import Any, overload

from imgflow.fields import MalformedMessage
from imgflow.imaging import ImageRejected
from imgflow.records import Failure, ImageRef, dumps, message_id

log = logging.getLogger(__name__)


#: Every failure kind imgflow itself records, and every stage. A failure record on the failed
#: topic comes from anyone who may write to it: its kind and stage label the metric
#: ``imgflow_images_failed_total`` only when they are one of these, else ``other`` (one
#: message per new label would otherwise be one new series each).
KINDS = frozenset(
    {
        "bad_tensor",
        "corrupt_image",
        "decode_timeout",
        "decompression_bomb",
        "empty_file",
        "file_too_large",
        "frame_gone",
        "internal_error",
        "malformed_message",
        "message_too_large",
        "missing_file",
        "model_error",
        "model_unavailable",
        "not_a_file",
        "not_an_image",
        "outside_roots",
        "over_memory_budget",
        "tensor_gone",
        "unknown_model",
        "unreadable_file",
        "unstorable",
        "unsupported_format",
    }
)
STAGES = frozenset({"decode", "classify", "store", "failures", "annotate", "ingest"})


def metric_label(value: str, known: frozenset[str]) -> str:
    """``value`` if it is one of ``known``, else ``other``: metric labels from a fixed set."""
    return value if value in known else "other"


def kind_and_message(exc: BaseException) -> tuple[str, str]:
    """(kind, message) for any exception a stage may meet."""
    if isinstance(exc, ImageRejected):
        return exc.kind, exc.message
    if isinstance(exc, MalformedMessage):
        return "malformed_message", str(exc)
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str):
        return kind, str(exc)
    from bson.errors import BSONError
    from pymongo.errors import DocumentTooLarge, PyMongoError

    from models.spec import ModelError

    if isinstance(exc, ModelError):
        return "model_unavailable", str(exc)
    if isinstance(exc, DocumentTooLarge | BSONError | OverflowError):
        return "unstorable", f"MongoDB cannot store this result: {type(exc).__name__}: {exc}"
    if isinstance(exc, PyMongoError):
        return "unstorable", f"MongoDB refused this result for good: {type(exc).__name__}: {exc}"
    return "internal_error", f"{type(exc).__name__}: {exc}"


#: Bounds on the free text a failure record copies from its input, so that the record
#: stays far below the smallest allowed IMGFLOW_MAX_MESSAGE_BYTES even when the input
#: (a huge bogus path, an error quoting a huge value) is what was too large.
MAX_MESSAGE_CHARS = 1000
MAX_FIELD_CHARS = 1024


@overload
def clip(text: str, limit: int) -> str: ...
@overload
def clip(text: str | None, limit: int) -> str | None: ...


def clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def failure_for(stage: str, item: Any, exc: BaseException) -> tuple[str, bytes]:
    """A failure record for a parsed item (ImagePath, Prediction, ...; or one holding its ``record``)."""
    item = getattr(item, "record", item)
    kind, message = kind_and_message(exc)
    log.info("%s failed for %s: %s (%s)", stage, item.image_id, kind, clip(message, MAX_MESSAGE_CHARS))
    record = Failure(
        image_id=item.image_id,
        stage=stage,
        kind=kind,
        message=clip(message, MAX_MESSAGE_CHARS),
        failed_at=time.time(),
        ref=_bounded(getattr(item, "ref", None)),
        model=clip(getattr(item, "model", None), MAX_FIELD_CHARS),
    )
    return item.image_id, dumps(record)


def _bounded(ref: Any) -> ImageRef | None:
    """The image's reference, its free text cut to :data:`MAX_FIELD_CHARS` (strict parsing
    bounds it already; a record built in code may not have been parsed)."""
    if not isinstance(ref, ImageRef):
        return None
    return ImageRef(
        image_id=ref.image_id,
        path=clip(ref.path, MAX_FIELD_CHARS),
        source=clip(ref.source, MAX_FIELD_CHARS),
        submitted_at=ref.submitted_at,
        replay_id=clip(ref.replay_id, MAX_FIELD_CHARS),
    )


def malformed(stage: str, exc: BaseException, event: Any) -> tuple[str, bytes]:
    """A failure record for a message that could not even be parsed."""
    record = malformed_failure(stage, exc, event)
    return record.image_id, dumps(record)


def malformed_failure(stage: str, exc: BaseException, event: Any) -> Failure:
    msg = event.message
    image_id = message_id(msg.topic, msg.partition, msg.offset)
    kind, message = kind_and_message(exc)
    message = clip(message, MAX_MESSAGE_CHARS)
    log.warning("malformed message on %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, message)
    record = Failure(
        image_id=image_id,
        stage=stage,
        kind=kind,
        message=message,
        failed_at=time.time(),
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
    )
    return record
