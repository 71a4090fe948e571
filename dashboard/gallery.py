"""The gallery: the newest results matching the filters, as cards with server-side thumbnails.

Cards are rebuilt only when the page's documents, the match count or the
selected image change: ``DataStore.images`` is a param ``List``, and param
does not notify watchers when a re-query returns equal documents, so a live
refresh that found nothing new redraws nothing.
"""

from __future__ import annotations

from typing import Any

import panel as pn
import param
from panel.viewable import Viewer

from dashboard.data_store import DataStore
from dashboard.format import esc, fmt_time, meta, status_html
from dashboard.queries import effective_label
from dashboard.styles import stylesheet


def card_text(doc: dict[str, Any]) -> str:
    """A card's caption: the label a person sees (✎ if corrected), score, time, model, file."""
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
        f"{head}"
        f'<div class="meta">score <b>{score_txt}</b> · {fmt_time(doc.get("updated_at"))}{hidden}</div>'
        f'<div class="meta" title="{model}">{model}</div>'
        f'<div class="meta" title="{esc(doc.get("file_name"))}">{esc(doc.get("file_name"))}</div>'
    )


class GalleryView(Viewer):
    """The newest predictions matching the filters, as cards with server-side thumbnails."""

    store = param.ClassSelector(class_=DataStore)
    card_width = param.Integer(default=184)

    def __init__(self, **params):
        super().__init__(**params)
        text = [stylesheet("text")]
        self.grid = pn.FlexBox(sizing_mode="stretch_width", gap="8px", css_classes=["imgflow-gallery"])
        self.summary = pn.pane.HTML(margin=(8, 10), stylesheets=text)
        self.newer = pn.widgets.Button(label="◀ Newer", width=90, color="light")
        self.older = pn.widgets.Button(label="Older ▶", width=90, color="light")
        self.newer.on_click(lambda _e: self._page(-1))
        self.older.on_click(lambda _e: self._page(+1))
        self.status = pn.pane.HTML(
            pn.bind(status_html, self.store.param.error, self.store.param.message),
            margin=(8, 10),
            stylesheets=text,
        )
        self.cards: dict[str, pn.Column] = {}
        self.render()

    def _page(self, step: int) -> None:
        self.store.page = max(0, self.store.page + step)

    def card(self, doc: dict[str, Any]) -> pn.Column:
        image_id = doc["_id"]
        thumb = self.store.thumbnail(doc)
        inner = self.card_width - 16
        image = [stylesheet("image")]
        if thumb:
            picture = pn.pane.JPG(
                thumb, width=inner, height=int(inner * 0.75), fixed_aspect=False, stylesheets=image, margin=0
            )
        else:
            picture = pn.pane.HTML(
                '<div class="no-preview">no preview</div>',
                width=inner,
                height=int(inner * 0.75),
                margin=0,
                stylesheets=image,
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
        caption = pn.pane.HTML(
            card_text(doc), width=inner, margin=(4, 0, 0, 0), stylesheets=[stylesheet("text")]
        )
        return pn.Column(
            picture,
            caption,
            pn.Row(details, hide, margin=0),
            width=self.card_width,
            css_classes=classes,
            stylesheets=[stylesheet("card")],
            margin=0,
        )

    def summary_html(self) -> str:
        s = self.store
        if not s.total:
            return meta("No images match the filters.")
        first = s.page * s.page_size + 1
        last = first + len(s.images) - 1
        count = f"{s.total:,}+" if s.total_capped else f"{s.total:,}"
        return meta(f'<b class="match-count">{count} images</b> match · showing {first}–{last}')

    @param.depends("store.images", "store.total", "store.has_older", "store.selected", watch=True)
    def render(self) -> None:
        self.cards = {d["_id"]: self.card(d) for d in self.store.images}
        self.grid.objects = list(self.cards.values())
        self.summary.object = self.summary_html()
        self.newer.disabled = self.store.page == 0
        self.older.disabled = not self.store.has_older

    def __panel__(self):
        return pn.Column(
            pn.Row(self.summary, pn.layout.HSpacer(), self.newer, self.older, sizing_mode="stretch_width"),
            self.status,
            self.grid,
            sizing_mode="stretch_width",
        )
