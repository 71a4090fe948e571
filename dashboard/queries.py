"""The dashboard's reads from MongoDB: the gallery's filter and page, its options, details, failures.

Plain functions of a pymongo database, so they are tested against the real
server without Panel. Model comparison is ``imgflow.queries`` (shared with the
CLI and the web views) plus the file names people recognise images by.

The client is created on first use, never at import: a dashboard that cannot
reach MongoDB still starts and shows the error.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgflow.queries import compare_models as compare_predictions
from imgflow.queries import split_model

#: The choice of a filter that selects everything.
ALL = "(all)"

#: What the gallery and the detail view read of an image (not its top-k or sha256 in the list).
IMAGE_FIELDS = {
    "_id": 1,
    "path": 1,
    "source": 1,
    "file_name": 1,
    "width": 1,
    "height": 1,
    "format": 1,
    "bytes": 1,
    "label": 1,
    "score": 1,
    "model": 1,
    "model_version": 1,
    "updated_at": 1,
    "created_at": 1,
    "submitted_at": 1,
    "hidden": 1,
    "feedback": 1,
}

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def get_db(url: str | None = None, name: str | None = None):
    """A pymongo database; one client per URL for the whole process, created on first use."""
    from imgflow.mongo import connect

    if url is None or name is None:
        from imgflow.settings import get_settings

        settings = get_settings()
        url = url or settings.mongo_url
        name = name or settings.mongo_db
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            # A page waits less than a command for a missing server.
            client = connect(url, serverSelectionTimeoutMS=3000, connectTimeoutMS=3000)
            _clients[url] = client
    return client[name]


def model_key(model: str | None, version: str | None) -> str:
    return f"{model}:{version}"


def effective_label(doc: dict[str, Any]) -> str | None:
    """The label a person should see: the corrected one if feedback exists."""
    feedback = doc.get("feedback") or {}
    return feedback.get("label") or doc.get("label")


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (a client without ``tz_aware`` returns naive ones)."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def image_filter(
    *,
    label: str | None = None,
    score: tuple[float, float] | None = None,
    model: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str | None = None,
    include_hidden: bool = False,
) -> dict[str, Any]:
    """The MongoDB filter for the gallery (pure: easy to test, served by the indexes).

    ``label`` matches the effective label: a corrected label wins over the model's.
    ``model`` ("name:version") matches the image's latest prediction.
    """
    clauses: list[dict[str, Any]] = []
    if label and label != ALL:
        clauses.append(
            {"$or": [{"feedback.label": label}, {"label": label, "feedback.label": {"$exists": False}}]}
        )
    if score is not None:
        low, high = score
        if low > 0 or high < 1:
            clauses.append({"score": {"$gte": float(low), "$lte": float(high)}})
    if model and model != ALL:
        name, version = split_model(model)
        clauses.append({"model": name, "model_version": version})
    if since is not None or until is not None:
        span: dict[str, Any] = {}
        if since is not None:
            span["$gte"] = since
        if until is not None:
            span["$lte"] = until
        clauses.append({"updated_at": span})
    if source and source != ALL:
        clauses.append({"source": source})
    if not include_hidden:
        clauses.append({"hidden": {"$ne": True}})
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def count_images(db, query: dict[str, Any]) -> int:
    return db.images.count_documents(query)


def image_page(db, query: dict[str, Any], page: int, page_size: int) -> list[dict[str, Any]]:
    """One gallery page, newest first (``_id`` breaks ties so pages never overlap)."""
    return list(
        db.images.find(query, IMAGE_FIELDS)
        .sort([("updated_at", -1), ("_id", 1)])
        .skip(page * page_size)
        .limit(page_size)
    )


def filter_choices(db) -> dict[str, set[str]]:
    """What the label, model and source filters can choose from: what is stored."""
    labels = set(db.images.distinct("label")) | set(db.images.distinct("feedback.label"))
    sources = set(db.images.distinct("source"))
    models = {
        model_key(r["_id"]["m"], r["_id"]["v"])
        for r in db.images.aggregate([{"$group": {"_id": {"m": "$model", "v": "$model_version"}}}])
        if r["_id"].get("m")
    }
    return {"label": labels, "model": models, "source": sources}


def image_detail(db, image_id: str) -> dict[str, Any] | None:
    """One image with every model's prediction of it (newest first) under ``predictions``."""
    doc = db.images.find_one({"_id": image_id})
    if doc is None:
        return None
    doc["predictions"] = list(
        db.predictions.find({"image_id": image_id}).sort([("predicted_at", -1), ("_id", 1)])
    )
    return doc


def recent_failures(db, limit: int = 500) -> list[dict[str, Any]]:
    return list(db.failures.find({}).sort([("failed_at", -1), ("_id", 1)]).limit(limit))


def with_file_names(db, changed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each changed image's file name (from ``images``) for people to recognise it."""
    missing = [r["image_id"] for r in changed if not r.get("file_name")]
    names = {}
    if missing:
        docs = db.images.find({"_id": {"$in": missing}}, {"file_name": 1})
        names = {d["_id"]: d.get("file_name") for d in docs}
    for row in changed:
        if not row.get("file_name"):
            row["file_name"] = names.get(row["image_id"]) or Path(str(row.get("path") or "")).name or None
    return changed


def compare_models(db, model_a: str, model_b: str, limit: int = 20) -> dict[str, Any]:
    """``imgflow.queries.compare_models`` with file names on the changed images."""
    result = dict(compare_predictions(db, model_a, model_b, limit=limit))
    result["changed"] = with_file_names(db, [dict(r) for r in result.get("changed") or []])
    return result
