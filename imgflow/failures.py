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

from imgflow.imaging import ImageRejected
from imgflow.records import Failure, MalformedMessage, dumps, message_id

log = logging.getLogger(__name__)


def kind_and_message(exc: BaseException) -> tuple[str, str]:
    """(kind, message) for any exception a stage may meet."""
    if isinstance(exc, ImageRejected):
        return exc.kind, exc.message
    if isinstance(exc, MalformedMessage):
        return "malformed_message", str(exc)
    from models.spec import ModelError

    if isinstance(exc, ModelError):
        return "model_unavailable", str(exc)
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str):
        return kind, str(exc)
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
        path=clip(getattr(item, "path", None), MAX_FIELD_CHARS),
        source=clip(getattr(item, "source", None), MAX_FIELD_CHARS),
        model=clip(getattr(item, "model", None), MAX_FIELD_CHARS),
        replay_id=clip(getattr(item, "replay_id", None), MAX_FIELD_CHARS),
        submitted_at=getattr(item, "submitted_at", None),
    )
    return item.image_id, dumps(record)


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
