"""People's feedback on the results: hide, correct a label, retry a failure, export corrections.

Each edit is stored beside what the pipeline wrote, never over it, and says
who made it and when: ``hidden_by``, ``feedback.user``, ``feedback_cleared``,
and the retry's ``retried_by`` (written by ``lifecycle.failed.retry_failed``).
``by`` is the signed-in user (``pn.state.user``) or ``ANONYMOUS`` when the
dashboard runs without a login. The sink never touches these fields, so a
redelivered image keeps a person's label.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from dashboard.queries import as_utc
from imgflow.tally import CORRECTED, HIDDEN, Tally

#: Who an edit is recorded as when the dashboard runs without authentication.
ANONYMOUS = "anonymous"

#: The columns of the corrected-labels export, in order.
CORRECTION_FIELDS = [
    "image_id",
    "file_name",
    "path",
    "sha256",
    "label",
    "predicted_label",
    "score",
    "model",
    "model_version",
    "corrected_at",
    "hidden",
]


_tallies: dict[tuple[int, str], tuple[Tally, threading.Lock]] = {}
_tallies_lock = threading.Lock()


@contextmanager
def _counted_edit(db) -> Iterator[tuple[str, dict[str, int]]]:
    """One edit as one tally token (``imgflow.tally``): yields the token and the deltas to fill.

    The deltas are settled when the block ends, so the totals the dashboard shows stay
    exact; one writer per process and database, one edit at a time.
    """
    key = (id(db.client), db.name)
    with _tallies_lock:
        if key not in _tallies:
            _tallies[key] = (Tally(db, "dashboard"), threading.Lock())
        tally, lock = _tallies[key]
    with lock:
        deltas: dict[str, int] = {}
        token = tally.begin()
        yield token, deltas
        tally.settle(deltas)


def _exists(db, image_id: str) -> bool:
    return db.images.find_one({"_id": image_id}, {"_id": 1}) is not None


def set_hidden(db, image_id: str, hidden: bool, by: str) -> bool:
    """Hide an image from the gallery (or show it again); False if there is no such image."""
    hidden = bool(hidden)
    delta = 1 if hidden else -1
    with _counted_edit(db) as (token, deltas):
        result = db.images.update_one(
            {"_id": image_id, "hidden": {"$ne": True} if hidden else True},
            {
                "$set": {
                    "hidden": hidden,
                    "hidden_at": datetime.now(UTC),
                    "hidden_by": by,
                    "edit": {"t": token, "d": {HIDDEN: delta}},
                }
            },
        )
        if result.modified_count:
            deltas[HIDDEN] = delta
    return bool(result.matched_count) or _exists(db, image_id)


def correct_label(db, image_id: str, label: str, by: str) -> bool:
    """Store a person's label beside the model's (which it keeps); False if there is no such image."""
    doc = db.images.find_one({"_id": image_id}, {"label": 1, "model": 1, "model_version": 1})
    if doc is None:
        return False
    feedback = {
        "label": label,
        "at": datetime.now(UTC),
        "predicted_label": doc.get("label"),
        "model": doc.get("model"),
        "model_version": doc.get("model_version"),
        "user": by,
    }
    with _counted_edit(db) as (token, deltas):
        first = db.images.update_one(
            {"_id": image_id, "feedback.label": {"$exists": False}},
            {"$set": {"feedback": feedback, "elabel": label, "edit": {"t": token, "d": {CORRECTED: 1}}}},
        )
        if first.modified_count:
            deltas[CORRECTED] = 1
        else:  # a correction of a correction: still one corrected image
            db.images.update_one({"_id": image_id}, {"$set": {"feedback": feedback, "elabel": label}})
    db.choices.update_one(
        {"_id": f"label:{label}"}, {"$setOnInsert": {"kind": "label", "value": label}}, upsert=True
    )
    return True


def clear_correction(db, image_id: str, by: str) -> bool:
    """Drop a person's label (the model's shows again), remembering who dropped it."""
    with _counted_edit(db) as (token, deltas):
        cleared = {"user": by, "at": datetime.now(UTC)}
        result = db.images.update_one(
            {"_id": image_id, "feedback.label": {"$exists": True}},
            [
                {
                    "$set": {
                        "elabel": "$label",
                        "feedback_cleared": {"$literal": cleared},
                        "edit": {"$literal": {"t": token, "d": {CORRECTED: -1}}},
                    }
                },
                {"$unset": "feedback"},
            ],
        )
        if result.modified_count:
            deltas[CORRECTED] = -1
    return bool(result.matched_count) or _exists(db, image_id)


async def retry(image_ids: list[str] | None, settings: Any, by: str) -> int:
    """Send failed images back into the chain (all if ``image_ids`` is None); how many were sent.

    The same function as ``faust -A imgflow replay --failed-only``; imported
    here, not at module import, because it brings the Kafka client.
    """
    from lifecycle.failed import retry_failed

    return await retry_failed(image_ids, settings=settings, user=by)


#: Every time stored in ``feedback.at`` is after this: a range on its index finds corrections.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def corrections(db, newest: int | None = None) -> list[dict[str, Any]]:
    """Corrected labels with the model's label and version beside each (for retraining).

    All of them by image id (the export), or the ``newest`` corrections first (the view).
    A range on the ``feedback.at`` index: the cost follows the corrections, not the images.
    """
    from dashboard.queries import newest as newest_by

    query = {"feedback.at": {"$gt": EPOCH}}
    if newest is None:
        docs = db.images.find(query).sort([("_id", 1)])
    else:
        docs = newest_by(db.images, {"feedback.label": {"$exists": True}}, newest, field="feedback.at")
    rows = []
    for doc in docs:
        fb = doc.get("feedback") or {}
        at = as_utc(fb.get("at"))
        rows.append(
            {
                "image_id": doc["_id"],
                "file_name": doc.get("file_name"),
                "path": doc.get("path"),
                "sha256": doc.get("sha256"),
                "label": fb.get("label"),
                "predicted_label": doc.get("label"),
                "score": doc.get("score"),
                "model": doc.get("model"),
                "model_version": doc.get("model_version"),
                "corrected_at": at.isoformat() if at else None,
                "hidden": bool(doc.get("hidden")),
            }
        )
    return rows


#: A cell starting with one of these is a formula to a spreadsheet (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """Text a spreadsheet would run as a formula, quoted with a leading apostrophe (OWASP's advice)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def as_csv(rows: list[dict[str, Any]]) -> str:
    """The corrections as CSV; labels, paths and names are data, never formulas."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CORRECTION_FIELDS)
    writer.writeheader()
    writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def as_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)
