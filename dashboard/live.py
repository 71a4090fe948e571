"""The live part of the page: label counts per window, throughput, latency, totals, worker status.

These views show the process's shared ``LiveFeed``; ``Dashboard.on_feed`` calls
their ``update()`` in each session's own tick after every refresh. ``update()``
compares what it would draw with what it drew last and sends nothing when that
is the same, so an idle dashboard costs the browser nothing every 2 s.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import panel as pn
import param
from bokeh.models import ColumnDataSource, DatetimeTickFormatter, FactorRange, HoverTool
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from panel.viewable import Viewer

from dashboard.feed import LiveFeed
from dashboard.format import NONE, esc, fmt_seconds, fmt_time, meta
from dashboard.styles import stylesheet
from dashboard.workers import current_window


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
        self.caption = pn.pane.HTML(
            sizing_mode="stretch_width", margin=(0, 10), stylesheets=[stylesheet("text")]
        )
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
            # Hopping windows (IMGFLOW_WINDOW_STEP) overlap: each image is in seconds / step of them.
            step = conf.get("step")
            every = f" every {step:g} s" if step and step != conf["seconds"] else ""
            parts.append(f"{conf['seconds']:g} s windows{every}")
        if self.feed.counts_url:
            parts.append(f"from {esc(self.feed.counts_url)}")
        if counts and not counts.get("complete", True):
            missing = counts.get("missing_partitions")
            parts.append(f'<span class="down">incomplete: partitions {esc(missing)} missing</span>')
        if self.feed.counts_error:
            parts.append(f'<span class="starting">last refresh failed: {esc(self.feed.counts_error)}</span>')
        return meta(" · ".join(parts) or "no windows yet")

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
        self.caption.object = caption

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


class ThroughputView(Viewer):
    """KPI tiles (images/s, failures/s, p50/p95 publish -> stored, totals), a rate chart and worker status."""

    feed = param.ClassSelector(class_=LiveFeed)

    def __init__(self, **params):
        super().__init__(**params)
        self.tiles = pn.pane.HTML(
            sizing_mode="stretch_width", stylesheets=[stylesheet("tiles")], margin=(5, 10)
        )
        self.workers = pn.pane.HTML(
            sizing_mode="stretch_width", margin=(0, 10), stylesheets=[stylesheet("text")]
        )
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
            return NONE if key not in stats else f"{stats[key]:.2f}"

        return [
            (f"images/s stored ({minutes:g} min)", rate("stored_per_s"), False),
            (f"failures/s ({minutes:g} min)", rate("failed_per_s"), bool(stats.get("failed"))),
            ("p50 publish→stored", fmt_seconds(stats.get("p50")), False),
            ("p95 publish→stored", fmt_seconds(stats.get("p95")), False),
            ("images stored", str(totals.get("images", NONE)), False),
            ("failures", str(totals.get("failures", NONE)), bool(totals.get("failures"))),
            ("corrected labels", str(totals.get("corrected", NONE)), False),
            ("hidden", str(totals.get("hidden", NONE)), False),
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
            lag = "" if w.get("lag") is None else f", lag {esc(w['lag'])}"  # a worker's answer: escaped
            dot = f'<span class="{cls}">●</span>'
            rows.append(f"{dot} {esc(w['url'])} <b>{esc(w['status'])}</b> {esc(detail)}{lag}")
        refreshed = (
            datetime.fromtimestamp(self.feed.refreshed_at, UTC).strftime("%H:%M:%S UTC")
            if self.feed.refreshed_at
            else NONE
        )
        error = f' · <span class="down">{esc(self.feed.db_error)}</span>' if self.feed.db_error else ""
        error += "".join(f'<br><span class="down">⚠ {esc(note)}</span>' for note in self.feed.notices)
        body = " &nbsp; ".join(rows) or "no worker URLs configured (IMGFLOW_WORKER_URLS)"
        return meta(f"workers: {body} · refreshed {refreshed}{error}")

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
        self.workers.object = workers

    def __panel__(self):
        return pn.Column(self.tiles, self.workers, sizing_mode="stretch_width")
