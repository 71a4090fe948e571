"""``faust -A imgflow upgrade-store``: a MongoDB stored by an older imgflow, brought up to date."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymongo import UpdateOne

from imgflow import rates
from imgflow.storage import ensure_indexes, note_choices


def upgrade(db: Any, progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Bring a database stored by an older imgflow up to date, once, with workers stopped.

    Reads the whole history (by image-id range, ``progress(done, total)`` after each):
    sets the effective label (``elabel``) where it is missing, notes every label, source
    and model version for the filters, then recounts the exact totals
    (:func:`imgflow.tally.rebuild`). Running it again changes nothing.
    """
    from imgflow.queries import id_ranges
    from imgflow.tally import rebuild

    ensure_indexes(db)
    # Rate intervals written before they carried their start as an indexed field (imgflow.rates).
    db[rates.COLLECTION].update_many({"t": {"$exists": False}}, [{"$set": {"t": "$_id"}}])
    ranges = id_ranges()
    fields = {"label": 1, "feedback.label": 1, "elabel": 1, "source": 1, "model": 1, "model_version": 1}
    labelled = 0
    for done, (low, high) in enumerate(ranges, 1):
        span: dict[str, Any] = {"$gte": low} if high is None else {"$gte": low, "$lt": high}
        ops, found = [], set()
        for doc in db.images.find({"_id": span}, fields):
            label = (doc.get("feedback") or {}).get("label") or doc.get("label")
            if label and doc.get("elabel") != label:
                ops.append(UpdateOne({"_id": doc["_id"]}, {"$set": {"elabel": label}}))
            for kind, value in (("label", doc.get("label")), ("label", label), ("source", doc.get("source"))):
                if value:
                    found.add((kind, str(value)))
            if doc.get("model") and doc.get("model_version"):
                found.add(("model", f"{doc['model']}:{doc['model_version']}"))
        if ops:
            labelled += db.images.bulk_write(ops, ordered=False).modified_count
        note_choices(db, found)
        if progress is not None:
            progress(done, len(ranges))
    return {"labelled": labelled, **rebuild(db)}
