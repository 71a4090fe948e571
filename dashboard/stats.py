"""The live numbers read from MongoDB: throughput, end-to-end latency, totals, a change stamp.

Each read is sized by what it shows, never by history: rates and latency
percentiles come from the sinks' per-interval documents (``imgflow.rates``, 30
for 5 minutes), totals and the change stamp from the writers' counters
(``imgflow.tally``, one small document per writer). They cover every worker of
the cluster. The shared feed (``dashboard.feed``) reads them once per refresh
for all sessions.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from imgflow import rates, tally

#: How far back the rates and percentiles look.
STATS_MINUTES = 5


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) / 100)))
    return ordered[rank - 1]


def throughput(db, minutes: float = STATS_MINUTES, now: datetime | None = None) -> dict[str, Any]:
    """Images stored and failed per second, and publish -> stored latency, over the last minutes.

    Latency is a result's storage time minus its request's ``submitted_at`` (when the
    path was published), the definition ``make bench`` reports too; percentiles come
    from a histogram with bins ~12% wide (``imgflow.rates``).
    """
    now = now or datetime.now(UTC)
    bucket = rates.BUCKET_SECONDS
    end = rates.bucket_of(now.timestamp()) + bucket  # the current interval counts, partly filled
    n_buckets = max(1, int(minutes * 60 // bucket))
    start = end - n_buckets * bucket
    docs = [d for d in rates.window(db, start) if start <= d["_id"] < end]
    stored_series = [0] * n_buckets
    failed_series = [0] * n_buckets
    for d in docs:
        i = (int(d["_id"]) - start) // bucket
        stored_series[i] += int(d.get("stored", 0))
        failed_series[i] += int(d.get("failed", 0))
    span = minutes * 60.0
    hist = rates.histogram(docs)
    stored, failed = sum(stored_series), sum(failed_series)
    return {
        "minutes": minutes,
        "stored": stored,
        "failed": failed,
        "stored_per_s": stored / span,
        "failed_per_s": failed / span,
        "p50": rates.percentile(hist, 50),
        "p95": rates.percentile(hist, 95),
        "bucket": bucket,
        "series": {
            "t": [start + (i + 0.5) * bucket for i in range(n_buckets)],
            "stored_per_s": [n / bucket for n in stored_series],
            "failed_per_s": [n / bucket for n in failed_series],
        },
    }


def counted(db) -> dict[str, Any]:
    """Every total, exact, with the change stamp: one read of the writers' counters."""
    return tally.totals(db)


def totals(db, counts: dict[str, Any] | None = None) -> dict[str, int]:
    """Images stored, failures, hidden and corrected images: exact, from the counters."""
    counts = counts or counted(db)
    return {k: int(counts[k]) for k in (tally.IMAGES, tally.FAILURES, tally.HIDDEN, tally.CORRECTED)}


def data_stamp(db, counts: dict[str, Any] | None = None) -> tuple:
    """Changes whenever anything is stored (or re-stored) or edited: the sessions' cue to re-query."""
    counts = counts or counted(db)
    return tuple(counts["stamp"])
