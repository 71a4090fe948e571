"""Where the pixels of ``imgflow-tensors`` travel: in the message, or beside it in MongoDB.

A decoded 224x224x3 tensor is 150 KB, most of every image's bytes on the broker. Real
Kafka drops them with the topic's retention; the embedded broker keeps every record in
memory and applies none (docs/design.md §8), so a demo left running fills the machine.
Lossy codecs do not keep the model's answers (measured on the demo and camera images:
89% top-1 agreement at JPEG quality 95) and lossless ones shrink the pixels only 2.5-3x
(PNG, lossless WebP) for 5-7 ms of CPU per image.

So with ``IMGFLOW_TENSOR_STORE=mongo`` the pixels go beside the message (a claim check):
the decode stage writes them to the ``tensors`` collection before it publishes, and the
message carries the record and the header ``imgflow-pixels: mongo`` with an empty value.
The classify stage reads the batch's pixels in one query and, once its predictions are
acknowledged by the broker, marks them done (the pixels are dropped, a small tombstone
stays until ``IMGFLOW_TENSOR_TTL``). A redelivered message whose pixels are done was
classified already and is skipped; one whose pixels are gone (expired before a stopped
classify stage came back) becomes a ``tensor_gone`` failure that ``replay --failed-only``
retries from the path. ``kafka`` (the default) keeps the pixels in the message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from bson import Binary
from pymongo import ASCENDING, IndexModel
from pymongo.errors import BulkWriteError

COLLECTION = "tensors"
#: The message header that says where the pixels are (absent: in the message's value).
HEADER = "imgflow-pixels"
IN_MONGO = b"mongo"
#: Tombstones and unclaimed pixels are dropped this often at most (seconds).
PRUNE_EVERY = 60.0

#: Created with the others at a worker's start (``imgflow.storage.ensure_indexes``).
INDEXES = [IndexModel([("at", ASCENDING)], name="at")]


def blob_id(image_id: str, decoded_at: float) -> str:
    """One document per decode: a re-decode after a crash writes its own."""
    return f"{image_id}|{decoded_at!r}"


class TensorStore:
    """The ``tensors`` collection: put before publishing, take when classifying, then done.

    Synchronous (pymongo): the stages call it in a thread, like the sinks' writes.
    """

    def __init__(self, db: Any, ttl: float) -> None:
        self.collection = db[COLLECTION]
        self.ttl = ttl
        self._pruned_at = 0.0

    def put(self, blobs: Iterable[tuple[str, bytes]]) -> None:
        """Store pixels by blob id; writing one again (a redelivered decode) changes nothing."""
        now = time.time()
        docs = [{"_id": key, "px": Binary(pixels), "at": now} for key, pixels in blobs]
        if not docs:
            return
        try:
            self.collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:  # only "already there" is expected: the same decode again
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise

    def take(self, keys: list[str]) -> dict[str, bytes | None]:
        """The pixels of each key found: bytes, or None when done already (classified)."""
        found: dict[str, bytes | None] = {}
        for doc in self.collection.find({"_id": {"$in": keys}}):
            found[doc["_id"]] = None if doc.get("done") else bytes(doc["px"])
        return found

    def done(self, keys: list[str]) -> None:
        """Drop the pixels of classified images (a tombstone stays: a redelivery is recognised)."""
        if keys:
            self.collection.update_many(
                {"_id": {"$in": keys}}, {"$unset": {"px": ""}, "$set": {"done": True}}
            )
        self.prune()

    def prune(self, now: float | None = None) -> int:
        """Drop tombstones and unclaimed pixels older than the ttl (at most every PRUNE_EVERY s)."""
        now = time.time() if now is None else now
        if now - self._pruned_at < PRUNE_EVERY:
            return 0
        self._pruned_at = now
        return int(self.collection.delete_many({"at": {"$lt": now - self.ttl}}).deleted_count)
