"""Opt-in stage, annotate: ``imgflow-predictions`` -> ``imgflow-annotated``.

With ``IMGFLOW_ANNOTATE=1`` every result is drawn on its image (face boxes and names, or
the label and score) and published as JPEG bytes: key = ``image_id``, the result in the
``imgflow-record`` header as JSON (label, score, model, version, source, path and the
faces without their embeddings), for consumers that want pictures, not records.

The original is read where the decode stage read it: a frame from MongoDB ``frames``, a
file inside the image roots. An original that is gone by then (a frame past
``IMGFLOW_FRAMES_KEEP``, a file moved) is counted (``imgflow_images_annotated{outcome=
"no_original"}``) and skipped: the result itself is stored either way, so this side
output never fails an image.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faust.types import EventT, StreamT, TopicT

from agents.stage import Outcome, Stage
from imgflow.annotate import annotated_jpeg
from imgflow.app import app, settings
from imgflow.frames import FrameStore
from imgflow.imaging import ImageRejected, decode_limits
from imgflow.metrics import METRICS
from imgflow.originals import Origins, read_original
from imgflow.records import RECORD_HEADER, Prediction, parse
from imgflow.topics import annotated_topic, predictions_topic

log = logging.getLogger(__name__)


def parse_event(event: EventT[bytes]) -> Prediction:
    return parse(Prediction, event.value)


def header_of(p: Prediction) -> bytes:
    faces = (
        [{k: v for k, v in f.items() if k != "embedding"} for f in p.faces] if p.faces is not None else None
    )
    body = {
        "image_id": p.image_id,
        "label": p.label,
        "score": p.score,
        "model": p.model,
        "model_version": p.model_version,
        "source": p.source,
        "path": p.path,
        "faces": faces,
    }
    return json.dumps(body, separators=(",", ":")).encode()


class Annotator:
    def __init__(self, frames: FrameStore | None, roots: Sequence[Path] | None = None) -> None:
        self.frames = frames
        self.roots = settings.image_root_paths if roots is None else roots
        self.limits = decode_limits(settings)

    def original(self, path: str) -> bytes | None:
        try:
            return read_original(path, Origins(self.roots, settings.object_roots, self.frames), self.limits)[
                0
            ]
        except ImageRejected:
            return None

    def draw(self, p: Prediction) -> bytes | None:
        data = self.original(p.path)
        if data is None:
            return None
        try:
            return annotated_jpeg(data, p.label, p.score, p.faces)
        except Exception as exc:  # the original changed into something else since: no picture
            log.warning("cannot annotate %s: %s", p.image_id, exc)
            return None

    async def batch(self, preds: list[Prediction]) -> Outcome:
        outcome = Outcome()
        drawn = await asyncio.gather(*(asyncio.to_thread(self.draw, p) for p in preds))
        for p, jpeg in zip(preds, drawn, strict=True):
            if jpeg is None:
                METRICS.annotated.labels("no_original").inc()
                continue
            outcome.outputs.append((p, p.image_id, jpeg, [(RECORD_HEADER, header_of(p))]))
            METRICS.annotated.labels("sent").inc()
        return outcome


def stage(frames: FrameStore | None, output: TopicT = annotated_topic, **kwargs: Any) -> Stage[Prediction]:
    return Stage(
        "annotate",
        parse=parse_event,
        process=Annotator(frames, kwargs.pop("roots", None)).batch,
        output=output,
        batch_size=settings.store_batch_size,
        **kwargs,
    )


if settings.annotate:

    @app.agent(predictions_topic)
    async def annotate(stream: StreamT[bytes]) -> None:
        await stage(app.resources.frames).run(stream)
