"""Dead letters: what failed where and why, and retrying the selected ones or all."""

from __future__ import annotations

from typing import Any

import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from dashboard.data_store import DataStore
from dashboard.format import esc, fmt_time, meta
from dashboard.styles import stylesheet

COLUMNS = ("failed_at", "stage", "kind", "message", "file", "source", "image_id")


def failures_frame(failures: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per failure document, newest first as given; ``path`` too, for retries."""
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
        for f in failures
    ]
    return pd.DataFrame(rows, columns=[*COLUMNS, "path"])


def summary_html(failures: list[dict[str, Any]], message: str) -> str:
    """How many failures of each kind, and the outcome of the last retry."""
    kinds: dict[str, int] = {}
    for f in failures:
        kinds[str(f.get("kind"))] = kinds.get(str(f.get("kind")), 0) + 1
    by_kind = ", ".join(f"{esc(k)} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    return meta(f"<b>{len(failures)} failures</b>{' · ' + by_kind if by_kind else ''}<br>{esc(message)}")


class FailuresView(Viewer):
    """Dead letters: stage, kind, message, path, time; retry the selected ones or all."""

    store = param.ClassSelector(class_=DataStore)

    def __init__(self, **params):
        super().__init__(**params)
        self.table = pn.widgets.Tabulator(
            failures_frame(self.store.failures),
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
        self.summary = pn.pane.HTML(
            pn.bind(summary_html, self.store.param.failures, self.store.param.message),
            margin=(8, 10),
            stylesheets=[stylesheet("text")],
        )

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

    @param.depends("store.failures", watch=True)
    def render(self) -> None:
        """Replace the table only when what it shows changed: a new value clears the checkboxes."""
        frame = failures_frame(self.store.failures)
        if not frame.equals(self.table.value):
            self.table.value = frame

    def __panel__(self):
        return pn.Column(
            pn.Row(self.summary, pn.layout.HSpacer(), self.retry_selected, self.retry_all),
            self.table,
            sizing_mode="stretch_width",
        )
