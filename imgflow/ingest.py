"""Putting images into the chain: one function every source uses."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from imgflow.records import ImagePath, dumps, new_image_id
from imgflow.topics import paths_topic, publish


def path_message(
    path: Path, source: str, *, model: str | None = None, attrs: dict | None = None
) -> ImagePath:
    """A new image entering the chain: its id is assigned here, once."""
    return ImagePath(
        image_id=new_image_id(),
        path=str(path.resolve()),
        source=source,
        submitted_at=time.time(),
        model=model,
        attrs=attrs or {},
    )


async def submit(messages: Iterable[ImagePath]) -> list[str]:
    """Publish path messages and wait for the broker to have them; returns ids."""
    batch = list(messages)
    await publish(paths_topic, [(m.image_id, dumps(m)) for m in batch])
    return [m.image_id for m in batch]
