"""The detail view: one image larger, its metadata, the top-k chart, every model's result, edits.

Opened by a card's Details button (``DataStore.selected``); the Save, pick,
Clear and Hide buttons call the session's edits, which record the signed-in user.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import panel as pn
import param
from bokeh.models import ColumnDataSource, FactorRange, HoverTool
from bokeh.plotting import figure
from panel.viewable import Viewer

from dashboard.data_store import DataStore
from dashboard.format import esc, fmt_bytes, fmt_seconds, fmt_time, meta
from dashboard.previews import DETAIL_PX
from dashboard.queries import as_utc, effective_label, model_key
from dashboard.styles import stylesheet

EMPTY = meta(
    "Choose <b>Details</b> on an image to see it here: the larger preview, its metadata, the model's "
    "top-k, and to hide it or correct its label."
)
NO_PREVIEW = meta("No preview (the file is missing or not under a configured image folder).")


def topk_figure(doc: dict[str, Any]):
    """The model's top-k as horizontal bars, the best on top."""
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


def meta_html(doc: dict[str, Any]) -> str:
    """The image's file, size, source, times, end-to-end latency, model result and edits."""
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
    return f'<table class="meta-table">{body}</table>'


def predictions_html(doc: dict[str, Any]) -> str:
    """Every model version's result for the image, when more than one classified it."""
    preds = doc.get("predictions") or []
    if len(preds) < 2:
        return ""
    rows = "".join(
        f"<tr><td>{esc(model_key(p.get('model'), p.get('model_version')))}</td>"
        f"<td><b>{esc(p.get('label'))}</b> {float(p.get('score') or 0):.3f}</td>"
        f"<td>{fmt_time(p.get('predicted_at'), True)}</td></tr>"
        for p in preds
    )
    return f'<b>Every model</b><table class="meta-table">{rows}</table>'


def title_html(doc: dict[str, Any]) -> str:
    corrected = "✎ " if (doc.get("feedback") or {}).get("label") else ""
    heading = f'<h3 style="margin:4px 0">{corrected}{esc(effective_label(doc))}</h3>'
    return heading + meta(esc(doc.get("file_name")))


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

    @param.depends("store.selected", watch=True)
    def render(self) -> None:
        doc = self.store.detail() if self.store.selected else None
        self.doc = doc
        text = [stylesheet("text")]
        if doc is None:
            self.body.objects = [pn.pane.HTML(EMPTY, sizing_mode="stretch_width", stylesheets=text)]
            return
        label = effective_label(doc)
        corrected = bool((doc.get("feedback") or {}).get("label"))
        preview = self.store.picture(doc, DETAIL_PX)
        picture = (
            pn.pane.JPG(
                preview,
                height=360,
                sizing_mode="stretch_width",
                fixed_aspect=False,
                stylesheets=[stylesheet("image")],
            )
            if preview
            else pn.pane.HTML(NO_PREVIEW, stylesheets=text)
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
        self.body.objects = [
            pn.Row(
                pn.pane.HTML(title_html(doc), sizing_mode="stretch_width", stylesheets=text),
                self.close,
                sizing_mode="stretch_width",
            ),
            picture,
            pn.pane.Bokeh(topk_figure(doc), sizing_mode="stretch_width"),
            pn.Row(self.label_input, self.save, sizing_mode="stretch_width"),
            pn.FlexBox(
                pn.pane.HTML(
                    meta("or pick from the top-k:"), sizing_mode="fixed", width=130, stylesheets=text
                ),
                *picks,
                sizing_mode="stretch_width",
            )
            if picks
            else pn.Spacer(height=0),
            pn.Row(self.clear, self.hide),
            pn.pane.HTML(meta_html(doc), sizing_mode="stretch_width", stylesheets=text),
            pn.pane.HTML(predictions_html(doc), sizing_mode="stretch_width", stylesheets=text),
        ]

    def __panel__(self):
        return self.body
