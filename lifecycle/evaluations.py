"""Evaluations in MongoDB, and each model version's accuracy against people's corrections.

- ``evaluations``: one document per ``evaluate`` run (its whole JSON: a few KB),
  newest first by ``created_at``.
- Live accuracy: a label a person set on an image (``images.feedback.label``, the dashboard's
  correction) is ground truth for every model version that predicted that image
  (``predictions``). Reviewers mostly correct mistakes, so these figures are a lower bound
  unless correct results are confirmed too (setting the same label confirms it).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from pymongo import DESCENDING, IndexModel

COLLECTION = "evaluations"
INDEXES = [IndexModel([("created_at", DESCENDING)], name="newest")]
#: Image ids per ``$in`` query when joining corrections to predictions.
CHUNK = 500


def save(db: Any, evaluation: dict[str, Any]) -> str:
    """Store one evaluation; returns its id (``model|created_at``)."""
    db[COLLECTION].create_indexes(INDEXES)
    doc_id = f"{evaluation['model']}|{evaluation['created_at']}"
    db[COLLECTION].replace_one({"_id": doc_id}, {**evaluation, "_id": doc_id}, upsert=True)
    return doc_id


def newest(db: Any, limit: int = 20) -> list[dict[str, Any]]:
    """The latest evaluations, newest first, without their sweeps and curves (the summary)."""
    fields = {"binary.sweep": 0, "binary.roc": 0, "mistakes": 0}
    return list(db[COLLECTION].find({}, fields).sort("created_at", DESCENDING).limit(limit))


def corrections(db: Any) -> dict[str, tuple[str, datetime | None]]:
    """image id -> (corrected label, when), for every corrected image."""
    found: dict[str, tuple[str, datetime | None]] = {}
    for doc in db.images.find({"feedback.label": {"$exists": True}}, {"feedback": 1}):
        fb = doc.get("feedback") or {}
        if fb.get("label"):
            found[doc["_id"]] = (str(fb["label"]), fb.get("at"))
    return found


def feedback_accuracy(db: Any, model: str | None = None) -> dict[str, Any]:
    """Per model version: accuracy against corrections, per true label and per day.

    ``model``: ``name`` or ``name:version`` to keep (all versions otherwise). A version is
    judged on the corrected images it predicted; the day is the prediction's request day.
    """
    truth = corrections(db)
    per_version: dict[str, dict[str, Any]] = {}

    def entry(key: str) -> dict[str, Any]:
        if key not in per_version:
            per_version[key] = {
                "images": 0,
                "correct": 0,
                "by_label": defaultdict(lambda: [0, 0]),
                "by_day": defaultdict(lambda: [0, 0]),
            }
        return per_version[key]

    ids = list(truth)
    fields = {"image_id": 1, "label": 1, "model": 1, "model_version": 1, "submitted_at": 1}
    for start in range(0, len(ids), CHUNK):
        for doc in db.predictions.find({"image_id": {"$in": ids[start : start + CHUNK]}}, fields):
            key = f"{doc.get('model')}:{doc.get('model_version')}"
            if model and model not in (key, doc.get("model")):
                continue
            label, _ = truth[doc["image_id"]]
            right = int(doc.get("label") == label)
            e = entry(key)
            e["images"] += 1
            e["correct"] += right
            e["by_label"][label][0] += 1
            e["by_label"][label][1] += right
            at = doc.get("submitted_at")
            day = (at if isinstance(at, datetime) else datetime.fromtimestamp(0, UTC)).date().isoformat()
            e["by_day"][day][0] += 1
            e["by_day"][day][1] += right
    return {
        "corrected_images": len(truth),
        "models": {
            key: {
                "images": e["images"],
                "correct": e["correct"],
                "accuracy": e["correct"] / e["images"] if e["images"] else None,
                "by_label": {
                    label: {"images": n, "correct": c, "accuracy": c / n}
                    for label, (n, c) in sorted(e["by_label"].items())
                },
                "by_day": {
                    day: {"images": n, "correct": c, "accuracy": c / n}
                    for day, (n, c) in sorted(e["by_day"].items())
                },
            }
            for key, e in sorted(per_version.items())
        },
    }
