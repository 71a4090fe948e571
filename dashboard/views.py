"""The dashboard's views: param classes over a ``LiveFeed`` (shared) or a ``DataStore`` (per session).

Every view builds its widgets once and updates them in place (``update()`` /
``render()``), so a refresh changes numbers and data sources, not whole pages.
Views work without a server: tests create them, call their methods and read
their panes. ``Dashboard`` assembles them and, when served, connects one
session to the shared feed.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource, DatetimeTickFormatter, FactorRange, HoverTool, NumberFormatter
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from panel.viewable import Viewer

from dashboard.data_store import (
    ALL,
    DETAIL_PX,
    DataStore,
    LiveFeed,
    as_utc,
    current_window,
    effective_label,
    model_key,
)

TILE_CSS = """
:host { display: block; }
.tiles { display: flex; flex-wrap: wrap; gap: 8px; }
.tile { background: #fff; border: 1px solid #dfe3e8; border-radius: 6px; padding: 6px 12px;
        min-width: 118px; }
.tile .v { font-size: 22px; font-weight: 600; color: #1f2933; }
.tile .n { font-size: 11px; color: #52606d; text-transform: uppercase; letter-spacing: .03em; }
.tile.bad .v { color: #c62828; }
"""

CARD_CSS = """
:host { border: 1px solid #dfe3e8; border-radius: 6px; background: #fff; padding: 4px; }
:host(.selected) { border: 2px solid #1565c0; }
:host(.hidden-image) { opacity: .55; }
"""

TEXT_CSS = """
.label { font-weight: 600; font-size: 13px; color: #1f2933; overflow: hidden; text-overflow: ellipsis;
         white-space: nowrap; }
.label.corrected { color: #6a1b9a; }
.was { color: #8a939c; text-decoration: line-through; font-size: 11px; }
.meta { font-size: 11px; color: #52606d; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.badge { font-size: 10px; background: #f3e5f5; color: #6a1b9a; border-radius: 3px; padding: 0 4px; }
.badge.hid { background: #eceff1; color: #455a64; }
table.meta-table { border-collapse: collapse; font-size: 12px; }
table.meta-table td { padding: 1px 8px 1px 0; vertical-align: top; }
table.meta-table td:first-child { color: #52606d; white-space: nowrap; }
.ok { color: #2e7d32; } .down { color: #c62828; } .starting { color: #ef6c00; }
"""

PAIR_COLUMNS = ["label_a", "label_b", "images", "agree"]
CHANGED_COLUMNS = ["file_name", "label_a", "score_a", "label_b", "score_b", "delta", "image_id"]

IMG_CSS = """
img { object-fit: contain; background: #f1f3f5; border-radius: 4px; }
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt_time(value: datetime | None, with_date: bool = False) -> str:
    value = as_utc(value)
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC" if with_date else "%H:%M:%S UTC")


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def time_axis(fig) -> None:
    """Clock times on a datetime x axis at every zoom (no microsecond ticks for one point)."""
    fmt = "%H:%M:%S"
    fig.xaxis.formatter = DatetimeTickFormatter(
        microseconds=fmt,
        milliseconds=fmt,
        seconds=fmt,
        minsec=fmt,
        minutes="%H:%M",
        hourmin="%H:%M",
        hours="%H:%M",
    )
    fig.xaxis.ticker.desired_num_ticks = 4


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


# --------------------------------------------------------------------------------------------------
# Live counts


class CountsView(Viewer):
    """Bars: label counts of the current (or newest) window. Lines: counts per label over windows."""

    feed = param.ClassSelector(class_=LiveFeed)
    max_labels = param.Integer(default=12, bounds=(1, 50))
    max_lines = param.Integer(default=8, bounds=(1, 10))

    def __init__(self, **params):
        super().__init__(**params)
        self.bar_source = ColumnDataSource({"label": [], "count": []})
        self.line_source = ColumnDataSource({"xs": [], "ys": [], "label": [], "color": []})
        self.bars = figure(
            y_range=FactorRange(),
            height=250,
            title="Current window",
            toolbar_location=None,
            sizing_mode="stretch_width",
            x_axis_label="images",
        )
        self.bars.hbar(y="label", right="count", height=0.7, source=self.bar_source, color="#1565c0")
        self.bars.add_tools(HoverTool(tooltips=[("label", "@label"), ("images", "@count")]))
        self.bars.x_range.start = 0
        self.lines = figure(
            x_axis_type="datetime",
            height=250,
            title="Images per window, top labels",
            toolbar_location=None,
            sizing_mode="stretch_width",
        )
        self.lines.multi_line(
            xs="xs", ys="ys", line_color="color", line_width=2, legend_field="label", source=self.line_source
        )
        # Points too, so that a single window (or a label seen once) is visible.
        self.point_source = ColumnDataSource({"x": [], "y": [], "label": [], "color": []})
        self.lines.scatter("x", "y", color="color", size=6, source=self.point_source)
        tips = [("label", "@label"), ("images", "@y"), ("window", "@x{%H:%M:%S}")]
        self.lines.add_tools(HoverTool(tooltips=tips, formatters={"@x": "datetime"}))
        self.lines.y_range.start = 0
        time_axis(self.lines)
        legend = self.lines.legend[0]
        self.lines.center.remove(legend)
        legend.label_text_font_size = "10px"
        legend.spacing = 0
        self.lines.add_layout(legend, "right")
        self.caption = pn.pane.HTML(sizing_mode="stretch_width", margin=(0, 10))
        self._last: Any = None
        self.update()

    def bar_data(self) -> dict[str, list]:
        window = current_window(self.feed.counts)
        counts = (window or {}).get("counts") or {}
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.max_labels]
        top.reverse()  # bokeh draws factors bottom-up: the biggest bar goes on top
        return {"label": [k for k, _ in top], "count": [int(v) for _, v in top]}

    def line_data(self) -> dict[str, list]:
        windows = sorted((self.feed.counts or {}).get("windows") or [], key=lambda w: w["start"])
        if not windows:
            return {"xs": [], "ys": [], "label": [], "color": []}
        totals: dict[str, int] = {}
        for w in windows:
            for label, n in (w.get("counts") or {}).items():
                totals[label] = totals.get(label, 0) + int(n)
        top = sorted(totals, key=lambda k: (-totals[k], k))[: self.max_lines]
        xs = [w["start"] * 1000.0 for w in windows]
        data: dict[str, list] = {"xs": [xs], "ys": [[int(w.get("total") or 0) for w in windows]]}
        data["label"] = ["all labels"]
        data["color"] = ["#263238"]
        for i, label in enumerate(top):
            data["xs"].append(xs)
            data["ys"].append([int((w.get("counts") or {}).get(label, 0)) for w in windows])
            data["label"].append(label)
            data["color"].append(Category10_10[i % 10])
        return data

    def caption_html(self) -> str:
        counts = self.feed.counts or {}
        window = current_window(counts)
        if self.feed.counts_error and not counts:
            return f'<span class="down">No worker answered GET /counts/: {esc(self.feed.counts_error)}</span>'
        parts = []
        if window and window.get("start"):
            start = datetime.fromtimestamp(window["start"], UTC)
            end = datetime.fromtimestamp(window["end"], UTC)
            total = int(window.get("total") or 0)
            parts.append(f"window {fmt_time(start)} – {fmt_time(end)}: <b>{total}</b>")
        conf = counts.get("window") or {}
        if conf.get("seconds"):
            parts.append(f"{conf['seconds']:g} s windows")
        if self.feed.counts_url:
            parts.append(f"from {esc(self.feed.counts_url)}")
        if counts and not counts.get("complete", True):
            missing = counts.get("missing_partitions")
            parts.append(f'<span class="down">incomplete: partitions {esc(missing)} missing</span>')
        if self.feed.counts_error:
            parts.append(f'<span class="starting">last refresh failed: {esc(self.feed.counts_error)}</span>')
        return f'<div class="meta">{" · ".join(parts) or "no windows yet"}</div>'

    def update(self) -> None:
        bars, lines, caption = self.bar_data(), self.line_data(), self.caption_html()
        if (bars, lines, caption) == self._last:
            return
        self._last = (bars, lines, caption)
        self.bars.y_range.factors = bars["label"]
        self.bar_source.data = bars
        self.line_source.data = lines
        self.point_source.data = {
            "x": [x for xs in lines["xs"] for x in xs],
            "y": [y for ys in lines["ys"] for y in ys],
            "label": [lab for lab, xs in zip(lines["label"], lines["xs"], strict=True) for _ in xs],
            "color": [c for c, xs in zip(lines["color"], lines["xs"], strict=True) for _ in xs],
        }
        seconds = ((self.feed.counts or {}).get("window") or {}).get("seconds") or 60
        self.lines.x_range.default_span = 4 * seconds * 1000  # one window alone: a few windows wide
        self.caption.object = f"<style>{TEXT_CSS}</style>{caption}"

    def __panel__(self):
        return pn.Column(
            pn.Row(
                pn.pane.Bokeh(self.bars, sizing_mode="stretch_width"),
                pn.pane.Bokeh(self.lines, sizing_mode="stretch_width"),
                sizing_mode="stretch_width",
            ),
            self.caption,
            sizing_mode="stretch_width",
        )


# --------------------------------------------------------------------------------------------------
# Throughput and latency


class ThroughputView(Viewer):
    """KPI tiles (images/s, failures/s, p50/p95 end-to-end, totals), a rate chart and worker status."""

    feed = param.ClassSelector(class_=LiveFeed)

    def __init__(self, **params):
        super().__init__(**params)
        self.tiles = pn.pane.HTML(sizing_mode="stretch_width", stylesheets=[TILE_CSS], margin=(5, 10))
        self.workers = pn.pane.HTML(sizing_mode="stretch_width", margin=(0, 10))
        self.rate_source = ColumnDataSource({"t": [], "stored_per_s": [], "failed_per_s": []})
        self.rates = figure(
            x_axis_type="datetime",
            height=250,
            title="Throughput (images/s, 10 s buckets)",
            toolbar_location=None,
            sizing_mode="stretch_width",
        )
        self.rates.line("t", "stored_per_s", source=self.rate_source, color="#1565c0", legend_label="stored")
        self.rates.line("t", "failed_per_s", source=self.rate_source, color="#c62828", legend_label="failed")
        self.rates.legend.location = "top_left"
        self.rates.legend.label_text_font_size = "10px"
        self.rates.y_range.start = 0
        time_axis(self.rates)
        self._last: Any = None
        self.update()

    def kpis(self) -> list[tuple[str, str, bool]]:
        """(name, value, is_bad) per tile."""
        stats = self.feed.stats or {}
        totals = stats.get("totals") or {}
        minutes = stats.get("minutes", 5)

        def rate(key: str) -> str:
            return "—" if key not in stats else f"{stats[key]:.2f}"

        return [
            (f"images/s stored ({minutes:g} min)", rate("stored_per_s"), False),
            (f"failures/s ({minutes:g} min)", rate("failed_per_s"), bool(stats.get("failed"))),
            ("p50 end-to-end", fmt_seconds(stats.get("p50")), False),
            ("p95 end-to-end", fmt_seconds(stats.get("p95")), False),
            ("images stored", str(totals.get("images", "—")), False),
            ("failures", str(totals.get("failures", "—")), bool(totals.get("failures"))),
            ("corrected labels", str(totals.get("corrected", "—")), False),
            ("hidden", str(totals.get("hidden", "—")), False),
        ]

    def tiles_html(self) -> str:
        tiles = "".join(
            f'<div class="tile{" bad" if bad else ""}"><div class="v">{esc(v)}</div>'
            f'<div class="n">{esc(n)}</div></div>'
            for n, v, bad in self.kpis()
        )
        return f'<div class="tiles">{tiles}</div>'

    def workers_html(self) -> str:
        rows = []
        for w in self.feed.workers:
            # degraded: a stalled partition (liveness check) is as urgent as a worker that is down.
            cls = {"ok": "ok", "down": "down", "degraded": "down"}.get(w["status"], "starting")
            detail = ", ".join(w.get("models") or []) or str(w.get("error") or "")[:80]
            if w.get("stalled"):
                detail += f"; stalled: {', '.join(w['stalled'])}"
            lag = "" if w.get("lag") is None else f", lag {w['lag']}"
            dot = f'<span class="{cls}">●</span>'
            rows.append(f"{dot} {esc(w['url'])} <b>{esc(w['status'])}</b> {esc(detail)}{lag}")
        refreshed = (
            datetime.fromtimestamp(self.feed.refreshed_at, UTC).strftime("%H:%M:%S UTC")
            if self.feed.refreshed_at
            else "—"
        )
        error = f' · <span class="down">{esc(self.feed.db_error)}</span>' if self.feed.db_error else ""
        body = " &nbsp; ".join(rows) or "no worker URLs configured (IMGFLOW_WORKER_URLS)"
        return f'<div class="meta">workers: {body} · refreshed {refreshed}{error}</div>'

    def update(self) -> None:
        series = (self.feed.stats or {}).get("series") or {"t": [], "stored_per_s": [], "failed_per_s": []}
        tiles, workers = self.tiles_html(), self.workers_html()
        if self._last != (tiles, series):
            self.tiles.object = tiles
            self.rate_source.data = {
                "t": [t * 1000.0 for t in series["t"]],
                "stored_per_s": series["stored_per_s"],
                "failed_per_s": series["failed_per_s"],
            }
            self._last = (tiles, series)
        self.workers.object = f"<style>{TEXT_CSS}</style>{workers}"

    def __panel__(self):
        return pn.Column(self.tiles, self.workers, sizing_mode="stretch_width")


# --------------------------------------------------------------------------------------------------
# Filters


class FiltersView(Viewer):
    store = param.ClassSelector(class_=DataStore)

    def __init__(self, **params):
        super().__init__(**params)
        s = self.store
        self.label = pn.widgets.Select.from_param(s.param.label, label="Label", css_classes=["filter-label"])
        self.score = pn.widgets.RangeSlider.from_param(s.param.score, label="Score", step=0.01)
        self.model = pn.widgets.Select.from_param(s.param.model, label="Model version")
        self.time_range = pn.widgets.Select.from_param(s.param.time_range, label="Time (stored)")
        self.source = pn.widgets.Select.from_param(s.param.source, label="Source")
        self.include_hidden = pn.widgets.Checkbox.from_param(s.param.include_hidden, label="Include hidden")
        self.follow = pn.widgets.Checkbox.from_param(s.param.follow, label="Live: show new results")
        self.reset = pn.widgets.Button(label="Reset filters", color="light")
        self.reset.on_click(self._reset)

    def _reset(self, _event=None) -> None:
        self.store.param.update(
            label=ALL, score=(0.0, 1.0), model=ALL, time_range="all time", source=ALL, include_hidden=False
        )

    def __panel__(self):
        return pn.Column(
            "### Filters",
            self.label,
            self.score,
            self.model,
            self.time_range,
            self.source,
            self.include_hidden,
            self.follow,
            self.reset,
            sizing_mode="stretch_width",
        )


# --------------------------------------------------------------------------------------------------
# Gallery and detail


class GalleryView(Viewer):
    """The newest predictions matching the filters, as cards with server-side thumbnails."""

    store = param.ClassSelector(class_=DataStore)
    card_width = param.Integer(default=184)

    def __init__(self, **params):
        super().__init__(**params)
        self.grid = pn.FlexBox(sizing_mode="stretch_width", gap="8px", css_classes=["imgflow-gallery"])
        self.summary = pn.pane.HTML(margin=(8, 10))
        self.newer = pn.widgets.Button(label="◀ Newer", width=90, color="light")
        self.older = pn.widgets.Button(label="Older ▶", width=90, color="light")
        self.newer.on_click(lambda _e: self._page(-1))
        self.older.on_click(lambda _e: self._page(+1))
        self.status = pn.pane.HTML(margin=(8, 10))
        self.cards: dict[str, pn.Column] = {}
        self._signature: Any = None
        self.store.param.watch(lambda *_: self.render(), ["images", "total", "selected"])
        self.store.param.watch(lambda *_: self._status(), ["message", "error"])
        self.render()

    def _page(self, step: int) -> None:
        self.store.page = max(0, self.store.page + step)

    def _status(self) -> None:
        error = f'<span class="down">{esc(self.store.error)}</span> ' if self.store.error else ""
        message = esc(self.store.message)
        self.status.object = f'<style>{TEXT_CSS}</style><div class="meta">{error}{message}</div>'

    def signature(self) -> tuple:
        return (
            self.store.total,
            self.store.page,
            self.store.selected,
            tuple(
                (
                    d["_id"],
                    effective_label(d),
                    bool(d.get("hidden")),
                    str(d.get("updated_at")),
                    str((d.get("feedback") or {}).get("at")),
                )
                for d in self.store.images
            ),
        )

    def card_text(self, doc: dict[str, Any]) -> str:
        label = effective_label(doc)
        feedback = doc.get("feedback") or {}
        if feedback.get("label"):
            head = (
                f'<div class="label corrected" title="corrected by a person">✎ {esc(label)}</div>'
                f'<div class="was">{esc(doc.get("label"))}</div>'
            )
        else:
            head = f'<div class="label" title="{esc(label)}">{esc(label)}</div>'
        score = doc.get("score")
        score_txt = "—" if score is None else f"{score:.2f}"
        hidden = ' <span class="badge hid">hidden</span>' if doc.get("hidden") else ""
        model = f"{esc(doc.get('model'))} {esc(doc.get('model_version'))}"
        return (
            f"<style>{TEXT_CSS}</style>{head}"
            f'<div class="meta">score <b>{score_txt}</b> · {fmt_time(doc.get("updated_at"))}{hidden}</div>'
            f'<div class="meta" title="{model}">{model}</div>'
            f'<div class="meta" title="{esc(doc.get("file_name"))}">{esc(doc.get("file_name"))}</div>'
        )

    def card(self, doc: dict[str, Any]) -> pn.Column:
        image_id = doc["_id"]
        thumb = self.store.thumbnail(doc)
        inner = self.card_width - 16
        if thumb:
            picture = pn.pane.JPG(
                thumb,
                width=inner,
                height=int(inner * 0.75),
                fixed_aspect=False,
                stylesheets=[IMG_CSS],
                margin=0,
            )
        else:
            picture = pn.pane.HTML(
                '<div style="height:100%;display:flex;align-items:center;justify-content:center;'
                'color:#8a939c;font-size:12px;background:#f1f3f5;border-radius:4px">no preview</div>',
                width=inner,
                height=int(inner * 0.75),
                margin=0,
            )
        details = pn.widgets.Button(label="Details", color="primary", width=80, margin=(2, 2))
        hidden = bool(doc.get("hidden"))
        hide = pn.widgets.Button(label="Unhide" if hidden else "Hide", color="light", width=80, margin=(2, 2))
        details.on_click(lambda _e, i=image_id: setattr(self.store, "selected", i))
        hide.on_click(lambda _e, i=image_id, h=hidden: self.store.set_hidden(i, not h))
        classes = ["imgflow-card"]
        if image_id == self.store.selected:
            classes.append("selected")
        if hidden:
            classes.append("hidden-image")
        return pn.Column(
            picture,
            pn.pane.HTML(self.card_text(doc), width=inner, margin=(4, 0, 0, 0)),
            pn.Row(details, hide, margin=0),
            width=self.card_width,
            css_classes=classes,
            stylesheets=[CARD_CSS],
            margin=0,
        )

    def summary_html(self) -> str:
        s = self.store
        if not s.total:
            return '<div class="meta">No images match the filters.</div>'
        first = s.page * s.page_size + 1
        last = first + len(s.images) - 1
        count = f'<b class="match-count">{s.total} images</b>'
        return f'<div class="meta">{count} match · showing {first}–{last}</div>'

    def render(self) -> None:
        signature = self.signature()
        if signature == self._signature:
            return
        self._signature = signature
        self.cards = {d["_id"]: self.card(d) for d in self.store.images}
        self.grid.objects = list(self.cards.values())
        self.summary.object = f"<style>{TEXT_CSS}</style>{self.summary_html()}"
        self.newer.disabled = self.store.page == 0
        self.older.disabled = (self.store.page + 1) * self.store.page_size >= self.store.total
        self._status()

    def __panel__(self):
        return pn.Column(
            pn.Row(self.summary, pn.layout.HSpacer(), self.newer, self.older, sizing_mode="stretch_width"),
            self.status,
            self.grid,
            sizing_mode="stretch_width",
        )


class DetailView(Viewer):
    """One image: larger preview, metadata, top-k chart, every model's result, hide and correct."""

    store = param.ClassSelector(class_=DataStore)

    def __init__(self, **params):
        super().__init__(**params)
        self.body = pn.Column(sizing_mode="stretch_width", css_classes=["imgflow-detail"])
        self.label_input = pn.widgets.TextInput(
            label="Correct label", placeholder="the right label", css_classes=["correct-label"]
        )
        self.save = pn.widgets.Button(label="Save label", color="primary", width=110)
        self.clear = pn.widgets.Button(label="Clear correction", color="light", width=130)
        self.hide = pn.widgets.Button(label="Hide", color="warning", width=90)
        self.close = pn.widgets.Button(label="Close", color="light", width=80)
        self.save.on_click(self._save)
        self.clear.on_click(self._clear)
        self.hide.on_click(self._toggle_hidden)
        self.close.on_click(lambda _e: setattr(self.store, "selected", None))
        self.doc: dict[str, Any] | None = None
        self.store.param.watch(lambda *_: self.render(), ["selected"])
        self.render()

    # actions -------------------------------------------------------------------------------------

    def _save(self, _event=None) -> None:
        if self.doc is None:
            return
        label = self.label_input.value_input or self.label_input.value
        if self.store.correct_label(self.doc["_id"], label):
            self.render()

    def _pick(self, label: str, _event=None) -> None:
        if self.doc is not None and self.store.correct_label(self.doc["_id"], label):
            self.render()

    def _clear(self, _event=None) -> None:
        if self.doc is not None and self.store.clear_correction(self.doc["_id"]):
            self.render()

    def _toggle_hidden(self, _event=None) -> None:
        if self.doc is not None and self.store.set_hidden(self.doc["_id"], not self.doc.get("hidden")):
            self.render()

    # rendering -----------------------------------------------------------------------------------

    def topk_figure(self, doc: dict[str, Any]):
        top_k = list((doc.get("prediction") or {}).get("top_k") or [])
        labels = [str(t["label"]) for t in reversed(top_k)]
        scores = [float(t["score"]) for t in reversed(top_k)]
        fig = figure(
            y_range=FactorRange(*labels),
            x_range=(0, 1),
            height=40 + 28 * max(1, len(labels)),
            title=f"Top-{len(labels)}: {doc.get('model')} {doc.get('model_version')}",
            toolbar_location=None,
            sizing_mode="stretch_width",
        )
        fig.hbar(
            y="label",
            right="score",
            height=0.7,
            source=ColumnDataSource({"label": labels, "score": scores}),
            color="#1565c0",
        )
        fig.add_tools(HoverTool(tooltips=[("label", "@label"), ("score", "@score{0.000}")]))
        return fig

    def meta_html(self, doc: dict[str, Any]) -> str:
        submitted, stored = as_utc(doc.get("submitted_at")), as_utc(doc.get("updated_at"))
        latency = (stored - submitted).total_seconds() if submitted and stored else None
        feedback = doc.get("feedback") or {}
        rows = [
            ("file", doc.get("file_name")),
            ("image id", doc.get("_id")),
            ("size", f"{doc.get('width')} × {doc.get('height')} px, {doc.get('format')}"),
            ("bytes", fmt_bytes(doc.get("bytes"))),
            ("source", doc.get("source")),
            ("path", doc.get("path")),
            ("sha256", (doc.get("sha256") or "")[:16] + "…"),
            ("submitted", fmt_time(submitted, True)),
            ("stored", fmt_time(stored, True)),
            ("end-to-end", fmt_seconds(latency)),
            ("model", f"{doc.get('label')} ({doc.get('score') or 0:.3f})"),
        ]
        if feedback.get("label"):
            rows.append(("corrected", f"{feedback['label']} at {fmt_time(feedback.get('at'), True)}"))
        rows.append(("hidden", "yes" if doc.get("hidden") else "no"))
        body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)
        return f'<style>{TEXT_CSS}</style><table class="meta-table">{body}</table>'

    def predictions_html(self, doc: dict[str, Any]) -> str:
        preds = doc.get("predictions") or []
        if len(preds) < 2:
            return ""
        rows = "".join(
            f"<tr><td>{esc(model_key(p.get('model'), p.get('model_version')))}</td>"
            f"<td><b>{esc(p.get('label'))}</b> {float(p.get('score') or 0):.3f}</td>"
            f"<td>{fmt_time(p.get('predicted_at'), True)}</td></tr>"
            for p in preds
        )
        return f'<style>{TEXT_CSS}</style><b>Every model</b><table class="meta-table">{rows}</table>'

    def render(self) -> None:
        doc = self.store.detail() if self.store.selected else None
        self.doc = doc
        if doc is None:
            self.body.objects = [
                pn.pane.HTML(
                    f'<style>{TEXT_CSS}</style><div class="meta">Choose <b>Details</b> on an image to see it '
                    "here: the larger preview, its metadata, the model's top-k, and to hide it or correct "
                    "its label.</div>",
                    sizing_mode="stretch_width",
                )
            ]
            return
        label = effective_label(doc)
        corrected = bool((doc.get("feedback") or {}).get("label"))
        preview = self.store.thumbnail(doc, DETAIL_PX)
        picture = (
            pn.pane.JPG(
                preview, height=360, sizing_mode="stretch_width", fixed_aspect=False, stylesheets=[IMG_CSS]
            )
            if preview
            else pn.pane.HTML(
                f'<style>{TEXT_CSS}</style><div class="meta">No preview (the file is missing or not under '
                "a configured image folder).</div>"
            )
        )
        current = label if corrected else ""
        self.label_input.param.update(value=current, value_input=current)
        self.hide.label = "Unhide" if doc.get("hidden") else "Hide"
        self.clear.disabled = not corrected
        top_k = list((doc.get("prediction") or {}).get("top_k") or [])
        picks = [
            pn.widgets.Button(label=str(t["label"]), color="light", margin=(2, 2), width=140)
            for t in top_k[:4]
            if t["label"] != label
        ]
        for button in picks:
            button.on_click(partial(self._pick, button.label))
        title = (
            f'<style>{TEXT_CSS}</style><h3 style="margin:4px 0">'
            f"{'✎ ' if corrected else ''}{esc(label)}</h3>"
            f'<div class="meta">{esc(doc.get("file_name"))}</div>'
        )
        self.body.objects = [
            pn.Row(pn.pane.HTML(title, sizing_mode="stretch_width"), self.close, sizing_mode="stretch_width"),
            picture,
            pn.pane.Bokeh(self.topk_figure(doc), sizing_mode="stretch_width"),
            pn.Row(self.label_input, self.save, sizing_mode="stretch_width"),
            pn.FlexBox(
                pn.pane.HTML(
                    f'<style>{TEXT_CSS}</style><div class="meta">or pick from the top-k:</div>',
                    sizing_mode="fixed",
                    width=130,
                ),
                *picks,
                sizing_mode="stretch_width",
            )
            if picks
            else pn.Spacer(height=0),
            pn.Row(self.clear, self.hide),
            pn.pane.HTML(self.meta_html(doc), sizing_mode="stretch_width"),
            pn.pane.HTML(self.predictions_html(doc), sizing_mode="stretch_width"),
        ]

    def __panel__(self):
        return self.body


# --------------------------------------------------------------------------------------------------
# Failures


class FailuresView(Viewer):
    """Dead letters: stage, kind, message, path, time; retry the selected ones or all."""

    store = param.ClassSelector(class_=DataStore)

    COLUMNS = ("failed_at", "stage", "kind", "message", "file", "source", "image_id")

    def __init__(self, **params):
        super().__init__(**params)
        self.table = pn.widgets.Tabulator(
            self.frame(),
            selectable="checkbox",
            disabled=True,
            show_index=False,
            pagination="local",
            page_size=15,
            sizing_mode="stretch_width",
            layout="fit_data_stretch",
            css_classes=["imgflow-failures"],
        )
        self.retry_selected = pn.widgets.Button(label="Retry selected", color="primary", width=150)
        self.retry_all = pn.widgets.Button(label="Retry all", color="warning", width=120)
        self.retry_selected.on_click(self._retry_selected)
        self.retry_all.on_click(self._retry_all)
        self.summary = pn.pane.HTML(margin=(8, 10))
        self._signature: Any = None
        self.store.param.watch(lambda *_: self.render(), ["failures"])
        self.store.param.watch(lambda *_: self._summary(), ["message"])
        self.render()

    def frame(self) -> pd.DataFrame:
        rows = [
            {
                "failed_at": fmt_time(f.get("failed_at"), True),
                "stage": f.get("stage"),
                "kind": f.get("kind"),
                "message": f.get("message"),
                "file": (f.get("path") or "").rsplit("/", 1)[-1],
                "source": f.get("source"),
                "image_id": f.get("_id"),
                "path": f.get("path"),
            }
            for f in self.store.failures
        ]
        return pd.DataFrame(rows, columns=[*self.COLUMNS, "path"])

    def selected_ids(self) -> list[str]:
        df = self.table.value
        return [str(df.iloc[i]["image_id"]) for i in self.table.selection if i < len(df)]

    async def _retry_selected(self, _event=None) -> None:
        ids = self.selected_ids()
        if not ids:
            self.store.message = "Select failures to retry (the checkboxes), or use Retry all."
            return
        await self.store.retry(ids)

    async def _retry_all(self, _event=None) -> None:
        await self.store.retry(None)

    def _summary(self) -> None:
        kinds: dict[str, int] = {}
        for f in self.store.failures:
            kinds[str(f.get("kind"))] = kinds.get(str(f.get("kind")), 0) + 1
        by_kind = ", ".join(f"{esc(k)} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        self.summary.object = (
            f'<style>{TEXT_CSS}</style><div class="meta"><b>{len(self.store.failures)} failures</b>'
            f"{' · ' + by_kind if by_kind else ''}<br>{esc(self.store.message)}</div>"
        )

    def render(self) -> None:
        signature = tuple((f.get("_id"), str(f.get("failed_at"))) for f in self.store.failures)
        if signature != self._signature:
            self._signature = signature
            self.table.value = self.frame()
        self._summary()

    def __panel__(self):
        return pn.Column(
            pn.Row(self.summary, pn.layout.HSpacer(), self.retry_selected, self.retry_all),
            self.table,
            sizing_mode="stretch_width",
        )


# --------------------------------------------------------------------------------------------------
# Model comparison


class CompareView(Viewer):
    """Two model versions on the images both classified: agreement, label pairs, changed images."""

    store = param.ClassSelector(class_=DataStore)

    def __init__(self, **params):
        super().__init__(**params)
        self.model_a = pn.widgets.Select(label="Model A", options=[], width=260)
        self.model_b = pn.widgets.Select(label="Model B", options=[], width=260)
        self.run = pn.widgets.Button(label="Compare", color="primary", width=110, align="end")
        self.run.on_click(lambda _e: self.compare())
        self.summary = pn.pane.HTML(sizing_mode="stretch_width")
        self.pairs = self._table(pd.DataFrame(columns=PAIR_COLUMNS))
        self.changed = self._table(pd.DataFrame(columns=CHANGED_COLUMNS))
        self.tables = pn.Row(sizing_mode="stretch_width")
        self._layout_tables()
        self.result: dict[str, Any] | None = None
        self.store.param.watch(lambda *_: self.update_options(), ["versions"])
        self.update_options()

    def update_options(self) -> None:
        versions = list(self.store.versions)
        if versions == list(self.model_a.options):
            return
        a, b = self.model_a.value, self.model_b.value
        self.model_a.options = versions
        self.model_b.options = versions
        if len(versions) >= 2:
            self.model_a.value = a if a in versions else versions[-2]
            self.model_b.value = b if b in versions and b != self.model_a.value else versions[-1]
        self.run.disabled = len(versions) < 2
        if len(versions) < 2:
            self.summary.object = (
                f'<style>{TEXT_CSS}</style><div class="meta">Only {len(versions)} model version(s) have '
                "results. Replay images with another model (<code>faust -A imgflow replay --model …</code>) "
                "to compare versions here.</div>"
            )

    def compare(self) -> dict[str, Any] | None:
        a, b = self.model_a.value, self.model_b.value
        if not a or not b or a == b:
            self.summary.object = '<div class="meta">Choose two different model versions.</div>'
            return None
        result = self.store.compare(a, b)
        self.result = result
        pairs = [
            {"label_a": la, "label_b": lb, "images": n, "agree": la == lb}
            for la, row in (result.get("confusion") or {}).items()
            for lb, n in row.items()
        ]
        pairs.sort(key=lambda r: (-r["images"], r["label_a"], r["label_b"]))
        # Fresh tables per comparison: their columns' types change with the data.
        self.pairs = self._table(pd.DataFrame(pairs, columns=PAIR_COLUMNS))
        self.changed = self._table(pd.DataFrame(result.get("changed") or [], columns=CHANGED_COLUMNS))
        self._layout_tables()
        self.summary.object = (
            f'<style>{TEXT_CSS}</style><div class="tiles" style="font-size:14px">'
            f"<b>{result.get('images', 0)}</b> images classified by both · "
            f"<b>{result.get('agree', 0)}</b> agree · agreement "
            f"<b>{100 * float(result.get('agreement') or 0):.1f}%</b> · "
            f"{len(result.get('changed') or [])} changed shown</div>"
        )
        return result

    @staticmethod
    def _table(frame: pd.DataFrame) -> pn.widgets.Tabulator:
        floats = {c: NumberFormatter(format="0.000") for c in ("score_a", "score_b", "delta") if c in frame}
        return pn.widgets.Tabulator(
            frame,
            disabled=True,
            show_index=False,
            pagination="local",
            page_size=12,
            formatters=floats,
            sizing_mode="stretch_width",
        )

    def _layout_tables(self) -> None:
        self.tables.objects = [
            pn.Column("#### Label pairs (A → B)", self.pairs, sizing_mode="stretch_width"),
            pn.Column(
                "#### Changed images (delta: how much B took from A's label)",
                self.changed,
                sizing_mode="stretch_width",
            ),
        ]

    def __panel__(self):
        return pn.Column(
            pn.Row(self.model_a, self.model_b, self.run),
            self.summary,
            self.tables,
            sizing_mode="stretch_width",
        )


# --------------------------------------------------------------------------------------------------
# Feedback and export


class FeedbackView(Viewer):
    """Corrected labels for retraining: the list, and downloads as CSV and JSON."""

    store = param.ClassSelector(class_=DataStore)

    def __init__(self, **params):
        super().__init__(**params)
        self.table = pn.widgets.Tabulator(
            self.frame(),
            disabled=True,
            show_index=False,
            pagination="local",
            page_size=15,
            sizing_mode="stretch_width",
        )
        self.csv = pn.widgets.FileDownload(
            callback=self._csv,
            filename="imgflow-corrected-labels.csv",
            width=200,
            label="Download CSV",
            color="primary",
        )
        self.json = pn.widgets.FileDownload(
            callback=self._json,
            filename="imgflow-corrected-labels.json",
            width=200,
            label="Download JSON",
            color="light",
        )
        self.store.param.watch(lambda *_: self.render(), ["images"])

    def _csv(self):
        import io

        return io.StringIO(self.store.export_csv())

    def _json(self):
        import io

        return io.StringIO(self.store.export_json())

    def frame(self) -> pd.DataFrame:
        cols = ["file_name", "predicted_label", "label", "model", "model_version", "corrected_at", "image_id"]
        return pd.DataFrame(self.store.corrections(), columns=cols)

    def render(self) -> None:
        frame = self.frame()
        if not frame.equals(self.table.value):
            self.table.value = frame

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown(
                "Labels corrected by people (the gallery shows them with ✎). Export them to retrain a "
                "model; each row keeps the model's label and version beside the corrected one.",
                sizing_mode="stretch_width",
            ),
            pn.Row(self.csv, self.json),
            self.table,
            sizing_mode="stretch_width",
        )


# --------------------------------------------------------------------------------------------------
# Assembly


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
        self.feedback = FeedbackView(store=self.store)
        self.feedback.render()
        self._seen_version = self.feed.version
        self._pending = False
        self.store.param.watch(self._resumed, ["follow"])
        # The detail column takes room only while an image is open in it.
        self.detail_column = pn.Column(
            self.detail, width=460, css_classes=["detail-column"], visible=self.store.selected is not None
        )
        self.store.param.watch(self._show_detail, ["selected"])

    def _show_detail(self, event) -> None:
        self.detail_column.visible = event.new is not None

    def _resumed(self, event) -> None:
        if event.new:  # "Live" switched back on: catch up now
            self._seen_version = self.feed.version
            self.store.refresh()

    def on_feed(self) -> None:
        """Apply the shared feed's latest snapshot to this session."""
        self._pending = False
        self.counts.update()
        self.throughput.update()
        if self.feed.version != self._seen_version and self.store.follow:
            self._seen_version = self.feed.version
            self.store.refresh()

    def connect(self, doc) -> None:
        """Follow the shared feed from this session until it closes (no poller of its own)."""

        def on_event(*_events) -> None:
            if not self._pending:  # coalesce: at most one queued update per session
                self._pending = True
                in_session(doc, self.on_feed)

        watcher = self.feed.param.watch(on_event, ["refreshed_at"])
        if doc is not None:
            doc.on_session_destroyed(lambda _ctx: self.feed.param.unwatch(watcher))

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
            ("Corrected labels", self.feedback),
            sizing_mode="stretch_width",
        )
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
