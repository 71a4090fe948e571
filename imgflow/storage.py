"""MongoDB documents and their idempotent bulk writes.

Collections (docs/design.md §2):

- ``predictions``: one document per (image_id, model, model_version); a
  redelivery rewrites it, a replay with another model adds one beside it.
- ``images``: one document per image: metadata, latest prediction, user state.
  "Latest" is by request (``submitted_at``: a replay is a new request), then by
  ``predicted_at``, never by arrival: a late redelivery or a recomputation of an
  older request leaves a newer result in place (see :func:`recency`).
- ``failures``: one document per image (or malformed message) that could not go on.
- ``counters`` (:mod:`imgflow.tally`): exact totals, kept as these writes happen.
- ``rates`` (:mod:`imgflow.rates`): results and failures per 10 s, with latencies.
- ``choices``: every label, source and model version seen, for the dashboard's filters.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne

from imgflow import frames, people, rates, tensors
from imgflow.mongo import connect, connect_async
from imgflow.records import Failure, Prediction
from imgflow.retry import retry
from imgflow.tally import FAILURES, IMAGES, Tally, predictions_key, sweep
from imgflow.tally import INDEXES as TALLY_INDEXES
from models.answers import DETAIL_FIELDS, stored_details

log = logging.getLogger(__name__)


def when(ts: float | None) -> datetime | None:
    """Epoch seconds as a UTC datetime, truncated to what BSON stores (milliseconds).

    Truncating here makes a time we compare with equal to the same time read back,
    so a redelivered result is recognised as the same, not as newer.
    """
    if not ts:
        return None
    at = datetime.fromtimestamp(ts, UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def prediction_id(image_id: str, model: str, version: str) -> str:
    return f"{image_id}|{model}|{version}"


INDEXES: dict[str, list[IndexModel]] = {
    "predictions": [
        IndexModel(
            [("image_id", ASCENDING), ("model", ASCENDING), ("model_version", ASCENDING)],
            unique=True,
            name="image_model_version",
        ),
        IndexModel([("model", ASCENDING), ("model_version", ASCENDING)], name="model_version"),
        IndexModel([("stored_at", DESCENDING)], name="newest"),
    ],
    "images": [
        IndexModel([("updated_at", DESCENDING)], name="newest"),
        IndexModel([("elabel", ASCENDING), ("updated_at", DESCENDING)], name="label_newest_seen"),
        IndexModel([("score", DESCENDING)], name="score"),
        IndexModel(
            [("model", ASCENDING), ("model_version", ASCENDING), ("updated_at", DESCENDING)],
            name="model_version_newest",
        ),
        IndexModel([("source", ASCENDING), ("updated_at", DESCENDING)], name="source_newest"),
        IndexModel([("feedback.at", DESCENDING)], name="corrected_newest", sparse=True),
    ],
    "failures": [
        IndexModel([("failed_at", DESCENDING)], name="newest"),
        IndexModel([("kind", ASCENDING)], name="kind"),
    ],
}


def _ms(at: datetime | None) -> int:
    return int(at.timestamp() * 1000) if at is not None else 0


def recency(p: Prediction) -> str:
    """The order in which results replace each other in ``images`` (and per version in ``predictions``).

    The latest *request* wins: ``submitted_at`` is when the image entered the chain,
    and a replay or a retry is a new request with a new time. A redelivered or
    recomputed old request (after a rebalance, at least once) keeps its old time, so it
    never displaces a replay with a newer model, even though its prediction was made
    later. Then ``predicted_at``; model and version only break an exact tie, so the
    stored result does not depend on the order in which redeliveries arrive.

    One string that sorts in that order (zero-padded milliseconds, then names, joined by
    a control character that sorts below any name), stored as ``rank`` beside the result:
    the guard is then one comparison on one field. A filter of several alternatives
    (``$or``) made SecantusDB scan the collection on every update: 40 updates/s instead
    of ~5,000, which capped the whole chain.
    """
    requested, predicted = _ms(when(p.submitted_at)), _ms(when(p.predicted_at))
    return RANK_SEP.join([f"{requested:016d}", f"{predicted:016d}", p.model, p.model_version])


RANK_SEP = "\x01"


def _write_if_newer(
    doc_id: str,
    fields: dict[str, Any],
    on_insert: dict[str, Any],
    rank_path: str,
    computed: dict[str, Any] | None = None,
) -> UpdateOne:
    """One upsert that writes ``fields`` unless the stored document holds a newer result.

    An update pipeline (MongoDB 4.2+, and SecantusDB) keeps the document as it is when its
    rank (at ``rank_path``, see :func:`recency`) is at least the new one, else merges
    ``fields`` in; a missing document is created with ``fields`` and ``on_insert`` (user
    state and the insert's tally token, :mod:`imgflow.tally`), which an existing document
    never gets. ``computed`` are expressions of the stored document (the effective label).
    A document without a rank (written before ranks existed) counts as oldest. One atomic
    operation per document, correct in any order and in an unordered bulk write; writing it
    twice changes nothing. (A filter on the rank cannot do this alone: when the stored result
    is newer the filter misses and the upsert tries to insert a second document with the
    same ``_id``. The two operations that worked around it cost the database a third more
    time per document.)
    """
    rank: Any = fields
    for part in rank_path.split("."):
        rank = rank[part]
    newer = {"$lt": [{"$ifNull": [f"${rank_path}", ""]}, rank]}
    created = {"$eq": [{"$size": {"$objectToArray": "$$ROOT"}}, 1]}  # an upsert: only its _id
    merged = {
        "$mergeObjects": [
            "$$ROOT",
            {"$literal": fields},  # literal: a value such as a path may start with "$"
            {"$cond": [created, {"$literal": on_insert}, {}]},
            *([computed] if computed else []),
        ]
    }
    return UpdateOne({"_id": doc_id}, [{"$replaceWith": {"$cond": [newer, merged, "$$ROOT"]}}], upsert=True)


def _newest(preds: Iterable[Prediction], key) -> list[Prediction]:
    """Keep the most recent prediction per document id within one batch.

    Two predictions for one document in the same unordered bulk write could otherwise
    be applied in an order the server chooses.
    """
    newest: dict[str, Prediction] = {}
    for p in preds:
        doc_id = key(p)
        if doc_id not in newest or recency(p) > recency(newest[doc_id]):
            newest[doc_id] = p
    return list(newest.values())


def prediction_ops(
    preds: Iterable[Prediction], stored_at: datetime, token: str | None = None
) -> dict[str, list[Any]]:
    """Updates for one batch of predictions, one unordered bulk write per collection.

    Keyed so that redelivery rewrites in place, and conditional on :func:`recency` so
    that a late redelivery (at least once) of an older result never replaces a newer
    one: ``images`` keeps the latest prediction of any model, ``predictions`` the latest
    of each (image, model, version). User state (``hidden``, ``feedback``) is only
    ever set on insert or by the user. A created document carries ``token``, the batch's
    tally token (:mod:`imgflow.tally`); ``versions`` names the model version of each
    ``predictions`` update, in order, to count the ones that created a document.
    """
    preds = list(preds)
    tally = {"tally": token} if token else {}
    predictions: list[UpdateOne] = []
    versions: list[tuple[str, str]] = []
    images: list[UpdateOne] = []
    for p in _newest(preds, lambda p: prediction_id(p.image_id, p.model, p.model_version)):
        result = _result(p)
        versions.append((p.model, p.model_version))
        predictions.append(
            _write_if_newer(
                prediction_id(p.image_id, p.model, p.model_version),
                {
                    "image_id": p.image_id,
                    **result,
                    "inference_ms": p.inference_ms,
                    "batch_size": p.batch_size,
                    "path": p.path,
                    "source": p.source,
                    "replay_id": p.replay_id,
                    "submitted_at": when(p.submitted_at),
                    "stored_at": stored_at,
                },
                tally,
                "rank",
            )
        )
    for p in _newest(preds, lambda p: p.image_id):
        meta = p.meta
        images.append(
            _write_if_newer(
                p.image_id,
                {
                    "image_id": p.image_id,
                    "path": p.path,
                    "source": p.source,
                    "file_name": meta.file_name,
                    "width": meta.width,
                    "height": meta.height,
                    "format": meta.format,
                    "bytes": meta.bytes,
                    "sha256": meta.sha256,
                    "submitted_at": when(p.submitted_at),
                    "prediction": _result(p, embeddings=False),
                    # Flattened copies serve the dashboard's indexed filters.
                    "label": p.label,
                    "score": p.score,
                    "model": p.model,
                    "model_version": p.model_version,
                    "updated_at": stored_at,
                    "attrs": p.attrs,
                },
                {"created_at": stored_at, "hidden": False, **tally},
                "prediction.rank",
                # The label a person sees (a correction wins), one indexed field to filter by.
                {"elabel": {"$ifNull": ["$feedback.label", {"$literal": p.label}]}},
            )
        )
    return {"predictions": predictions, "images": images, "versions": versions}


def _result(p: Prediction, embeddings: bool = True) -> dict[str, Any]:
    """A prediction as stored, with the details its kind of model adds (models/answers.py;
    ``embeddings``: with their vectors, which only ``predictions`` keeps: ``images`` shows
    the details, it does not search them)."""
    return {
        "label": p.label,
        "score": p.score,
        "top_k": p.top_k,
        "model": p.model,
        "model_version": p.model_version,
        "requested_at": when(p.submitted_at),
        "predicted_at": when(p.predicted_at),
        "rank": recency(p),
        **stored_details({name: getattr(p, name) for name in DETAIL_FIELDS}, full=embeddings),
    }


def failure_ops(failures: Iterable[Failure], token: str | None = None) -> list[UpdateOne]:
    """One document per failed image; a repeated failure updates it (a new one carries ``token``)."""
    ops = []
    for f in failures:
        ops.append(
            UpdateOne(
                {"_id": f.image_id},
                {
                    "$set": {
                        "image_id": f.image_id,
                        "stage": f.stage,
                        "kind": f.kind,
                        "message": f.message,
                        "path": f.path,
                        "source": f.source,
                        "topic": f.topic,
                        "partition": f.partition,
                        "offset": f.offset,
                        "model": f.model,
                        "replay_id": f.replay_id,
                        "submitted_at": when(f.submitted_at),
                        "failed_at": when(f.failed_at),
                    },
                    "$setOnInsert": {
                        "first_failed_at": when(f.failed_at),
                        **({"tally": token} if token else {}),
                    },
                },
                upsert=True,
            )
        )
    return ops


def write_predictions(db: Any, tally: Tally, preds: list[Prediction], stored_at: datetime) -> None:
    """Store one batch as the sink does, with its counters (synchronous pymongo).

    Results upserted in both collections; failures of these images (a retried dead
    letter that now succeeded) marked ``gone`` and counted out, then deleted; the
    batch's totals settled once (:mod:`imgflow.tally`); filter choices and the
    per-interval rates (:mod:`imgflow.rates`) updated.
    """
    token = tally.begin()
    ops = prediction_ops(preds, stored_at, token)
    written = db.predictions.bulk_write(ops["predictions"], ordered=False)
    created = db.images.bulk_write(ops["images"], ordered=False)
    ids = list({p.image_id for p in preds})
    resolved = db.failures.update_many(
        {"_id": {"$in": ids}, "gone": {"$exists": False}}, {"$set": {"gone": token}}
    )
    deltas: Counter[str] = Counter({IMAGES: created.upserted_count, FAILURES: -resolved.modified_count})
    for index in written.upserted_ids:
        deltas[predictions_key(*ops["versions"][index])] += 1
    tally.settle(deltas, first_at=stored_at)
    if resolved.modified_count:
        db.failures.delete_many({"gone": token})
    note_choices(db, choices_of(preds))
    rates.record(db, stored_at, stored=[p.submitted_at for p in preds])


def write_failures(db: Any, tally: Tally, failures: list[Failure]) -> None:
    """Store dead letters as the dead-letter sink does, with their counter and rate."""
    token = tally.begin()
    created = db.failures.bulk_write(failure_ops(failures, token), ordered=False)
    tally.settle({FAILURES: created.upserted_count})
    rates.record_failures(db, [f.failed_at for f in failures])


#: Filter choices already recorded by this process, per database (a few labels, sources, models).
_known_choices: dict[tuple[int, str], set[tuple[str, str]]] = {}


def choices_of(preds: Iterable[Prediction]) -> set[tuple[str, str]]:
    found = set()
    for p in preds:
        found.add(("label", p.label))
        found.add(("model", f"{p.model}:{p.model_version}"))
        if p.source:
            found.add(("source", p.source))
    return found


def note_choices(db: Any, choices: set[tuple[str, str]]) -> None:
    """Remember each (kind, value): label, source, model version, once, for the dashboard's filters.

    Reading the choices from ``images`` (``distinct``) walks every document; this
    collection holds one document per value, written the first time a process sees it.
    """
    known = _known_choices.setdefault((id(db.client), db.name), set())
    new = choices - known
    if new:
        db.choices.bulk_write(
            [
                UpdateOne(
                    {"_id": f"{kind}:{value}"}, {"$setOnInsert": {"kind": kind, "value": value}}, upsert=True
                )
                for kind, value in sorted(new)
            ],
            ordered=False,
        )
        known.update(new)


def ensure_indexes(db: Any) -> None:
    for indexes in (
        INDEXES,
        TALLY_INDEXES,
        {
            rates.COLLECTION: rates.INDEXES,
            tensors.COLLECTION: tensors.INDEXES,
            frames.COLLECTION: frames.INDEXES,
            people.COLLECTION: people.INDEXES,
        },
    ):
        for name, models in indexes.items():
            db[name].create_indexes(models)


class Store:
    """MongoDB access for the worker's sink agents.

    The writes run in a thread on a synchronous client: one batch is a few bulk writes
    and small counter updates in order, which keeps the event loop free meanwhile.
    """

    def __init__(self, url: str, db_name: str) -> None:
        # Journaled writes (imgflow/mongo.py): a database crash cannot undo a write whose
        # offsets were already committed. The sinks write with the synchronous client in a
        # thread; the web views and the watcher read with the asynchronous one.
        self.writer: Any = connect(url)
        self.client: Any = connect_async(url)
        self.db = self.client[db_name]
        self.sync_db = self.writer[db_name]
        self.results = Tally(self.sync_db, "sink")
        self.dead_letters = Tally(self.sync_db, "dead-letters")
        self._indexed = False
        self._indexing = asyncio.Lock()

    async def ensure_indexes(self) -> None:
        await asyncio.to_thread(ensure_indexes, self.sync_db)

    async def ready(self) -> None:
        """Indexes, and counters left unsettled by a crash, once before the first write.

        Retried while MongoDB is down.
        """
        if not self._indexed:
            async with self._indexing:
                if not self._indexed:
                    await retry("create indexes", self.ensure_indexes)
                    await retry("settle counters", partial(asyncio.to_thread, sweep, self.sync_db))
                    self._indexed = True

    async def write_predictions(self, preds: list[Prediction]) -> datetime:
        stored_at = datetime.now(UTC)
        await asyncio.to_thread(write_predictions, self.sync_db, self.results, preds, stored_at)
        return stored_at

    async def write_failures(self, failures: list[Failure]) -> None:
        await asyncio.to_thread(write_failures, self.sync_db, self.dead_letters, failures)

    async def close(self) -> None:
        await self.client.close()
        await asyncio.to_thread(self.writer.close)
