"""The dashboard's reads from MongoDB: the gallery's filter and page, its options, details, failures.

Plain functions of a pymongo database, so they are tested against the real
server without Panel. Model comparison is ``imgflow.queries`` (shared with the
CLI and the web views) plus the file names people recognise images by.

The client is created on first use, never at import: a dashboard that cannot
reach MongoDB still starts and shows the error.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
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
    """The MongoDB filter for the gallery (pure: easy to test, each part served by an index).

    ``label`` matches the effective label (``elabel``: a corrected label wins over the
    model's, kept by the sink and the edits). ``model`` ("name:version") matches the
    image's latest prediction.
    """
    clauses: list[dict[str, Any]] = []
    if label and label != ALL:
        clauses.append({"elabel": label})
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


#: A filtered match count stops here ("1,000+ images"): counting is a walk over the matches.
COUNT_CAP = 1000


def count_images(db, query: dict[str, Any], limit: int = COUNT_CAP) -> int:
    """Images matching ``query``, counted up to ``limit`` (the caller knows the exact totals)."""
    return db.images.count_documents(query, limit=limit)


#: A cursor: the (time, _id) of the last document of the previous page.
Cursor = tuple[datetime, str]

#: The first time range a page reads, in seconds; each next one is ``WIDEN`` times wider.
FIRST_SPAN = 4.0
WIDEN = 4.0
#: Ranges read before the rest is read at once (~4 s x 4^14: eight years back).
MAX_STEPS = 14


def _and(*clauses: dict[str, Any]) -> dict[str, Any]:
    parts = [c for c in clauses if c]
    return parts[0] if len(parts) == 1 else {"$and": parts}


def newest(
    collection,
    query: dict[str, Any],
    limit: int,
    *,
    field: str,
    after: Cursor | None = None,
    floor: datetime | None = None,
    now: datetime | None = None,
    projection: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` documents matching ``query``, newest by ``field`` first, then by ``_id``.

    Keyset pagination: ``after`` is the previous page's last (time, _id). The server walks
    a whole index for a sort with a limit (DESIGN section 9), so this reads time ranges
    on the indexed ``field`` instead: the newest ``FIRST_SPAN`` seconds, then ranges
    ``WIDEN`` times wider, until the page is full or the range passes ``floor`` (the
    oldest time anything was stored). The cost follows the page, not the history.
    """
    found: list[dict[str, Any]] = []
    order = [(field, -1), ("_id", 1)]
    if after is not None:  # the rest of the previous page's time (a batch shares one time)
        ties = _and(query, {field: after[0], "_id": {"$gt": after[1]}})
        found.extend(collection.find(ties, projection).sort([("_id", 1)]).limit(limit))
        top = after[0]
    else:
        top = (now or datetime.now(UTC)) + timedelta(seconds=FIRST_SPAN)
    span = FIRST_SPAN
    # Open above on the first page: a result stored by a worker whose clock runs ahead counts.
    upper: dict[str, Any] = {"$lt": top} if after is not None else {}
    for step in range(MAX_STEPS + 1):
        if len(found) >= limit:
            break
        low = top - timedelta(seconds=span)
        last = (floor is not None and low <= floor) or step == MAX_STEPS
        bounds = dict(upper) if last else {**upper, "$gte": low}
        cursor = collection.find(_and(query, {field: bounds} if bounds else {}), projection)
        found.extend(cursor.sort(order).limit(limit - len(found)))
        if last:
            break
        upper, top, span = {"$lt": low}, low, span * WIDEN
    return found[:limit]


def cursor_of(doc: dict[str, Any], field: str = "updated_at") -> Cursor:
    return (doc[field], doc["_id"])


def image_page(
    db,
    query: dict[str, Any],
    page_size: int,
    after: Cursor | None = None,
    floor: datetime | None = None,
) -> list[dict[str, Any]]:
    """One gallery page, newest first (``_id`` breaks ties so pages never overlap)."""
    return newest(
        db.images, query, page_size, field="updated_at", after=after, floor=floor, projection=IMAGE_FIELDS
    )


def filter_choices(db) -> dict[str, set[str]]:
    """What the label, model and source filters can choose from: what was ever stored.

    ``choices`` holds one small document per value (written by the sink and by label
    corrections), so this read does not grow with the images.
    """
    found: dict[str, set[str]] = {"label": set(), "model": set(), "source": set()}
    for doc in db.choices.find({}):
        if doc.get("kind") in found and doc.get("value"):
            found[doc["kind"]].add(str(doc["value"]))
    return found


def image_detail(db, image_id: str) -> dict[str, Any] | None:
    """One image with every model's prediction of it (newest first) under ``predictions``."""
    doc = db.images.find_one({"_id": image_id})
    if doc is None:
        return None
    doc["predictions"] = list(
        db.predictions.find({"image_id": image_id}).sort([("predicted_at", -1), ("_id", 1)])
    )
    return doc


def recent_failures(db, limit: int = 500, floor: datetime | None = None) -> list[dict[str, Any]]:
    """The newest dead letters (not the ones being removed because the image has succeeded since)."""
    return newest(db.failures, {"gone": {"$exists": False}}, limit, field="failed_at", floor=floor)


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


def compare_models(db, model_a: str, model_b: str, limit: int = 20, progress=None) -> dict[str, Any]:
    """``imgflow.queries.compare_models`` with file names on the changed images."""
    result = dict(compare_predictions(db, model_a, model_b, limit=limit, progress=progress))
    result["changed"] = with_file_names(db, [dict(r) for r in result.get("changed") or []])
    return result
