"""The dashboard's data: MongoDB queries, the workers' web views, image previews.

Two kinds of state, on purpose:

- ``LiveFeed``: ONE per dashboard process, shared by every browser session. A
  single background task (``start_shared_refresh`` -> ``pn.state.schedule_task``)
  asks the workers for ``GET /counts/`` and ``GET /health/`` and MongoDB for
  throughput, latency and a change stamp, every ``REFRESH_SECONDS``. Sessions
  only watch it, so ten open tabs cost the workers and MongoDB what one does.
- ``DataStore``: one per session. It holds that user's filters and runs the
  queries that depend on them (the gallery page, failures, comparisons) and the
  user's edits (hide, correct a label), re-querying only when the shared feed
  says the data changed.

Nothing here connects at import time: the MongoDB client is created on first
use, and settings are read then too.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import param
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

ALL = "(all)"
REFRESH_SECONDS = 2.0
TASK_NAME = "imgflow-dashboard-refresh"
THUMB_PX = 160
DETAIL_PX = 640
STATS_MINUTES = 5
HTTP_TIMEOUT = 3.0
#: Who an edit is recorded as when the dashboard runs without authentication.
ANONYMOUS = "anonymous"

#: Time-range presets of the filter, in seconds back from now (None: no limit).
TIME_RANGES: dict[str, float | None] = {
    "all time": None,
    "last 5 minutes": 5 * 60,
    "last 15 minutes": 15 * 60,
    "last hour": 3600,
    "last 24 hours": 24 * 3600,
    "last 7 days": 7 * 24 * 3600,
}

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


# --------------------------------------------------------------------------------------------------
# MongoDB access, lazily


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def get_db(url: str | None = None, name: str | None = None):
    """A pymongo database; the client is created on first use and shared per URL."""

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


def split_model_key(key: str) -> tuple[str, str]:
    """``"name:version"`` -> ``(name, version)``; the version is after the last colon."""
    name, sep, version = key.rpartition(":")
    if not sep:
        raise ValueError(f"model must be given as name:version, not {key!r}")
    return name, version


def effective_label(doc: dict[str, Any]) -> str | None:
    """The label a person should see: the corrected one if feedback exists."""
    feedback = doc.get("feedback") or {}
    return feedback.get("label") or doc.get("label")


def as_utc(value: datetime | None) -> datetime | None:
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
        name, version = split_model_key(model)
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


# --------------------------------------------------------------------------------------------------
# The workers' web views


def fetch_json(
    url: str, timeout: float = HTTP_TIMEOUT, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """GET ``url``; (status, parsed JSON). Raises OSError/ValueError when nobody answers sensibly.

    ``headers`` carry the workers' API token (``LiveFeed.worker_headers``) when one is set.
    """
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, None


def fetch_counts(
    urls: Iterable[str],
    windows: int = 30,
    timeout: float = HTTP_TIMEOUT,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Cluster-wide label counts from the first worker that answers ``GET /counts/``.

    Any worker answers for the whole cluster (it fans out to the owners), so
    one good answer is enough; the others are only tried when it fails.
    """
    errors: dict[str, str] = {}
    for url in urls:
        try:
            status, body = fetch_json(f"{url}/counts/?windows={windows}", timeout, headers)
        except (OSError, ValueError) as exc:
            errors[url] = f"{type(exc).__name__}: {exc}"
            continue
        if status == 200 and isinstance(body, dict) and "windows" in body:
            return {"ok": True, "url": url, "body": body, "errors": errors}
        errors[url] = f"HTTP {status}"
    return {"ok": False, "url": None, "body": None, "errors": errors}


def worker_health(
    urls: Iterable[str], timeout: float = 2.0, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per configured worker: up / starting / down, its models and lag."""
    rows = []
    for url in urls:
        row: dict[str, Any] = {"url": url, "status": "down", "models": [], "lag": None, "error": ""}
        try:
            status, body = fetch_json(f"{url}/health/", timeout, headers)
        except (OSError, ValueError) as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        else:
            body = body if isinstance(body, dict) else {}
            row["status"] = "ok" if status == 200 else str(body.get("status") or f"HTTP {status}")
            row["models"] = [model_key(m.get("name"), m.get("version")) for m in body.get("models") or []]
            row["lag"] = body.get("lag")
            row["stalled"] = body.get("stalled") or []
        rows.append(row)
    return rows


def current_window(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The window to draw as bars: the current one, or the newest if the current is empty."""
    if not body:
        return None
    current = body.get("current") or {}
    if current.get("total"):
        return current
    windows = body.get("windows") or []
    return windows[0] if windows else (current or None)


# --------------------------------------------------------------------------------------------------
# Throughput and latency from MongoDB timestamps


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) / 100)))
    return ordered[rank - 1]


