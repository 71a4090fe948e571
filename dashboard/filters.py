"""The sidebar: the session's filters, as widgets bound to ``DataStore`` parameters."""

from __future__ import annotations

import panel as pn
import param
from panel.viewable import Viewer

from dashboard.data_store import DataStore
from dashboard.queries import ALL


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
