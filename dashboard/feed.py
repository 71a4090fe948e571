"""The live feed: ONE per dashboard process, shared by every browser session.

A single background task (``start_shared_refresh`` -> ``pn.state.schedule_task``)
asks the workers for ``GET /counts/`` and ``GET /health/`` and MongoDB for
throughput, latency and a change stamp, every ``REFRESH_SECONDS``. Sessions
only watch it (``dashboard.board.Dashboard.connect``), so ten open tabs cost
the workers and MongoDB what one does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import param

from dashboard.queries import LazyDb
from dashboard.stats import counted, data_stamp, throughput, totals
from dashboard.workers import configured_headers, configured_urls, fetch_counts, worker_health
from imgflow import notices
from imgflow.tally import sweep

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
#: A writer's batch left unsettled this long is taken for a crash (a live one settles in ms).
SWEEP_GRACE_S = 30.0
TASK_NAME = "imgflow-dashboard-refresh"


class LiveFeed(LazyDb, param.Parameterized):
    """What every session shows live; refreshed by ONE task per process."""

    counts = param.Dict(default={}, doc="Last good GET /counts/ answer.")
    counts_url = param.String(default="", doc="The worker that gave it.")
    counts_error = param.String(default="", doc="Why no worker answered, if none did.")
    workers = param.List(default=[], doc="worker_health() rows.")
    stats = param.Dict(default={}, doc="throughput() plus totals().")
    db_error = param.String(default="")
    notices = param.List(default=[], doc="Warnings posted for the people watching (imgflow.notices).")
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
        self.counted: dict[str, Any] | None = None  # the last counters read (totals, first_at)
        self._shared: dict[Any, Any] = {}
        self._shared_version = -1
        self._shared_lock = threading.Lock()

    @property
    def worker_urls(self) -> list[str]:
        if self._worker_urls is None:
            self._worker_urls = configured_urls()
        return self._worker_urls

    @property
    def worker_headers(self) -> dict[str, str]:
        """The API token's headers for the workers (``dashboard.workers.configured_headers``)."""
        if self._worker_headers is None:
            self._worker_headers = configured_headers()
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
            # A writer that died between its writes and its counters: settle it from its documents.
            sweep(self.db, grace=SWEEP_GRACE_S)
            counts = counted(self.db)
            stats = throughput(self.db)
            stats["totals"] = totals(self.db, counts)
            snap["stats"] = stats
            snap["counts_at"] = counts
            snap["stamp"] = data_stamp(self.db, counts)
            snap["notices"] = [d.get("message", "") for d in notices.current(self.db)]
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
        if "notices" in snap:
            update["notices"] = snap["notices"]
        if "stats" in snap:
            update["stats"] = snap["stats"]
            self.counted = snap["counts_at"]
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

    def shared(self, key: Any, load: Callable[[], Any]) -> Any:
        """``load()``'s answer, computed once per data version for every session asking the same.

        Ten sessions on the same filters and page after a refresh cost one query; the
        answers are dropped when stored data changes (``version``).
        """
        with self._shared_lock:
            if self._shared_version != self.version:
                self._shared, self._shared_version = {}, self.version
            if key in self._shared:
                return self._shared[key]
        value = load()
        with self._shared_lock:
            if self._shared_version == self.version:
                self._shared[key] = value
        return value

    def touch(self) -> None:
        """A user changed data (hide, correct): tell every session now, not at the next tick."""
        self.counted = None  # re-read once, shared, by the next session that asks
        self.param.update(version=self.version + 1, refreshed_at=time.time())


_feed: LiveFeed | None = None


def shared_feed() -> LiveFeed:
    """This process's feed, created on first use (never at import)."""
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
