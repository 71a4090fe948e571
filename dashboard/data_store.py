"""One browser session's data: its filters, the page they select, and the user's edits.

The Panel "DataStore" pattern: filters are parameters, the data they select is
parameters too, and views (``dashboard.gallery``, ``dashboard.failures``, ...)
only watch them. A session re-queries when its own filters change or when the
shared feed (``dashboard.feed.LiveFeed``, one per process) says stored data
changed. The reads are ``dashboard.queries``, the edits ``dashboard.feedback``;
this class adds what a session needs around them: who is signed in, the
outcome message, and telling the other sessions.

Nothing here connects at import time: the MongoDB client is created on first
use, and settings are read then too.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import param
from pymongo.errors import PyMongoError

from dashboard import feedback
from dashboard.feed import LiveFeed
from dashboard.previews import THUMB_PX, faces_drawn, preview
from dashboard.queries import (
    ALL,
    LazyDb,
    compare_models,
    count_images,
    effective_label,
    filter_choices,
    image_detail,
    image_filter,
    image_page,
    recent_failures,
)
from dashboard.stats import counted
from imgflow.frames import FrameStore
from imgflow.originals import Origins
from imgflow.ranges import Cursor, Guide, cursor_of
from imgflow.rates import History
from imgflow.settings import get_settings
from imgflow.tally import model_versions_of

#: Time-range presets of the filter, in seconds back from now (None: no limit).
TIME_RANGES: dict[str, float | None] = {
    "all time": None,
    "last 5 minutes": 5 * 60,
    "last 15 minutes": 15 * 60,
    "last hour": 3600,
    "last 24 hours": 24 * 3600,
    "last 7 days": 7 * 24 * 3600,
}


class DataStore(LazyDb, param.Parameterized):
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
    total = param.Integer(default=0, doc="Images matching the filters (at least, if capped).")
    total_capped = param.Boolean(default=False, doc="more images may match than total (a capped count).")
    has_older = param.Boolean(default=False, doc="An older page exists.")
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
        self._cursors: list[Cursor | None] = [None]  # where each visited page starts
        self._cursor_key = ""

    # -- plumbing ---------------------------------------------------------------------------------

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
        return self.user or feedback.ANONYMOUS

    def _changed(self) -> None:
        """After an edit: this session re-queries now, the others via the shared feed."""
        if self.feed is not None:
            self.feed.touch()  # first: the shared answers of the old version are stale now
        self.load_images()

    def _failed(self, exc: PyMongoError) -> None:
        self.error = f"MongoDB: {type(exc).__name__}: {exc}"

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

    def filters(self) -> tuple:
        """The filters as one hashable value (a time range by its name, not its moving bounds)."""
        return (
            self.label,
            tuple(self.score),
            self.model,
            self.time_range,
            self.source,
            self.include_hidden,
            self.page_size,
        )

    @param.depends("label", "score", "model", "time_range", "source", "include_hidden", watch=True)
    def _filters_changed(self) -> None:
        if self.page:
            self.page = 0  # triggers load_images
        else:
            self.load_images()

    def _shared(self, key: Any, load):
        """One query for every session asking the same thing at the same data version."""
        return self.feed.shared(key, load) if self.feed is not None else load()

    def _counted(self) -> dict[str, Any]:
        counts = self.feed.counted if self.feed is not None else None
        return counts if counts is not None else self._shared("counted", lambda: counted(self.db))

    def _exact_total(self, counts: dict[str, Any]) -> int | None:
        """The match count from the counters, when the filters are only "hidden or not"."""
        if any(getattr(self, name) != ALL for name in ("label", "model", "source")):
            return None
        if tuple(self.score) != (0.0, 1.0) or TIME_RANGES.get(self.time_range):
            return None
        shown = counts["images"] - (0 if self.include_hidden else counts["hidden"])
        return max(0, int(shown))

    def _cursor(self, q: dict[str, Any], page: int, floor, guide: Guide | None = None) -> Cursor | None:
        """Where ``page`` starts: the previous page's last image (walking forward if needed)."""
        while len(self._cursors) <= page:
            known = len(self._cursors) - 1
            docs = image_page(
                self.db, q, self.page_size, after=self._cursors[known], floor=floor, guide=guide
            )
            if not docs:
                return None
            self._cursors.append(cursor_of(docs[-1]))
        return self._cursors[page]

    @param.depends("page", "page_size", watch=True)
    def load_images(self) -> None:
        """The current page: keyset pagination over time ranges (``dashboard.queries.newest``).

        Page 0 is always the newest; an older page starts after the previous page's last
        image, so it stays put while new results arrive. The match count is exact from the
        counters without filters, else counted up to ``COUNT_CAP`` (``count_images``).
        """
        try:
            q = self.query()
            key = repr(self.filters())
            if key != self._cursor_key or self.page == 0:
                self._cursors, self._cursor_key = [None], key
            counts = self._counted()
            floor = counts.get("first_at")
            guide = History(self.db, "stored").back  # where results lie in time, for this load
            after = self._cursor(q, self.page, floor, guide)
            if self.page and after is None:  # past the last page
                self.page = max(0, len(self._cursors) - 2)
                return
            docs = self._shared(
                ("page", key, after, self.page_size),
                lambda: image_page(self.db, q, self.page_size + 1, after=after, floor=floor, guide=guide),
            )
            exact = self._exact_total(counts)
            count = (
                (lambda: count_images(self.db, q, floor=floor, guide=guide))
                if exact is None
                else (lambda: (exact, False))
            )
            total, capped = self._shared(("count", key), count)
        except PyMongoError as exc:
            self._failed(exc)
            return
        more = len(docs) > self.page_size
        docs = docs[: self.page_size]
        if docs and len(self._cursors) == self.page + 1:
            self._cursors.append(cursor_of(docs[-1]))
        shown = self.page * self.page_size + len(docs)
        self.param.update(
            images=docs,
            total=max(total, shown),
            total_capped=capped,
            has_older=more,
            error="",
        )

    def load_failures(self, limit: int = 500) -> None:
        try:
            floor = self._counted().get("first_at")
            self.failures = self._shared(
                ("failures", limit),
                lambda: recent_failures(self.db, limit, floor, History(self.db, "failed").back),
            )
        except PyMongoError as exc:
            self._failed(exc)

    def load_options(self) -> None:
        """Choices of the label, model and source filters, from what was ever stored."""
        try:
            choices = self._shared("choices", lambda: filter_choices(self.db))
            versions = model_versions_of(self._counted())
        except PyMongoError as exc:
            self._failed(exc)
            return
        self.versions = versions
        for name, found in choices.items():
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
        return image_detail(self.db, image_id) if image_id else None

    def thumbnail(self, doc: dict[str, Any], px: int = THUMB_PX) -> bytes | None:
        max_bytes, max_pixels = self._limits()
        settings = get_settings()
        origins = Origins(self.roots, settings.object_roots, FrameStore(self.db, keep=1))
        return preview(doc.get("path"), origins, px, max_bytes, max_pixels)

    def picture(self, doc: dict[str, Any], px: int) -> bytes | None:
        """The detail view's preview: a face model's boxes and names drawn on it."""
        preview = self.thumbnail(doc, px)
        faces = (doc.get("prediction") or {}).get("faces")
        if preview is None or not faces or not doc.get("width"):
            return preview
        return faces_drawn(preview, faces, doc["width"])

    # -- edits (dashboard.feedback), recorded as self.actor ---------------------------------------

    def set_hidden(self, image_id: str, hidden: bool = True) -> bool:
        if not feedback.set_hidden(self.db, image_id, hidden, by=self.actor):
            return False
        self.message = f"{'Hidden' if hidden else 'Shown again'}: {image_id}"
        self._changed()
        return True

    def correct_label(self, image_id: str, label: str) -> bool:
        """Store a person's label beside the model's; the gallery shows it from now on."""
        label = (label or "").strip()
        if not label:
            self.message = "Type a label first."
            return False
        if not feedback.correct_label(self.db, image_id, label, by=self.actor):
            self.message = f"Unknown image {image_id}"
            return False
        self.message = f"Label of {image_id} set to {label!r}"
        self._changed()
        return True

    def clear_correction(self, image_id: str) -> bool:
        if not feedback.clear_correction(self.db, image_id, by=self.actor):
            return False
        self.message = f"Correction removed: {image_id}"
        self._changed()
        return True

    async def retry(self, image_ids: list[str] | None = None) -> int | None:
        """Send failed images back into the chain (all if ``image_ids`` is None)."""
        try:
            sent = await feedback.retry(image_ids, self.settings, by=self.actor)
        except Exception as exc:  # broker down, bad settings: say so on the page
            self.message = f"Retry failed: {type(exc).__name__}: {exc}"
            return None
        self.message = f"Retry: {sent} image(s) sent back to the paths topic."
        self.load_failures()
        return sent

    # -- export and comparison --------------------------------------------------------------------

    def corrections(self, newest: int | None = None) -> list[dict[str, Any]]:
        """All corrections (exports), or the ``newest`` (the view, shared by the sessions)."""
        if newest is None:
            return feedback.corrections(self.db)
        return self._shared(("corrections", newest), lambda: feedback.corrections(self.db, newest))

    def export_csv(self) -> str:
        return feedback.as_csv(self.corrections())

    def export_json(self) -> str:
        return feedback.as_json(self.corrections())

    def compare(self, model_a: str, model_b: str, limit: int = 20, progress=None) -> dict[str, Any]:
        return compare_models(self.db, model_a, model_b, limit=limit, progress=progress)

    def evaluations(self) -> list[dict[str, Any]]:
        """The newest stored evaluations (``faust -A imgflow evaluate``), shared by the sessions."""
        from lifecycle import evaluations

        return self._shared(("evaluations",), lambda: evaluations.newest(self.db))

    def feedback_accuracy(self) -> dict[str, Any]:
        """Each model version's accuracy against the corrections (``lifecycle.evaluations``)."""
        from lifecycle import evaluations

        return self._shared(("feedback_accuracy",), lambda: evaluations.feedback_accuracy(self.db))

    def label_counts(self) -> Counter:
        """Effective labels of the images matching the filters (for tests and summaries)."""
        docs = self.db.images.find(self.query(), {"label": 1, "feedback": 1})
        return Counter(effective_label(d) for d in docs)
