"""The "Model quality" tab: stored evaluations, and each version's accuracy against corrections.

Evaluations are what ``faust -A imgflow evaluate`` stored (``lifecycle.evaluations``); the live
accuracy treats every label a person set as ground truth for each version that predicted
that image, overall, per true label and per day. Both reads follow the evaluations and the
corrections, not the images, so their cost does not grow with history.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import panel as pn
import param
from bokeh.models import NumberFormatter
from panel.viewable import Viewer

from dashboard.data_store import DataStore
from dashboard.format import meta

EVALUATION_COLUMNS = [
    "model",
    "data",
    "held_out",
    "images",
    "accuracy",
    "macro_f1",
    "roc_auc",
    "threshold",
    "target",
    "created_at",
]
MODEL_COLUMNS = ["model", "images", "correct", "accuracy"]
LABEL_COLUMNS = ["model", "label", "images", "correct", "accuracy"]
DAY_COLUMNS = ["model", "day", "images", "correct", "accuracy"]


def evaluation_rows(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for doc in docs:
        metrics, binary = doc.get("metrics") or {}, doc.get("binary") or {}
        chosen = binary.get("chosen") or {}
        rows.append(
            {
                "model": doc.get("model"),
                "data": doc.get("data"),
                "held_out": bool(doc.get("held_out")),
                "images": metrics.get("images"),
                "accuracy": metrics.get("accuracy"),
                "macro_f1": metrics.get("macro_f1"),
                "roc_auc": binary.get("roc_auc"),
                "threshold": chosen.get("threshold"),
                "target": chosen.get("target"),
                "created_at": doc.get("created_at"),
            }
        )
    return rows


def accuracy_rows(
    found: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(per model, per model and label, per model and day) rows of ``feedback_accuracy``."""
    models, labels, days = [], [], []
    for model, m in found.get("models", {}).items():
        models.append(
            {"model": model, "images": m["images"], "correct": m["correct"], "accuracy": m["accuracy"]}
        )
        labels += [{"model": model, "label": k, **v} for k, v in m["by_label"].items()]
        days += [{"model": model, "day": k, **v} for k, v in m["by_day"].items()]
    return models, labels, days


class QualityView(Viewer):
    """Evaluations and live accuracy per model version (module docstring)."""

    store = param.ClassSelector(class_=DataStore)

    def __init__(self, **params):
        super().__init__(**params)
        self.intro = pn.pane.HTML(sizing_mode="stretch_width")
        self.evaluations = self._table(EVALUATION_COLUMNS)
        self.by_model = self._table(MODEL_COLUMNS)
        self.by_label = self._table(LABEL_COLUMNS)
        self.by_day = self._table(DAY_COLUMNS)
        self.reload = pn.widgets.Button(label="Refresh", width=110)
        self.reload.on_click(lambda _event: self.render())
        self.render()

    @staticmethod
    def _table(columns: list[str]) -> pn.widgets.Tabulator:
        floats = {
            c: NumberFormatter(format="0.000") for c in ("accuracy", "macro_f1", "roc_auc", "threshold")
        }
        return pn.widgets.Tabulator(
            pd.DataFrame(columns=columns),
            disabled=True,
            show_index=False,
            pagination="local",
            page_size=10,
            formatters={c: f for c, f in floats.items() if c in columns},
            sizing_mode="stretch_width",
        )

    def render(self) -> None:
        evaluations = self.store.evaluations()
        found = self.store.feedback_accuracy()
        models, labels, days = accuracy_rows(found)
        self.evaluations.value = pd.DataFrame(evaluation_rows(evaluations), columns=EVALUATION_COLUMNS)
        self.by_model.value = pd.DataFrame(models, columns=MODEL_COLUMNS)
        self.by_label.value = pd.DataFrame(labels, columns=LABEL_COLUMNS)
        self.by_day.value = pd.DataFrame(days, columns=DAY_COLUMNS)
        self.intro.object = meta(
            f"{len(evaluations)} evaluation(s) stored (<code>faust -A imgflow evaluate</code>); "
            f"{found.get('corrected_images', 0)} corrected image(s) as ground truth. People mostly "
            "correct mistakes, so live accuracy is a lower bound unless right labels are confirmed too."
        )

    def __panel__(self):
        return pn.Column(
            pn.Row(self.intro, self.reload),
            "#### Evaluations on labelled folders",
            self.evaluations,
            pn.Row(
                pn.Column("#### Accuracy against corrections", self.by_model, sizing_mode="stretch_width"),
                pn.Column("#### Per true label", self.by_label, sizing_mode="stretch_width"),
                pn.Column("#### Per day", self.by_day, sizing_mode="stretch_width"),
                sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
        )
