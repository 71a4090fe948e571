"""The chain's topics. Keys are ``image_id``; values are JSON records.

Values are consumed as raw bytes and parsed by the stages themselves, so a
malformed message becomes a failure record instead of an agent crash (Faust
re-raises value decode errors inside the agent).
"""

from __future__ import annotations

from imgflow.app import app, settings


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
tensors_topic = _topic("tensors")
predictions_topic = _topic("predictions")
stored_topic = _topic("stored")
failed_topic = _topic("failed")

ALL_TOPICS = {
    "paths": paths_topic,
    "tensors": tensors_topic,
    "predictions": predictions_topic,
    "stored": stored_topic,
    "failed": failed_topic,
}


async def publish(topic, messages: list[tuple[str, bytes]]) -> None:
    """Send ``(key, value)`` pairs and wait until the broker has them all.

    Stages call this before their batch is acknowledged, so an input offset is
    never committed past an output that was not delivered.
    """
    import asyncio

    futures = [await topic.send(key=key.encode(), value=value) for key, value in messages]
    if futures:
        await asyncio.gather(*futures)
