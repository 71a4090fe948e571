"""Rates and latency per interval, written by the sinks, read by the dashboard: sized by the window.

The dashboard shows images stored and failed per second, and publish -> stored
latency percentiles, over the last minutes, for the whole cluster. Reading every
prediction of those minutes (30,000 documents at 100 images/s) made a refresh
cost what the traffic was; instead every sink adds its batch to one document per
``BUCKET_SECONDS`` interval: counts, and a histogram of latencies in
logarithmic bins (``BINS_PER_DECADE`` per factor of ten, so a percentile read
back is within ~6% of the exact one). A refresh reads the window's documents:
30 for 5 minutes, whatever the load and the history.

These are statistics, not totals: a batch redelivered after a crash is counted
again (it was stored again). Exact totals are :mod:`imgflow.tally`'s.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel

COLLECTION = "rates"
#: Intervals are read by ``t`` (their start, = ``_id``): the embedded server scans the whole
#: collection for a range on ``_id`` (measured: 58 ms for 59 of 952 intervals; a day keeps
#: 8,640) but reads an indexed field's range only.
INDEXES = [IndexModel([("t", ASCENDING)], name="t")]
BUCKET_SECONDS = 10
BINS_PER_DECADE = 20
#: How long intervals are kept (the dashboard reads minutes back).
KEEP_SECONDS = 24 * 3600


def bucket_of(t: float) -> int:
    """The interval a time (epoch seconds) falls in: its start, a multiple of ``BUCKET_SECONDS``."""
    return int(t // BUCKET_SECONDS) * BUCKET_SECONDS


def bin_of(seconds: float) -> int:
    """The histogram bin of a latency: bin b covers [10^(b/20), 10^((b+1)/20)) milliseconds."""
    ms = max(seconds * 1000.0, 1.0)
    return math.floor(math.log10(ms) * BINS_PER_DECADE)


def bin_value(b: int) -> float:
    """A bin's representative latency in seconds (its geometric middle)."""
    return 10 ** ((b + 0.5) / BINS_PER_DECADE) / 1000.0


def record(db: Any, at: datetime, stored: Iterable[float] = ()) -> None:
    """Add one batch of results stored at ``at``, requested at the times in ``stored``."""
    submitted = list(stored)
    if not submitted:
        return
    now = at.timestamp()
    bins = Counter(bin_of(now - t) for t in submitted if t)
    inc: dict[str, int] = {"stored": len(submitted)}
    inc.update({f"lat.{b}": n for b, n in bins.items()})
    bucket = bucket_of(now)
    update = {
        "$inc": {k: v for k, v in inc.items() if v},
        "$min": {"first": now},
        "$max": {"last": now},
        "$set": {"t": bucket},
    }
    result = db[COLLECTION].update_one({"_id": bucket}, update, upsert=True)
    if result.upserted_id is not None:  # a new interval: drop the ones nobody reads any more
        prune(db, now - KEEP_SECONDS)


def record_failures(db: Any, failed_at: Iterable[float]) -> None:
    """Add failures at their times (one update per interval they fall in)."""
    by_bucket: dict[int, list[float]] = {}
    for t in failed_at:
        if t:
            by_bucket.setdefault(bucket_of(t), []).append(t)
    for bucket, times in sorted(by_bucket.items()):
        update = {
            "$inc": {"failed": len(times)},
            "$min": {"ffirst": min(times)},
            "$max": {"flast": max(times)},
            "$set": {"t": bucket},
        }
        db[COLLECTION].update_one({"_id": bucket}, update, upsert=True)


def window(db: Any, since: float) -> list[dict[str, Any]]:
    """The intervals that start at or after ``since`` (epoch seconds): one indexed range read."""
    return list(db[COLLECTION].find({"t": {"$gte": bucket_of(since)}}))


def percentile(histogram: Counter[int], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a latency histogram, in seconds; None when empty."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, min(total, math.ceil(q * total / 100)))
    seen = 0
    for b in sorted(histogram):
        seen += histogram[b]
        if seen >= rank:
            return bin_value(b)
    return None  # unreachable: seen reaches total


def histogram(docs: Iterable[dict[str, Any]]) -> Counter[int]:
    merged: Counter[int] = Counter()
    for doc in docs:
        for b, n in (doc.get("lat") or {}).items():
            merged[int(b)] += int(n)
    return merged


def prune(db: Any, older_than: float) -> int:
    """Drop intervals before ``older_than`` (epoch seconds); the dashboard reads minutes back."""
    return db[COLLECTION].delete_many({"t": {"$lt": bucket_of(older_than)}}).deleted_count


class History:
    """Where results lie in time, read from the intervals: to size a range so it holds about n.

    The server reads every document of an index range before it sorts and limits
    (docs/design.md §9), so the cost of "the newest 24" is what the range read holds.
    A range guessed by time alone holds nothing after a pause and a hundred thousand
    results after a busy hour; the intervals say how many results (``key``: "stored"
    or "failed") each 10 s held, so :meth:`back` can place the range's lower end where
    about ``n`` of them start. Intervals are read lazily, newest first, in windows
    that double, and kept for the life of this object (one page load).
    """

    FIRST_WINDOW = 600.0  # seconds of intervals read at first: 60 documents

    def __init__(self, db: Any, key: str = "stored", keep: float = KEEP_SECONDS) -> None:
        self.db, self.key, self.keep = db, key, keep
        self.buckets: list[tuple[int, int, float, float]] = []  # (start, count, first, last), newest first
        self.low: float | None = None  # intervals at or after this are in ``buckets``
        self.window = self.FIRST_WINDOW

    def back(self, top: float, n: float) -> float | None:
        """The time t (epoch seconds) such that about ``n`` results lie in ``[t, top)``.

        Within an interval results count as spread evenly between its first and last
        (kept by :func:`record`). None when the intervals kept (``KEEP_SECONDS``) end
        before ``n`` are found: the caller then widens by time.
        """
        if self.low is None:
            self.low = float(bucket_of(top) + BUCKET_SECONDS)
        got, i = 0.0, 0
        while True:
            while i < len(self.buckets):
                count, first, last = self.buckets[i][1:]
                i += 1
                if first >= top or count <= 0:
                    continue
                end = min(top, last)
                part = count * (end - first) / (last - first) if last > first else float(count)
                if part > 0 and got + part >= n:
                    return end - (end - first) * (n - got) / part
                got += part
            if not self._older(top):
                return None

    def _older(self, top: float) -> bool:
        """Read the next window of older intervals; False when past what is kept."""
        assert self.low is not None
        if self.low < top - self.keep:
            return False
        low = self.low - self.window
        docs = self.db[COLLECTION].find({"t": {"$gte": bucket_of(low), "$lt": bucket_of(self.low)}})
        first, last = ("first", "last") if self.key == "stored" else ("ffirst", "flast")
        found = sorted(
            (
                (
                    int(d["_id"]),
                    int(d.get(self.key) or 0),
                    float(d.get(first, d["_id"])),  # written before first/last were kept: all of it
                    float(d.get(last, d["_id"] + BUCKET_SECONDS)),
                )
                for d in docs
            ),
            reverse=True,
        )
        self.buckets.extend(found)
        self.low = float(bucket_of(low))
        self.window *= 2
        return True
