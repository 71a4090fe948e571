"""A face spec loaded: the face engine (models/faces.py) behind the model cache, and its
answers as the classify stage stores them.

The decode stage letterboxes each image into the spec's ``input_size`` (scaled to fit,
never cropped), so a box found in the tensor is in the original image's pixels once
divided by that scale. Each face is then named after the nearest enrolled person
(imgflow/people.py) under the spec's ``match_threshold``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from models.answers import Answer, Context
from models.preprocess import letterbox_scale
from models.spec import ModelSpec

log = logging.getLogger(__name__)

NO_FACE = "no_face"
UNKNOWN = "unknown"


class FaceModel:
    """The face engine for one spec: ``faces`` takes a uint8 batch, returns each image's faces."""

    def __init__(self, spec: ModelSpec, engine: Any) -> None:
        self.spec = spec
        self.engine = engine
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FaceModel({self.spec.key!r}, engine={self.engine.version!r})"

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    @property
    def match_threshold(self) -> float:
        from models.faces import MATCH_THRESHOLD

        return self.spec.match_threshold or MATCH_THRESHOLD

    def faces(self, batch: np.ndarray) -> list[list[Any]]:
        height, width = self.spec.input_size
        if batch.ndim != 4 or batch.shape[1:] != (height, width, 3) or batch.dtype != np.uint8:
            raise ValueError(
                f"{self.spec.key} takes uint8 batches shaped (N, {height}, {width}, 3), got {batch.shape}"
            )
        with self._lock:
            hits: list[list[Any]] = self.engine.faces(list(batch))
        return hits

    async def answer(self, batch: np.ndarray, context: Context) -> list[Answer]:
        """The plug-in interface (models/answers.py): the faces found in the model's thread,
        each named after the nearest known person; the most confident face names the image."""
        hits = await context.run(self.faces, batch)
        known = await context.known(self.spec.name, self.spec.version) if context.known is not None else []
        answers = []
        for found, size in zip(hits, context.sizes, strict=True):
            faces = describe_faces(found, size, self.spec, known, self.match_threshold)
            label, score, top = face_answer(faces, self.spec.top_k)
            answers.append(Answer(label, score, top, {"faces": faces}))
        return answers


def load_face_model(spec: ModelSpec, threads: int | None = None) -> FaceModel:
    """The engine named by a face spec, loaded (weights from its packages) and tried once."""
    from models.faces import FaceEngine

    started = time.perf_counter()
    engine = FaceEngine(min_score=spec.threshold, min_size=spec.min_face, threads=threads)
    model = FaceModel(spec, engine)
    # Warm up: a broken engine fails here, and a real face traces every stage now (the first
    # face otherwise costs ~2.5 s more than the next: measured on this 2-core machine).
    model.faces(warm_up_image(spec)[None])
    log.info("loaded face model %s (%s) in %.1f s", spec.key, engine.version, time.perf_counter() - started)
    return model


def warm_up_image(spec: ModelSpec) -> np.ndarray:
    """A frame with a face (the astronaut photo shipped in ``models/data``, public domain) sized
    for ``spec``."""
    from PIL import Image

    from models.preprocess import fit_to_input

    with (resources.files("models") / "data" / "astronaut.jpg").open("rb") as file:
        face = Image.open(file)
        face.load()
    return fit_to_input(face.convert("RGB"), spec.input_size, spec.resize)


def describe_faces(
    hits: Sequence[Any],
    image_size: tuple[int, int],
    spec: ModelSpec,
    known: Sequence[tuple[str, np.ndarray]],
    threshold: float,
) -> list[dict[str, Any]]:
    """One image's faces as stored: boxes back in the original image's pixels, each named.

    ``image_size``: the original (width, height); ``known``: ``(name, embedding)`` pairs.
    """
    from models.faces import nearest

    width, height = image_size
    scale = letterbox_scale(width, height, spec.input_size)
    out = []
    for hit in hits:
        x0, y0, x1, y1 = (v / scale for v in hit.box)
        name, distance = nearest(hit.embedding, known, threshold) if known else (UNKNOWN, None)
        out.append(
            {
                "box": [
                    max(0, round(x0)),
                    max(0, round(y0)),
                    min(width, round(x1)),
                    min(height, round(y1)),
                ],
                "score": round(float(hit.score), 4),
                "identity": name,
                "distance": None
                if distance is None or not np.isfinite(distance)
                else round(float(distance), 4),
                "embedding": [round(float(x), 5) for x in hit.embedding],
            }
        )
    return out


def face_answer(faces: Sequence[dict[str, Any]], top_k: int) -> tuple[str, float, list[dict[str, Any]]]:
    """(label, score, top_k) of an image's faces: the most confident face names the image."""
    if not faces:
        return NO_FACE, 0.0, []
    ranked = sorted(faces, key=lambda f: -f["score"])
    return (
        ranked[0]["identity"],
        float(ranked[0]["score"]),
        [{"label": f["identity"], "score": float(f["score"])} for f in ranked[:top_k]],
    )
