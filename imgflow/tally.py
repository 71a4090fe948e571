"""Exact totals kept as writes happen: counters that redelivery, retries and crashes cannot skew.

Counting stored documents costs time proportional to history (docs/design.md §9:
``count_documents({})`` walks the collection), so the totals the dashboard shows
(images stored, failures, hidden, corrected, predictions per model version) are
counters, changed by whoever changes the documents: the sink, the dead-letter
sink and the dashboard's edits. MongoDB here has no multi-document transactions
(and SecantusDB has none at all), so a change to a document and to a counter
cannot be one atomic write. Instead:

- **Writers and tokens.** Each writer (one sink in one process, one dashboard
  process) owns one document in ``counters``: its totals ``n``, the last token
  it settled (``seq``) and the last it began (``pending``). A batch of writes is
  one token, ``"<writer>:<seq>"``, and every document the batch *creates* or
  whose counted state it *changes* carries that token (``tally`` on insert,
  ``gone`` on a failure about to be deleted, ``edit`` on a person's change).
- **Settle.** After the writes, the writer adds the batch's deltas to its
  document, guarded by ``seq``: one update, applied once however often it is
  sent. A redelivered batch inserts nothing, so its deltas are zero.
- **Crashes.** A writer killed between its writes and its settle leaves
  ``pending > seq``. Anyone may settle that token from the documents that carry
  it (:func:`sweep`); the sink does at start and the dashboard at every refresh.
  A sweep and the writer can race (a writer still writing, a sweep counting
  what is there): the counter keeps, per key, the larger of what each saw for
  the token, by compare-and-set on ``rev``. A token's documents only accumulate
  while it is open, so the larger is the complete count.

Totals are the sum over writers' documents: a small read whatever the history.
``rebuild`` recounts everything once (slow, by design) for data written before
counters existed.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel

log = logging.getLogger(__name__)

COLLECTION = "counters"

#: The totals the dashboard shows; predictions are counted per model version too.
IMAGES, FAILURES, HIDDEN, CORRECTED = "images", "failures", "hidden", "corrected"
PREDICTIONS = "predictions"

#: Where a token is stored, per collection: created documents (``tally``), failures
#: about to be deleted (``gone``), images a person changed (``edit.t``).
TOKEN_FIELDS = {"images": ["tally", "edit.t"], "predictions": ["tally"], "failures": ["tally", "gone"]}

INDEXES: dict[str, list[IndexModel]] = {
    collection: [IndexModel([(name, ASCENDING)], name=f"tally_{name}", sparse=True) for name in names]
    for collection, names in TOKEN_FIELDS.items()
}


def predictions_key(model: str, version: str) -> str:
    return f"{PREDICTIONS}:{model}:{version}"


def encode(key: str) -> str:
    """A counter key as a field name (no ``.``, no leading ``$``)."""
    return key.replace("%", "%25").replace(".", "%2E").replace("$", "%24")


def decode(field: str) -> str:
    return field.replace("%24", "$").replace("%2E", ".").replace("%25", "%")


def token(writer: str, seq: int) -> str:
    return f"{writer}:{seq:012d}"


def parse_token(value: str) -> tuple[str, int]:
    writer, _, seq = value.rpartition(":")
    return writer, int(seq)


def merge(applied: Mapping[str, int], seen: Mapping[str, int]) -> dict[str, int]:
    """Per key, the delta of larger magnitude (pure): a token's documents only accumulate."""
    out = dict(applied)
    for key, delta in seen.items():
        if abs(delta) > abs(out.get(key, 0)):
            out[key] = delta
    return out


