"""The whole page for one browser session, and its link to the process's shared feed.

``Dashboard`` builds every view over one session's ``DataStore`` and the
process's ``LiveFeed``. The feed is refreshed outside every session, so
``connect`` does not let its watchers touch a page directly: each session
applies the new numbers in its own next tick (``in_session``), at most one
queued at a time, as Bokeh requires of a document.
"""

from __future__ import annotations

from typing import Any

import panel as pn
import param
from panel.viewable import Viewer

from dashboard.camera import LiveTab
from dashboard.compare import CompareView
from dashboard.corrections import CorrectionsView
from dashboard.data_store import DataStore
from dashboard.detail import DetailView
from dashboard.failures import FailuresView
from dashboard.feed import LiveFeed
from dashboard.filters import FiltersView
from dashboard.format import esc
from dashboard.gallery import GalleryView
from dashboard.live import CountsView, ThroughputView
from dashboard.quality import QualityView


def in_session(doc, fn) -> None:
    """Run ``fn`` in a session's own context (document lock held), or now when there is none.

    The shared refresh runs outside every session; each session applies its
    updates on its own next tick, as Bokeh requires.
    """
    if doc is None or getattr(doc, "session_context", None) is None:
        fn()
        return

    def run() -> None:
        from panel.io.state import set_curdoc

        with set_curdoc(doc):
            fn()

    doc.add_next_tick_callback(run)


class Dashboard(Viewer):
    """Every view over one session's ``DataStore`` and the process's shared ``LiveFeed``."""

    store = param.ClassSelector(class_=DataStore)
    feed = param.ClassSelector(class_=LiveFeed)
    title = param.String(default="imgflow · live image classification")

    def __init__(self, **params):
        super().__init__(**params)
        self.store.refresh()
        self.counts = CountsView(feed=self.feed)
        self.throughput = ThroughputView(feed=self.feed)
        self.filters = FiltersView(store=self.store)
        self.gallery = GalleryView(store=self.store)
        self.detail = DetailView(store=self.store)
        self.failures = FailuresView(store=self.store)
        self.compare = CompareView(store=self.store)
        self.corrections = CorrectionsView(store=self.store)
        self.quality = QualityView(store=self.store)
        self.live = LiveTab(store=self.store)
        self._seen_version = self.feed.version
        self._pending = False
        self.tabs: pn.Tabs | None = None
        self.live_view: Any = None
        # The detail column takes room only while an image is open in it.
        self.detail_column = pn.Column(
            self.detail,
            width=460,
            css_classes=["detail-column"],
            visible=self.store.param.selected.rx.is_not(None),
        )

    @param.depends("store.follow", watch=True)
    def _resumed(self) -> None:
        if self.store.follow:  # "Live" switched back on: catch up now
            self._seen_version = self.feed.version
            self.store.refresh()

    def on_feed(self) -> None:
        """Apply the shared feed's latest snapshot to this session."""
        self._pending = False
        self.counts.update()
        self.throughput.update()
        if self.feed.version != self._seen_version and self.store.follow and not self.on_live_tab:
            # On the Live tab the gallery is not shown: it catches up when its tab opens again,
            # instead of re-reading and re-rendering behind every webcam result.
            self._seen_version = self.feed.version
            self.store.refresh()

    @property
    def on_live_tab(self) -> bool:
        return self.tabs is not None and self.tabs.active == self.tabs.objects.index(self.live_view)

    def _tab_changed(self, event: Any) -> None:
        if not self.on_live_tab and self.feed.version != self._seen_version and self.store.follow:
            self._seen_version = self.feed.version
            self.store.refresh()

    def connect(self, doc) -> None:
        """Follow the shared feed from this session until it closes (no poller of its own)."""

        def on_event(*_events) -> None:
            if not self._pending:  # coalesce: at most one queued update per session
                self._pending = True
                in_session(doc, self.on_feed)

        watcher = self.feed.param.watch(on_event, ["refreshed_at"])

        def closed(_ctx) -> None:
            self.feed.param.unwatch(watcher)
            self.live.stop()

        if doc is not None:
            doc.on_session_destroyed(closed)

    def main(self) -> list:
        tabs = pn.Tabs(
            (
                "Gallery",
                pn.Row(
                    pn.Column(self.gallery, sizing_mode="stretch_width"),
                    self.detail_column,
                    sizing_mode="stretch_width",
                ),
            ),
            ("Failures", self.failures),
            ("Model comparison", self.compare),
            ("Model quality", self.quality),
            ("Corrected labels", self.corrections),
            ("Live", self.live_panel()),
            sizing_mode="stretch_width",
            # Only the open tab is rendered and kept up to date: the Live tab's results are not
            # held up by the gallery's refresh behind it.
            dynamic=True,
        )
        self.tabs = tabs
        tabs.param.watch(self._tab_changed, "active")
        return [
            self.throughput,
            pn.Column(
                pn.Row(
                    pn.pane.Bokeh(self.counts.bars, sizing_mode="stretch_width"),
                    pn.pane.Bokeh(self.counts.lines, sizing_mode="stretch_width"),
                    pn.pane.Bokeh(self.throughput.rates, sizing_mode="stretch_width"),
                    sizing_mode="stretch_width",
                ),
                self.counts.caption,
                sizing_mode="stretch_width",
            ),
            tabs,
        ]

    def live_panel(self) -> Any:
        self.live_view = pn.panel(self.live)
        return self.live_view

    def signed_in(self) -> list[Any]:
        """Who the edits are recorded as, and a way out; nothing when there is no login."""
        if not self.store.user:
            return []
        logout = '<a href="/logout" style="color:inherit">log out</a>'
        text = f"signed in as <b>{esc(self.store.user)}</b> · {logout}"
        return [pn.pane.HTML(text, styles={"color": "white"}, align="center", width=260, height=30)]

    def template(self):
        return pn.template.FastListTemplate(
            title=self.title,
            header=self.signed_in(),
            sidebar=[self.filters],
            main=self.main(),
            sidebar_width=260,
            accent="#1565c0",
            header_background="#1f2933",
            theme_toggle=False,
        )

    def __panel__(self):
        return pn.Row(
            pn.Column(self.filters, width=260), pn.Column(*self.main(), sizing_mode="stretch_width")
        )
