"""Retrying the failures list: every dead letter with a path is published again as a replay.

``faust -A imgflow replay --failed-only`` and the dashboard's retry use it. The failures are
read one image-id range at a time and published in chunks of :data:`RETRY_CHUNK`, so a retry
holds one chunk in memory whatever the list's size; a failure retried is marked, not removed,
until its image is stored.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from imgflow.queries import id_ranges
from imgflow.records import ImagePath
from imgflow.settings import Settings, get_settings
from sources.publish import publish_paths

log = logging.getLogger(__name__)


def mongo_db(settings: Settings):
    from pymongo import MongoClient

    from imgflow.mongo import connect

    client: MongoClient = connect(settings.mongo_url)
    return client, client[settings.mongo_db]


#: Dead letters read, published and marked per step of a retry (what a retry holds in memory).
RETRY_CHUNK = 1000


def failure_chunks(
    db: Any, image_ids: Iterable[str] | None = None, size: int = RETRY_CHUNK
) -> Iterator[list[dict]]:
    """The dead letters to retry (with a path, not cleared), at most ``size`` at a time.

    All of them are read one image-id range at a time (``imgflow.queries.id_ranges``): the
    server reads a whole index range for a sort with a limit and ignores the id bounds of a
    query that names more fields, so paging by ``_id`` re-read every later failure per page.
    """

    def retryable(docs: Iterable[dict]) -> list[dict]:
        return [d for d in docs if d.get("path") is not None and "gone" not in d]

    if image_ids is not None:
        wanted = sorted(set(image_ids))
        for i in range(0, len(wanted), size):
            found = retryable(db.failures.find({"_id": {"$in": wanted[i : i + size]}}))
            if found:
                yield found
        return
    pending: list[dict] = []
    for low, high in id_ranges():
        span: dict[str, Any] = {"$gte": low} if high is None else {"$gte": low, "$lt": high}
        pending += retryable(db.failures.find({"_id": span}))
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


async def retry_failed(
    image_ids: list[str] | None = None,
    settings: Settings | None = None,
    user: str | None = None,
    progress: Callable[[int], object] | None = None,
    model: str | None = None,
) -> int:
    """Re-send failed images (all, or the given ids) from MongoDB ``failures``.

    With the current default model unless ``model`` (a registered one) is given: the model a
    failure names is whatever its message said, and a retry must not repeat it.

    Used after fixing the cause (a permission, a missing file). A retried image
    that succeeds leaves the failures list (the store stage removes it); one
    that fails again updates its failure document. ``user`` (the dashboard's
    signed-in user) is recorded on the failure documents (``retried_by``) and
    travels with the images (``attrs.retry_of.by``), so a retry has an author.

    Bounded memory at any size: ``RETRY_CHUNK`` failures at a time
    (:func:`failure_chunks`), each chunk published and marked before the next is read;
    ``progress(sent so far)`` after each.
    """
    import asyncio

    settings = settings or get_settings()
    replay_id = f"retry-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    client, db = mongo_db(settings)
    chunks = failure_chunks(db, image_ids)
    sent = 0
    try:
        while (docs := await asyncio.to_thread(next, chunks, None)) is not None:
            items = [
                ImagePath(
                    image_id=doc["_id"],
                    path=doc["path"],
                    source=doc.get("source") or "retry",
                    submitted_at=time.time(),
                    model=model,
                    replay_id=replay_id,
                    attrs={"retry_of": {"kind": doc.get("kind"), "stage": doc.get("stage"), "by": user}},
                )
                for doc in docs
            ]
            if items:
                ids = await publish_paths(items, settings=settings)
                retried = {"retried_by": user, "retried_at": datetime.now(UTC), "retry_id": replay_id}
                await asyncio.to_thread(db.failures.update_many, {"_id": {"$in": ids}}, {"$set": retried})
                sent += len(ids)
                if progress is not None:
                    progress(sent)
    finally:
        client.close()
    return sent