def writer_id(role: str) -> str:
    """A writer's name: unique per process start, readable in ``counters``."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Tally:
    """One writer's counters (synchronous pymongo; the sink calls it in a thread)."""

    def __init__(self, db: Any, role: str) -> None:
        self.db = db
        self.role = role
        self.writer = writer_id(role)
        self.seq = 0
        self.open: int | None = None  # a begun token whose settle has not succeeded
        self._registered = False

    @property
    def counters(self) -> Any:
        return self.db[COLLECTION]

    def _register(self) -> None:
        if not self._registered:
            now = datetime.now(UTC)
            self.counters.update_one(
                {"_id": self.writer},
                {
                    "$setOnInsert": {
                        **{"role": self.role, "seq": 0, "pending": 0, "rev": 0},
                        **{"n": {}, "started_at": now},
                    }
                },
                upsert=True,
            )
            self._registered = True

    def begin(self) -> str:
        """A token for the next batch; its intent is recorded before any document carries it.

        If the previous batch's writes failed part-way (and are being retried under a new
        token), what they did is settled first, from the documents.
        """
        self._register()
        if self.open is not None:
            settle(self.db, self.writer, self.open, count_token(self.db, token(self.writer, self.open)))
            self.seq, self.open = self.open, None
        seq = self.seq + 1
        intent = {"pending": seq, "pending_at": datetime.now(UTC)}
        self.counters.update_one({"_id": self.writer}, {"$set": intent})
        self.open = seq
        return token(self.writer, seq)

    def settle(self, deltas: Mapping[str, int], first_at: datetime | None = None) -> None:
        """Add the open batch's deltas to this writer's totals, once."""
        assert self.open is not None, "settle() without begin()"
        settle(self.db, self.writer, self.open, deltas, first_at=first_at)
        self.seq, self.open = self.open, None


def settle(
    db: Any, writer: str, seq: int, deltas: Mapping[str, int], first_at: datetime | None = None
) -> bool:
    """Apply token ``seq``'s deltas to ``writer``'s totals, at most once per key and size.

    The common case is one update guarded by ``seq``. If the token was settled before
    (a sweep saw part of it, or this is a repeat), only what exceeds the recorded deltas
    is added, by compare-and-set. False if a later token was settled already.
    """
    counters = db[COLLECTION]
    deltas = {k: int(v) for k, v in deltas.items() if v}
    extra: dict[str, Any] = {"$max": {"pending": seq}}
    if first_at is not None:
        extra["$min"] = {"first_at": first_at}
    inc = {f"n.{encode(k)}": v for k, v in deltas.items()}
    fast = counters.update_one(
        {"_id": writer, "seq": {"$lt": seq}},
        {
            "$set": {"seq": seq, "last": {encode(k): v for k, v in deltas.items()}, "at": datetime.now(UTC)},
            "$inc": {**inc, "rev": 1},
            **extra,
        },
    )
    if fast.matched_count:
        return True
    while True:
        doc = counters.find_one({"_id": writer})
        if doc is None:  # never registered (a sweep of a foreign token): create, then retry
            counters.update_one(
                {"_id": writer},
                {"$setOnInsert": {"seq": 0, "pending": seq, "rev": 0, "n": {}}},
                upsert=True,
            )
            return settle(db, writer, seq, deltas, first_at)
        if int(doc.get("seq", 0)) > seq:
            return False
        if int(doc.get("seq", 0)) < seq:  # raced with another settle of an older token
            return settle(db, writer, seq, deltas, first_at)
        last = {decode(k): int(v) for k, v in (doc.get("last") or {}).items()}
        merged = merge(last, deltas)
        more = {k: merged[k] - last.get(k, 0) for k in merged if merged[k] != last.get(k, 0)}
        update: dict[str, Any] = {"$inc": {"rev": 1, **{f"n.{encode(k)}": v for k, v in more.items()}}}
        update["$set"] = {"last": {encode(k): v for k, v in merged.items()}}
        if first_at is not None:
            update["$min"] = {"first_at": first_at}
        done = counters.update_one({"_id": writer, "seq": seq, "rev": doc.get("rev", 0)}, update)
        if done.matched_count:
            return True


def count_token(db: Any, value: str) -> dict[str, int]:
    """The deltas recorded by the documents that carry token ``value`` (read from MongoDB)."""
    deltas: Counter[str] = Counter()
    deltas[IMAGES] += db.images.count_documents({"tally": value})
    for doc in db.images.find({"edit.t": value}, {"edit": 1}):
        for key, delta in ((doc.get("edit") or {}).get("d") or {}).items():
            deltas[key] += int(delta)
    for doc in db.predictions.find({"tally": value}, {"model": 1, "model_version": 1}):
        deltas[predictions_key(doc.get("model"), doc.get("model_version"))] += 1
    deltas[FAILURES] += db.failures.count_documents({"tally": value})
    deltas[FAILURES] -= db.failures.count_documents({"gone": value})
    return {k: v for k, v in deltas.items() if v}


