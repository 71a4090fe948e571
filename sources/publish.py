"""The one way path messages enter the chain.

Every source (``submit``, ``watch``, ``simulate``, ``POST /images/``) builds its
messages with :func:`path_message`, where the ``image_id`` is assigned once,
and publishes them with :func:`publish_paths`, which returns only after the
broker has acknowledged every message: a source may report an id, mark a
journal row ``sent`` or answer ``201`` only once the image cannot be lost.
Replay (:mod:`lifecycle.replay`) re-publishes existing messages through
:func:`publish_paths` as well.

On the wire a path message is keyed by its ``image_id`` (so every stage of one
image stays on one partition) and its value is the JSON of
:class:`~imgflow.records.ImagePath`. Replayed messages also carry their
``replay_id`` and origin as headers (:func:`replay_headers`), for tools that
read only headers (kcat); the value holds the same facts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imgflow.objects import is_uri
from imgflow.records import ImagePath, dumps, new_image_id
from imgflow.settings import Settings


def path_message(
    path: Path | str,
    source: str,
    *,
    model: str | None = None,
    attrs: dict | None = None,
    image_id: str | None = None,
) -> ImagePath:
    """A new image entering the chain: its id is assigned here, once.

    Sources that must survive a restart (the folder watcher) or that name
    files after the id (the upload) assign the id earlier and pass it in, so
    a resend carries the same id.
    """
    return ImagePath(
        image_id=image_id or new_image_id(),
        # A file by its absolute real path; an object-store URI as it is (imgflow/objects.py).
        path=str(path) if is_uri(str(path)) else str(Path(path).resolve()),
        source=source,
        submitted_at=time.time(),
        model=model,
        attrs=attrs or {},
    )


def replay_headers(message: ImagePath) -> list[tuple[str, bytes]]:
    """``imgflow-replay-id`` and ``imgflow-origin`` (topic/partition/offset) of a replayed message."""
    if not message.replay_id:
        return []
    headers = [("imgflow-replay-id", message.replay_id.encode())]
    origin = message.attrs.get("replay") or {}
    if "topic" in origin:
        headers.append(
            ("imgflow-origin", f"{origin['topic']}/{origin['partition']}/{origin['offset']}".encode())
        )
    return headers


async def publish_paths(messages: Iterable[ImagePath], *, settings: Settings | None = None) -> list[str]:
    """Publish path messages and wait until the broker has every one; returns their ids.

    Without ``settings``: through the Faust app's paths topic, sharing the
    producer of the process that runs the app (the CLI commands, the upload
    view on a worker). With ``settings``: through a producer of its own for
    that deployment, started and stopped around the call, for callers without
    a running Faust app or with other settings than the environment's (replay,
    the dashboard's retry).
    """
    batch = list(messages)
    if settings is None:
        from imgflow.topics import paths_topic, publish_all

        await publish_all(paths_topic, [(m.image_id, dumps(m)) for m in batch])
    else:
        await _publish_standalone(settings, batch)
    return [m.image_id for m in batch]


async def _publish_standalone(settings: Settings, batch: list[ImagePath]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        max_request_size=settings.max_message_bytes,
        acks="all",
    )
    await producer.start()
    try:
        topic = settings.topic("paths")
        futures: list[Any] = [
            await producer.send(topic, dumps(m), key=m.image_id.encode(), headers=replay_headers(m))
            for m in batch
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