def throughput(db, minutes: float = STATS_MINUTES, now: datetime | None = None, bucket: float = 10.0):
    """Images stored per second, failures per second and end-to-end latency over the last minutes.

    Uses the ``predictions`` collection (one document per stored prediction,
    replays included, ``stored_at`` set by the sink) and ``failures``
    (``failed_at``), so it covers every worker of the cluster.
    """
    now = now or datetime.now(UTC)
    span = minutes * 60.0
    since = now - timedelta(seconds=span)
    stored_times: list[float] = []
    latencies: list[float] = []
    for doc in db.predictions.find({"stored_at": {"$gte": since}}, {"stored_at": 1, "submitted_at": 1}):
        stored = as_utc(doc.get("stored_at"))
        if stored is None:
            continue
        stored_times.append(stored.timestamp())
        submitted = as_utc(doc.get("submitted_at"))
        if submitted is not None:
            latencies.append(max(0.0, (stored - submitted).total_seconds()))
    failed_times = [
        as_utc(d["failed_at"]).timestamp()
        for d in db.failures.find({"failed_at": {"$gte": since}}, {"failed_at": 1})
        if d.get("failed_at")
    ]
    end = now.timestamp()
    n_buckets = max(1, int(span // bucket))
    start = end - n_buckets * bucket
    stored_series = [0] * n_buckets
    failed_series = [0] * n_buckets
    for series, times in ((stored_series, stored_times), (failed_series, failed_times)):
        for t in times:
            i = int((t - start) // bucket)
            if 0 <= i < n_buckets:
                series[i] += 1
    return {
        "minutes": minutes,
        "stored": len(stored_times),
        "failed": len(failed_times),
        "stored_per_s": len(stored_times) / span,
        "failed_per_s": len(failed_times) / span,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "bucket": bucket,
        "series": {
            "t": [start + (i + 0.5) * bucket for i in range(n_buckets)],
            "stored_per_s": [n / bucket for n in stored_series],
            "failed_per_s": [n / bucket for n in failed_series],
        },
    }


def totals(db) -> dict[str, int]:
    return {
        "images": db.images.count_documents({}),
        "failures": db.failures.count_documents({}),
        "hidden": db.images.count_documents({"hidden": True}),
        "corrected": db.images.count_documents({"feedback.label": {"$exists": True}}),
    }


def data_stamp(db) -> tuple:
    """Changes whenever an image or failure is stored (or re-stored): the sessions' cue to re-query."""
    newest = db.images.find_one({}, {"updated_at": 1}, sort=[("updated_at", -1)])
    newest_failure = db.failures.find_one({}, {"failed_at": 1}, sort=[("failed_at", -1)])
    return (
        db.images.count_documents({}),
        newest and str(newest.get("updated_at")),
        db.failures.count_documents({}),
        newest_failure and str(newest_failure.get("failed_at")),
    )


# --------------------------------------------------------------------------------------------------
# The shared feed


class LiveFeed(param.Parameterized):
    """What every session shows live; refreshed by ONE task per process."""

    counts = param.Dict(default={}, doc="Last good GET /counts/ answer.")
    counts_url = param.String(default="", doc="The worker that gave it.")
    counts_error = param.String(default="", doc="Why no worker answered, if none did.")
    workers = param.List(default=[], doc="worker_health() rows.")
    stats = param.Dict(default={}, doc="throughput() plus totals().")
    db_error = param.String(default="")
    version = param.Integer(default=0, doc="Bumped when stored data or user state changed.")
    refreshed_at = param.Number(default=0.0, doc="Set at the end of every refresh; sessions watch it.")

    def __init__(
        self,
        db=None,
        worker_urls: list[str] | None = None,
        worker_headers: dict[str, str] | None = None,
        **params,
    ):
        super().__init__(**params)
        self._db = db
        self._worker_urls = worker_urls
        self._worker_headers = worker_headers
        self._stamp: tuple | None = None
        self._busy = False

    @property
    def db(self):
        if self._db is None:
            self._db = get_db()
        return self._db

    @property
    def worker_urls(self) -> list[str]:
        if self._worker_urls is None:
            from imgflow.settings import get_settings

            self._worker_urls = get_settings().worker_url_list
        return self._worker_urls

    @property
    def worker_headers(self) -> dict[str, str]:
        """``Authorization: Bearer`` when IMGFLOW_API_TOKEN is set (reads may be protected)."""
        if self._worker_headers is None:
            from imgflow.settings import get_settings
            from imgflow.web.auth import auth_headers

            self._worker_headers = auth_headers(get_settings())
        return self._worker_headers

    def collect(self) -> dict[str, Any]:
        """All the I/O of one refresh (blocking; run off the event loop)."""
        snap: dict[str, Any] = {}
        counts = fetch_counts(self.worker_urls, headers=self.worker_headers)
        snap["counts_ok"] = counts["ok"]
        snap["counts_url"] = counts["url"] or ""
        snap["counts_body"] = counts["body"]
        snap["counts_error"] = "; ".join(f"{u}: {e}" for u, e in counts["errors"].items())
        snap["workers"] = worker_health(self.worker_urls, headers=self.worker_headers)
        try:
            stats = throughput(self.db)
            stats["totals"] = totals(self.db)
            snap["stats"] = stats
            snap["stamp"] = data_stamp(self.db)
            snap["db_error"] = ""
        except Exception as exc:  # pymongo errors: show them, keep the last numbers
            snap["db_error"] = f"MongoDB: {type(exc).__name__}: {exc}"
        return snap

    def apply(self, snap: dict[str, Any]) -> None:
        """Publish a collected snapshot; watchers run once per refresh."""
        update: dict[str, Any] = {
            "workers": snap["workers"],
            "counts_error": "" if snap["counts_ok"] else (snap["counts_error"] or "no worker URL configured"),
            "db_error": snap["db_error"],
        }
        if snap["counts_ok"]:
            update["counts"] = snap["counts_body"]
            update["counts_url"] = snap["counts_url"]
        if "stats" in snap:
            update["stats"] = snap["stats"]
        if "stamp" in snap and snap["stamp"] != self._stamp:
            self._stamp = snap["stamp"]
            update["version"] = self.version + 1
        update["refreshed_at"] = time.time()
        self.param.update(**update)

    def refresh_now(self) -> None:
        """One synchronous refresh (tests, notebooks)."""
        self.apply(self.collect())

    async def refresh(self) -> None:
        """One refresh without blocking the server's event loop; overlapping calls are skipped."""
        if self._busy:
            return
        self._busy = True
        try:
            snap = await asyncio.to_thread(self.collect)
            self.apply(snap)
        except Exception:
            log.exception("dashboard refresh failed")
        finally:
            self._busy = False

    def touch(self) -> None:
        """A user changed data (hide, correct): tell every session now, not at the next tick."""
        self.param.update(version=self.version + 1, refreshed_at=time.time())


_feed: LiveFeed | None = None


def shared_feed() -> LiveFeed:
    global _feed
    if _feed is None:
        _feed = LiveFeed()
    return _feed


async def _refresh_shared() -> None:
    await shared_feed().refresh()


def start_shared_refresh(period: float = REFRESH_SECONDS) -> LiveFeed:
    """Schedule the one refresh task of this process (idempotent: later sessions reuse it)."""
    import panel as pn

    pn.state.schedule_task(TASK_NAME, _refresh_shared, period=timedelta(seconds=period))
    return shared_feed()


# --------------------------------------------------------------------------------------------------
# Previews: only from the configured folders, downscaled on the server


def safe_image_path(path: str | os.PathLike | None, roots: Iterable[Path]) -> Path | None:
    """The real path of ``path`` if it is a file inside one of ``roots``, else None.

    The same check as the decode stage (``imgflow.roots.inside_roots``): every
    symlink and ``..`` is resolved, so a link inside a root that points outside
    it, or a path that climbs out, is refused.
    """
    from imgflow.roots import inside_roots

    resolved = inside_roots(path, roots)
    if resolved is None or not resolved.is_file():
        return None
    return resolved


@lru_cache(maxsize=1024)
def _render(path: str, mtime_ns: int, size: int, px: int, max_bytes: int, max_pixels: int) -> bytes | None:
    from PIL import Image, ImageOps

    if size > max_bytes:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh, Image.open(fh) as im:
            if im.width * im.height > max_pixels:
                return None
            im.draft("RGB", (px, px))  # JPEG: decode at a reduced scale, much faster
            im.seek(0)
            out = ImageOps.exif_transpose(im)
            if out.mode in ("RGBA", "LA", "PA") or (out.mode == "P" and "transparency" in out.info):
                rgba = out.convert("RGBA")
                out = Image.new("RGB", rgba.size, (255, 255, 255))
                out.paste(rgba, mask=rgba.getchannel("A"))
            else:
                out = out.convert("RGB")
            out.thumbnail((px, px), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            out.save(buf, "JPEG", quality=85)
            return buf.getvalue()
    except Exception as exc:  # unreadable, truncated, not an image: no preview, never an error page
        log.debug("no preview for %s: %s", path, exc)
        return None


def preview_jpeg(
    path: str | None,
    roots: Iterable[Path],
    px: int = THUMB_PX,
    max_bytes: int = 50 * 2**20,
    max_pixels: int = 64_000_000,
) -> bytes | None:
    """JPEG bytes of the image at ``path`` scaled to fit ``px``, or None if not allowed/readable."""
    real = safe_image_path(path, roots)
    if real is None:
        return None
    try:
        st = real.stat()
    except OSError:
        return None
    return _render(str(real), st.st_mtime_ns, st.st_size, px, max_bytes, max_pixels)


# --------------------------------------------------------------------------------------------------
# Model comparison (imgflow.queries when present, else our own query)


def local_model_versions(db) -> list[str]:
    rows = db.predictions.aggregate([{"$group": {"_id": {"m": "$model", "v": "$model_version"}}}])
    return sorted(model_key(r["_id"]["m"], r["_id"]["v"]) for r in rows if r["_id"].get("m"))


def _score_of(top_k: list[dict[str, Any]] | None, label: str | None) -> float:
    return next((float(t["score"]) for t in top_k or [] if t.get("label") == label), 0.0)


def local_compare_models(db, model_a: str, model_b: str, limit: int = 20) -> dict[str, Any]:
    """Agreement, confusion and changed images of two model versions on their common images.

    The same answer as ``imgflow.queries.compare_models`` (used when that module
    is missing): ``delta`` is how much probability B took away from A's label.
    """
    proj = {"image_id": 1, "label": 1, "score": 1, "top_k": 1, "path": 1}
    results = []
    for key in (model_a, model_b):
        name, version = split_model_key(key)
        found = db.predictions.find({"model": name, "model_version": version}, proj)
        results.append({d["image_id"]: d for d in found})
    a, b = results
    common = sorted(a.keys() & b.keys())
    confusion: dict[str, dict[str, int]] = defaultdict(dict)
    changed = []
    agree = 0
    for image_id in common:
        pa, pb = a[image_id], b[image_id]
        la, lb = pa.get("label"), pb.get("label")
        confusion[la][lb] = confusion[la].get(lb, 0) + 1
        if la == lb:
            agree += 1
            continue
        score_a = float(pa.get("score") or 0)
        changed.append(
            {
                "image_id": image_id,
                "path": pa.get("path"),
                "label_a": la,
                "score_a": score_a,
                "label_b": lb,
                "score_b": float(pb.get("score") or 0),
                "delta": score_a - _score_of(pb.get("top_k"), la),
            }
        )
    changed.sort(key=lambda r: (-r["delta"], r["image_id"]))
    return {
        "model_a": model_a,
        "model_b": model_b,
        "images": len(common),
        "agree": agree,
        "agreement": agree / len(common) if common else None,
        "confusion": {k: dict(v) for k, v in sorted(confusion.items())},
        "changed": changed[:limit],
    }


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


def _queries():
    try:
        from imgflow import queries
    except ImportError:
        return None
    return queries


def model_versions(db) -> list[str]:
    queries = _queries()
    if queries is not None and hasattr(queries, "model_versions"):
        return list(queries.model_versions(db))
    return local_model_versions(db)


def compare_models(db, model_a: str, model_b: str, limit: int = 20) -> dict[str, Any]:
    queries = _queries()
    if queries is not None and hasattr(queries, "compare_models"):
        result = dict(queries.compare_models(db, model_a, model_b, limit=limit))
    else:
        result = local_compare_models(db, model_a, model_b, limit=limit)
    result["changed"] = with_file_names(db, [dict(r) for r in result.get("changed") or []])
    return result


# --------------------------------------------------------------------------------------------------
# One session's data


class DataStore(param.Parameterized):
    """One session's filters, the data they select, and the user's edits."""

    label = param.Selector(default=ALL, objects=[ALL], check_on_set=False, doc="Effective label.")
    score = param.Range(default=(0.0, 1.0), bounds=(0.0, 1.0), step=0.01)
    model = param.Selector(default=ALL, objects=[ALL], check_on_set=False, doc="name:version")
    time_range = param.Selector(default="all time", objects=list(TIME_RANGES))
    source = param.Selector(default=ALL, objects=[ALL], check_on_set=False)
    include_hidden = param.Boolean(default=False)
    follow = param.Boolean(default=True, doc="Re-query when new results arrive.")

    page = param.Integer(default=0, bounds=(0, None))
    page_size = param.Integer(default=24, bounds=(1, 500))

    images = param.List(default=[], doc="The current gallery page, newest first.")
    total = param.Integer(default=0, doc="Images matching the filters.")
    failures = param.List(default=[])
    versions = param.List(default=[], doc="name:version of every model with predictions.")
    selected = param.String(default=None, allow_None=True, doc="image_id shown in the detail view.")
    message = param.String(default="", doc="The outcome of the user's last action.")
    error = param.String(default="")
    user = param.String(
        default=None,
        allow_None=True,
        doc="Who is signed in (pn.state.user); edits are recorded as theirs. None: no authentication.",
    )

    def __init__(
        self,
        db=None,
        roots: list[Path] | None = None,
        feed: LiveFeed | None = None,
        settings: Any = None,
        **params,
    ):
        super().__init__(**params)
        self._db = db
        self._roots = roots
        self.feed = feed
        self.settings = settings  # imgflow Settings for retries; None: the environment's

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def db(self):
        if self._db is None:
            self._db = get_db()
        return self._db

    @property
    def roots(self) -> list[Path]:
        if self._roots is None:
            from imgflow.settings import get_settings

            self._roots = list(get_settings().preview_roots)
        return self._roots

    def _limits(self) -> tuple[int, int]:
        from imgflow.settings import get_settings

        settings = get_settings()
        return settings.max_file_bytes, settings.max_pixels

    @property
    def actor(self) -> str:
        """The name stored beside an edit: the signed-in user, or ``anonymous`` without auth."""
        return self.user or ANONYMOUS

    def _changed(self) -> None:
        """After an edit: this session re-queries now, the others via the shared feed."""
        self.load_images()
        if self.feed is not None:
            self.feed.touch()

    # -- queries ----------------------------------------------------------------------------------

    def query(self, now: datetime | None = None) -> dict[str, Any]:
        seconds = TIME_RANGES.get(self.time_range)
        since = (now or datetime.now(UTC)) - timedelta(seconds=seconds) if seconds else None
        return image_filter(
            label=self.label,
            score=tuple(self.score),
            model=self.model,
            since=since,
            source=self.source,
            include_hidden=self.include_hidden,
        )

    @param.depends("label", "score", "model", "time_range", "source", "include_hidden", watch=True)
    def _filters_changed(self) -> None:
        if self.page:
            self.page = 0  # triggers load_images
        else:
            self.load_images()

    @param.depends("page", "page_size", watch=True)
    def load_images(self) -> None:
        try:
            q = self.query()
            total = self.db.images.count_documents(q)
            pages = max(1, -(-total // self.page_size))
            if self.page >= pages:
                self.page = pages - 1
                return
            docs = list(
                self.db.images.find(q, IMAGE_FIELDS)
                .sort([("updated_at", -1), ("_id", 1)])
                .skip(self.page * self.page_size)
                .limit(self.page_size)
            )
        except PyMongoError as exc:
            self.error = f"MongoDB: {type(exc).__name__}: {exc}"
            return
        self.param.update(images=docs, total=total, error="")

    def load_failures(self, limit: int = 500) -> None:
        try:
            failures = list(self.db.failures.find({}).sort([("failed_at", -1), ("_id", 1)]).limit(limit))
        except PyMongoError as exc:
            self.error = f"MongoDB: {type(exc).__name__}: {exc}"
            return
        self.failures = failures

    def load_options(self) -> None:
        """Choices of the label, model and source filters, from what is stored."""
        try:
            labels = set(self.db.images.distinct("label")) | set(self.db.images.distinct("feedback.label"))
            sources = set(self.db.images.distinct("source"))
            models = {
                model_key(r["_id"]["m"], r["_id"]["v"])
                for r in self.db.images.aggregate(
                    [{"$group": {"_id": {"m": "$model", "v": "$model_version"}}}]
                )
                if r["_id"].get("m")
            }
            versions = model_versions(self.db)
        except PyMongoError as exc:
            self.error = f"MongoDB: {type(exc).__name__}: {exc}"
            return
        self.versions = versions
        for name, found in (("label", labels), ("model", models), ("source", sources)):
            current = getattr(self, name)
            options = sorted({str(v) for v in found if v} | ({current} - {ALL}))
            self.param[name].objects = [ALL, *options]

    def refresh(self) -> None:
        self.load_options()
        self.load_images()
        self.load_failures()

    def detail(self, image_id: str | None = None) -> dict[str, Any] | None:
        """One image with every model's prediction (newest first)."""
        image_id = image_id or self.selected
        if not image_id:
            return None
        doc = self.db.images.find_one({"_id": image_id})
        if doc is None:
            return None
        doc["predictions"] = list(
            self.db.predictions.find({"image_id": image_id}).sort([("predicted_at", -1), ("_id", 1)])
        )
        return doc

    def thumbnail(self, doc: dict[str, Any], px: int = THUMB_PX) -> bytes | None:
        max_bytes, max_pixels = self._limits()
        return preview_jpeg(doc.get("path"), self.roots, px, max_bytes, max_pixels)

    # -- edits ------------------------------------------------------------------------------------

    def set_hidden(self, image_id: str, hidden: bool = True) -> bool:
        result = self.db.images.update_one(
            {"_id": image_id},
            {"$set": {"hidden": bool(hidden), "hidden_at": datetime.now(UTC), "hidden_by": self.actor}},
        )
        if result.matched_count:
            self.message = f"{'Hidden' if hidden else 'Shown again'}: {image_id}"
            self._changed()
        return bool(result.matched_count)

    def correct_label(self, image_id: str, label: str) -> bool:
        """Store a person's label beside the model's; the gallery shows it from now on."""
        label = (label or "").strip()
        if not label:
            self.message = "Type a label first."
            return False
        doc = self.db.images.find_one({"_id": image_id}, {"label": 1, "model": 1, "model_version": 1})
        if doc is None:
            self.message = f"Unknown image {image_id}"
            return False
        feedback = {
            "label": label,
            "at": datetime.now(UTC),
            "predicted_label": doc.get("label"),
            "model": doc.get("model"),
            "model_version": doc.get("model_version"),
            "user": self.actor,
        }
        self.db.images.update_one({"_id": image_id}, {"$set": {"feedback": feedback}})
        self.message = f"Label of {image_id} set to {label!r}"
        self._changed()
        return True

    def clear_correction(self, image_id: str) -> bool:
        result = self.db.images.update_one(
            {"_id": image_id},
            {
                "$unset": {"feedback": ""},
                "$set": {"feedback_cleared": {"user": self.actor, "at": datetime.now(UTC)}},
            },
        )
        if result.matched_count:
            self.message = f"Correction removed: {image_id}"
            self._changed()
        return bool(result.matched_count)

    async def retry(self, image_ids: list[str] | None = None) -> int | None:
        """Send failed images back into the chain (all if ``image_ids`` is None)."""
        try:
            from imgflow.replay import retry_failed
        except ImportError:
            self.message = "Retry is not available: imgflow.replay.retry_failed is missing."
            return None
        try:
            sent = await retry_failed(image_ids, settings=self.settings, user=self.actor)
        except Exception as exc:
            self.message = f"Retry failed: {type(exc).__name__}: {exc}"
            return None
        self.message = f"Retry: {sent} image(s) sent back to the paths topic."
        self.load_failures()
        return sent

    # -- export -----------------------------------------------------------------------------------

    def corrections(self) -> list[dict[str, Any]]:
        rows = []
        for doc in self.db.images.find({"feedback.label": {"$exists": True}}).sort([("_id", 1)]):
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

    def export_csv(self) -> str:
        rows = self.corrections()
        buf = io.StringIO()
        fields = [
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
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def export_json(self) -> str:
        return json.dumps(self.corrections(), indent=2)

    # -- comparison -------------------------------------------------------------------------------

    def compare(self, model_a: str, model_b: str, limit: int = 20) -> dict[str, Any]:
        return compare_models(self.db, model_a, model_b, limit=limit)

    def label_counts(self) -> Counter:
        """Effective labels of the images matching the filters (for tests and summaries)."""
        docs = self.db.images.find(self.query(), {"label": 1, "feedback": 1})
        return Counter(effective_label(d) for d in docs)
