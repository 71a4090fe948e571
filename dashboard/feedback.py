"""People's feedback on the results: hide, correct a label, retry a failure, export corrections.

Each edit is stored beside what the pipeline wrote, never over it, and says
who made it and when: ``hidden_by``, ``feedback.user``, ``feedback_cleared``,
and the retry's ``retried_by`` (written by ``imgflow.replay.retry_failed``).
``by`` is the signed-in user (``pn.state.user``) or ``ANONYMOUS`` when the
dashboard runs without a login. The sink never touches these fields, so a
redelivered image keeps a person's label.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

from dashboard.queries import as_utc

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


def set_hidden(db, image_id: str, hidden: bool, by: str) -> bool:
    """Hide an image from the gallery (or show it again); False if there is no such image."""
    result = db.images.update_one(
        {"_id": image_id},
        {"$set": {"hidden": bool(hidden), "hidden_at": datetime.now(UTC), "hidden_by": by}},
    )
    return bool(result.matched_count)


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
    db.images.update_one({"_id": image_id}, {"$set": {"feedback": feedback}})
    return True


def clear_correction(db, image_id: str, by: str) -> bool:
    """Drop a person's label (the model's shows again), remembering who dropped it."""
    result = db.images.update_one(
        {"_id": image_id},
        {"$unset": {"feedback": ""}, "$set": {"feedback_cleared": {"user": by, "at": datetime.now(UTC)}}},
    )
    return bool(result.matched_count)


async def retry(image_ids: list[str] | None, settings: Any, by: str) -> int:
    """Send failed images back into the chain (all if ``image_ids`` is None); how many were sent.

    The same function as ``faust -A imgflow replay --failed-only``; imported
    here, not at module import, because it brings the Kafka client.
    """
    from imgflow.replay import retry_failed

    return await retry_failed(image_ids, settings=settings, user=by)


def corrections(db) -> list[dict[str, Any]]:
    """Every corrected label with the model's label and version beside it (for retraining)."""
    rows = []
    for doc in db.images.find({"feedback.label": {"$exists": True}}).sort([("_id", 1)]):
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


def as_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CORRECTION_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def as_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)
