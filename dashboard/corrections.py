"""The "Corrected labels" tab: labels people corrected, and their export for retraining.

Each row keeps the model's label and version beside the corrected one
(``dashboard.feedback.corrections``), so a training script can tell what was
wrong and with which model.
"""

from __future__ import annotations

import io

import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from dashboard.data_store import DataStore

#: Corrections the table shows, newest first (the downloads hold all of them).
SHOWN = 500

COLUMNS = ["file_name", "predicted_label", "label", "model", "model_version", "corrected_at", "image_id"]


class CorrectionsView(Viewer):
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
            callback=lambda: io.StringIO(self.store.export_csv()),
            filename="imgflow-corrected-labels.csv",
            width=200,
            label="Download CSV",
            color="primary",
        )
        self.json = pn.widgets.FileDownload(
            callback=lambda: io.StringIO(self.store.export_json()),
            filename="imgflow-corrected-labels.json",
            width=200,
            label="Download JSON",
            color="light",
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.store.corrections(newest=SHOWN), columns=COLUMNS)

    @param.depends("store.images", watch=True)
    def render(self) -> None:
        """Re-read after the gallery changed (an edit, new results); replace the table only on change."""
        frame = self.frame()
        if not frame.equals(self.table.value):
            self.table.value = frame

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown(
                "Labels corrected by people (the gallery shows them with ✎), the newest 500 here. Export "
                "all of them to retrain a model; each row keeps the model's label and version beside "
                "the corrected one.",
                sizing_mode="stretch_width",
            ),
            pn.Row(self.csv, self.json),
            self.table,
            sizing_mode="stretch_width",
        )
