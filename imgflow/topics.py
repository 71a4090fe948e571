"""The chain's topics. Keys are ``image_id``; values are JSON records, except
``imgflow-tensors``, whose values are raw pixels with the record in a header
(imgflow/records.py).

Values are consumed as raw bytes and parsed by the stages themselves, so a
malformed message becomes a failure record instead of an agent crash (Faust
re-raises value decode errors inside the agent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from imgflow.app import app, settings

log = logging.getLogger(__name__)


def _topic(stage: str):
    return app.topic(
        settings.topic(stage),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )


paths_topic = _topic("paths")
#: Encoded images as bytes, for sources without a shared path (imgflow/frames.py).
frames_topic = _topic("frames")
tensors_topic = _topic("tensors")
predictions_topic = _topic("predictions")
stored_topic = _topic("stored")
#: Opt-in (IMGFLOW_ANNOTATE): each result drawn on its image, JPEG (agents/annotate.py).
annotated_topic = _topic("annotated")
failed_topic = _topic("failed")

ALL_TOPICS = {
    "paths": paths_topic,
    "frames": frames_topic,
    "tensors": tensors_topic,
    "predictions": predictions_topic,
    "stored": stored_topic,
    "failed": failed_topic,
}


class MessageTooLarge(Exception):
    """An output over the producer's or the broker's size limit.

    It fails that one image (kind ``message_too_large``), not the batch: the same
    message would be refused on every retry, so raising would stall the stage.
    """

    kind = "message_too_large"


def _too_large(exc: BaseException) -> bool:
    """aiokafka refuses at send time (over ``max_request_size``, wrapped by Faust in
    ``ProducerSendError``) or the broker refuses the produce request (the future fails)."""
    from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

    limits = (MessageSizeTooLargeError, RecordListTooLargeError)
    return isinstance(exc, limits) or isinstance(exc.__cause__, limits)


#: A message to send: ``(key, value)`` or ``(key, value, headers)``.
Message = tuple[str, bytes] | tuple[str, bytes, list[tuple[str, bytes]] | None]


async def publish(topic, messages: Sequence[Message]) -> dict[int, MessageTooLarge]:
    """Send ``(key, value[, headers])`` messages and wait until the broker has them all.

    Stages call this before their batch is acknowledged, so an input offset is
    never committed past an output that was not delivered. Messages refused as
    too large are returned by their index, for the caller to turn into failure
    records; every other error is raised (the batch is not acknowledged).
    """
    limit = settings.max_message_bytes
    rejected: dict[int, MessageTooLarge] = {}
    pending: dict[int, Any] = {}
    for i, (key, value, *extra) in enumerate(messages):
        try:
            headers = extra[0] if extra else None
            pending[i] = await topic.send(key=key.encode(), value=value, headers=headers)
        except Exception as exc:
            if not _too_large(exc):
                raise
            rejected[i] = MessageTooLarge(
                f"its {topic.get_topic_name()} message is {len(value):,} bytes, over the "
                f"{limit:,}-byte limit (IMGFLOW_MAX_MESSAGE_BYTES)"
            )
    results = await asyncio.gather(*pending.values(), return_exceptions=True)
    for i, result in zip(pending, results, strict=True):
        if isinstance(result, BaseException):
            if not _too_large(result):
                raise result
            rejected[i] = MessageTooLarge(
                f"the broker refused its {topic.get_topic_name()} message of {len(messages[i][1]):,} "
                f"bytes as too large: {result}"
            )
    for i, refusal in rejected.items():
        log.warning("not sent to %s: %s: %s", topic.get_topic_name(), messages[i][0], refusal)
    return rejected


async def publish_all(topic, messages: Sequence[Message]) -> None:
    """:func:`publish` for outputs that are small by construction (failure records,
    stored events): a refusal there is a bug or a limit set below the documented
    minimum, so it is raised instead of being turned into another message."""
    rejected = await publish(topic, messages)
    if rejected:
        raise next(iter(rejected.values()))
