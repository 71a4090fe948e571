"""The live numbers read from MongoDB: throughput, end-to-end latency, totals, a change stamp.

They come from ``predictions`` (one document per stored prediction, replays
included, ``stored_at`` set by the sink) and ``failures`` (``failed_at``), so
they cover every worker of the cluster. The shared feed (``dashboard.feed``)
reads them once per refresh for all sessions.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard.queries import as_utc

#: How far back the rates and percentiles look.
STATS_MINUTES = 5


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) / 100)))
    return ordered[rank - 1]


def throughput(
    db, minutes: float = STATS_MINUTES, now: datetime | None = None, bucket: float = 10.0
) -> dict[str, Any]:
    """Images stored per second, failures per second and end-to-end latency over the last minutes.

    Latency is publish -> stored: a prediction's ``stored_at`` (written with the MongoDB
    upsert) minus its ``submitted_at`` (set when the path was published), the definition
    ``make bench`` reports too.
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
