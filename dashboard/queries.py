"""The dashboard's reads from MongoDB: the gallery's filter and page, its options, details, failures.

Plain functions of a pymongo database, so they are tested against the real
server without Panel. Model comparison is ``imgflow.queries`` (shared with the
CLI and the web views) plus the file names people recognise images by.

The client is created on first use, never at import: a dashboard that cannot
reach MongoDB still starts and shows the error.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from imgflow.queries import compare_models as compare_predictions
from imgflow.queries import split_model
from imgflow.ranges import FIRST_SPAN, Cursor, Guide, as_utc, matches, merge, newest, split, utc_now, walk

__all__ = ["as_utc"]  # used across the dashboard from here

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
    "elabel": 1,
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


class LazyDb:
    """The ``db`` of a dashboard object: the one given, or the configured one on first use
    (so that building the page opens no connection)."""

    _db: Any = None

    @property
    def db(self) -> Any:
        if self._db is None:
            self._db = get_db()
        return self._db


def model_key(model: str | None, version: str | None) -> str:
    return f"{model}:{version}"


def effective_label(doc: dict[str, Any]) -> str | None:
    """The label a person should see: the corrected one if feedback exists."""
    feedback = doc.get("feedback") or {}
    return feedback.get("label") or doc.get("label")


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
    return merge(*clauses)


#: A filtered match count stops here ("1,000+ images"): counting is a walk over the matches.
COUNT_CAP = 1000
#: Documents a count may read to check a filter no index serves (score): past them it says
#: what it found so far, with a "+" (e.g. "312+"), so its cost stays about one range of
#: ~1,000 results whatever share of them match.
SCAN_BUDGET = 1000


def count_images(
    db,
    query: dict[str, Any],
    limit: int = COUNT_CAP,
    floor: datetime | None = None,
    guide: Guide | None = None,
    budget: int = SCAN_BUDGET,
) -> tuple[int, bool]:
    """Images matching ``query``, newest first, and whether there may be more: counted up to
    ``limit``, and for a filter checked here up to ``budget`` documents read.

    The server counts every match of a query, limit or not, so the count walks time
    ranges back from now (as :func:`newest` does) and stops once ``limit`` are found:
    its cost follows the limit, not the history. The callers know the exact totals.
    """
    lead, rest = split(query, "updated_at")
    found = scanned = 0
    spent = False

    def count(q: dict[str, Any]) -> int:
        nonlocal found, scanned, spent
        if rest:
            docs = list(db.images.find(q, dict.fromkeys(rest, 1)))
            scanned += len(docs)
            n = sum(1 for d in docs if matches(d, rest))
        else:
            n = db.images.count_documents(q)
        found += n
        if rest and scanned >= budget and found < limit:
            spent = True
            return limit  # enough read: stops the walk
        return n

    top = utc_now() + timedelta(seconds=FIRST_SPAN)
    walk(lead, limit, count, field="updated_at", top=top, open_above=True, floor=floor, guide=guide)
    return min(found, limit), spent or found >= limit


def image_page(
    db,
    query: dict[str, Any],
    page_size: int,
    after: Cursor | None = None,
    floor: datetime | None = None,
    guide: Guide | None = None,
) -> list[dict[str, Any]]:
    """One gallery page, newest first (``_id`` breaks ties so pages never overlap)."""
    return newest(
        db.images,
        query,
        page_size,
        field="updated_at",
        after=after,
        floor=floor,
        projection=IMAGE_FIELDS,
        guide=guide,
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


def recent_failures(
    db, limit: int = 500, floor: datetime | None = None, guide: Guide | None = None
) -> list[dict[str, Any]]:
    """The newest dead letters (not the ones being removed because the image has succeeded since)."""
    return newest(
        db.failures, {"gone": {"$exists": False}}, limit, field="failed_at", floor=floor, guide=guide
    )


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