def sweep(db: Any, grace: float = 0.0) -> int:
    """Settle every token a writer began ``grace`` seconds ago or more and did not settle; how many.

    Safe while those writers are alive (see the module docstring); ``grace`` only spares a
    live writer's batch in flight the extra work. Cheap when there is nothing to do: one
    read of the writers whose ``pending`` is ahead of ``seq``. Also deletes failures whose
    removal was counted but not carried out.
    """
    settled = 0
    unsettled: dict[str, Any] = {"$expr": {"$gt": ["$pending", "$seq"]}}
    if grace:
        unsettled["pending_at"] = {"$lte": datetime.now(UTC) - timedelta(seconds=grace)}
    for doc in db[COLLECTION].find(unsettled, {"pending": 1}):
        writer, seq = doc["_id"], int(doc["pending"])
        if settle(db, writer, seq, count_token(db, token(writer, seq))):
            settled += 1
            log.info("settled token %s of writer %s from its documents", seq, writer)
    finish_deletes(db)
    return settled


def finish_deletes(db: Any) -> int:
    """Delete the failures whose removal was counted (their token settled) but not done."""
    marked = list(db.failures.find({"gone": {"$gt": ""}}, {"gone": 1}))
    if not marked:
        return 0
    applied = {d["_id"]: int(d.get("seq", 0)) for d in db[COLLECTION].find({}, {"seq": 1})}
    done = []
    for doc in marked:
        writer, seq = parse_token(doc["gone"])
        if seq <= applied.get(writer, 0):
            done.append(doc["_id"])
    if done:
        db.failures.delete_many({"_id": {"$in": done}, "gone": {"$exists": True}})
    return len(done)


def totals(db: Any, docs: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every counter summed over writers, plus what tells a reader that data changed.

    ``stamp`` changes whenever any writer settles a batch (a stored result, a replay, a
    failure, a person's edit); ``first_at`` is the oldest time anything was stored.
    """
    if docs is None:
        docs = db[COLLECTION].find({}, {"n": 1, "seq": 1, "rev": 1, "first_at": 1})
    summed: Counter[str] = Counter()
    stamp = 0
    first_at = None
    writers = 0
    for doc in docs:
        writers += 1
        for field, value in (doc.get("n") or {}).items():
            summed[decode(field)] += int(value)
        stamp += int(doc.get("rev", 0))
        at = doc.get("first_at")
        if at is not None and (first_at is None or at < first_at):
            first_at = at
    per_version = {
        k[len(PREDICTIONS) + 1 :]: v for k, v in summed.items() if k.startswith(PREDICTIONS + ":") and v
    }
    return {
        IMAGES: summed[IMAGES],
        FAILURES: summed[FAILURES],
        HIDDEN: summed[HIDDEN],
        CORRECTED: summed[CORRECTED],
        "predictions": per_version,
        "stamp": (writers, stamp),
        "first_at": first_at,
    }


def rebuild(db: Any) -> dict[str, int]:
    """Recount every total from the collections (time grows with history: run it once, stopped).

    For data stored before counters existed, or repaired by hand. Replaces every writer's
    counters with one ``rebuilt`` document; run it with workers and dashboards stopped.
    """
    n: Counter[str] = Counter()
    n[IMAGES] = db.images.count_documents({})
    n[FAILURES] = db.failures.count_documents({"gone": {"$exists": False}})
    n[HIDDEN] = db.images.count_documents({"hidden": True})
    n[CORRECTED] = db.images.count_documents({"feedback.label": {"$exists": True}})
    for row in db.predictions.aggregate(
        [{"$group": {"_id": {"m": "$model", "v": "$model_version"}, "n": {"$sum": 1}}}]
    ):
        n[predictions_key(row["_id"]["m"], row["_id"]["v"])] = int(row["n"])
    first = db.images.find_one({}, {"created_at": 1}, sort=[("created_at", 1)])
    db[COLLECTION].delete_many({})
    db[COLLECTION].insert_one(
        {
            "_id": "rebuilt",
            "seq": 0,
            "pending": 0,
            "rev": 1,
            "n": {encode(k): v for k, v in n.items() if v},
            "first_at": first.get("created_at") if first else None,
            "at": datetime.now(UTC),
        }
    )
    return {k: v for k, v in n.items() if v}


def model_versions_of(counts: dict[str, Any]) -> list[str]:
    """``name:version`` of every model with predictions, most predictions first."""
    return [key for key, _ in sorted(counts["predictions"].items(), key=lambda kv: (-kv[1], kv[0]))]
