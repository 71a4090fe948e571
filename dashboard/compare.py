"""Model comparison: two model versions on the images both classified.

Shows agreement, the pairs of labels (A -> B) and the images whose label changed
most; the numbers are ``imgflow.queries.compare_models``, the same as the
CLI's ``compare`` report.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pandas as pd
import panel as pn
import param
from bokeh.models import NumberFormatter
from panel.viewable import Viewer

from dashboard.data_store import DataStore
from dashboard.format import meta
from dashboard.styles import stylesheet

PAIR_COLUMNS = ["label_a", "label_b", "images", "agree"]
CHANGED_COLUMNS = ["file_name", "label_a", "score_a", "label_b", "score_b", "delta", "image_id"]


def label_pairs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The confusion table as rows, the most frequent pair first."""
    pairs = [
        {"label_a": la, "label_b": lb, "images": n, "agree": la == lb}
        for la, row in (result.get("confusion") or {}).items()
        for lb, n in row.items()
    ]
    pairs.sort(key=lambda r: (-r["images"], r["label_a"], r["label_b"]))
    return pairs


def summary_html(result: dict[str, Any]) -> str:
    return (
        f'<div class="tiles" style="font-size:14px">'
        f"<b>{result.get('images', 0)}</b> images classified by both · "
        f"<b>{result.get('agree', 0)}</b> agree · agreement "
        f"<b>{100 * float(result.get('agreement') or 0):.1f}%</b> · "
        f"{len(result.get('changed') or [])} changed shown</div>"
    )


def too_few_html(versions: int) -> str:
    return meta(
        f"Only {versions} model version(s) have results. Replay images with another model "
        "(<code>faust -A imgflow replay --model …</code>) to compare versions here."
    )


class CompareView(Viewer):
    """Two model versions on the images both classified: agreement, label pairs, changed images."""

    store = param.ClassSelector(class_=DataStore)

    def __init__(self, **params):
        super().__init__(**params)
        self.model_a = pn.widgets.Select(label="Model A", options=[], width=260)
        self.model_b = pn.widgets.Select(label="Model B", options=[], width=260)
        self.run = pn.widgets.Button(label="Compare", color="primary", width=110, align="end")
        self.run.on_click(self._run)
        # The comparison reads every prediction of both versions, range by range: show how far.
        self.progress = pn.indicators.Progress(value=0, max=100, visible=False, width=260, align="center")
        self.summary = pn.pane.HTML(sizing_mode="stretch_width", stylesheets=[stylesheet("text")])
        self.pairs = self._table(pd.DataFrame(columns=PAIR_COLUMNS))
        self.changed = self._table(pd.DataFrame(columns=CHANGED_COLUMNS))
        self.tables = pn.Row(sizing_mode="stretch_width")
        self._layout_tables()
        self.result: dict[str, Any] | None = None
        self.update_options()

    @param.depends("store.versions", watch=True)
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
            self.summary.object = too_few_html(len(versions))

    async def _run(self, _event=None) -> None:
        """The button: compare in a thread, the bar following its progress, the page responsive."""
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(setattr, self.progress, "value", int(100 * done / max(total, 1)))

        self.run.disabled, self.progress.value, self.progress.visible = True, 0, True
        try:
            result = await asyncio.to_thread(self._result, progress)
            if result is not None:
                self.show(result)
        finally:
            self.run.disabled, self.progress.visible = False, False

    def _result(self, progress=None) -> dict[str, Any] | None:
        a, b = self.model_a.value, self.model_b.value
        if not a or not b or a == b:
            return None
        return self.store.compare(a, b, progress=progress)

    def compare(self) -> dict[str, Any] | None:
        result = self._result()
        if result is None:
            self.summary.object = meta("Choose two different model versions.")
            return None
        self.show(result)
        return result

    def show(self, result: dict[str, Any]) -> None:
        self.result = result
        # Fresh tables per comparison: their columns' types change with the data.
        self.pairs = self._table(pd.DataFrame(label_pairs(result), columns=PAIR_COLUMNS))
        self.changed = self._table(pd.DataFrame(result.get("changed") or [], columns=CHANGED_COLUMNS))
        self._layout_tables()
        self.summary.object = summary_html(result)

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
            pn.Row(self.model_a, self.model_b, self.run, self.progress),
            self.summary,
            self.tables,
            sizing_mode="stretch_width",
        )
