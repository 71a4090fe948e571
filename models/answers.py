"""What every model plug-in answers, through one interface the classify stage and the sink use.

A loaded model (:class:`~models.backends.Classifier`, :class:`~models.face_model.FaceModel`,
and the kinds "any model" adds) is a :class:`Model`: ``await model.answer(batch, context)``
gives one :class:`Answer` per image. Every answer has a label, a score and a ranked
``top_k``, whatever the model is; what one kind of model adds (a face model's faces) travels
in ``details``, under a prediction field named in :data:`DETAIL_FIELDS`. The stage copies
the details into the prediction and the sink stores them, neither naming a model kind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.preprocess import TopK
from models.spec import ModelSpec

#: Prediction fields a kind of model may add, each with the keys of its items that only the
#: ``predictions`` collection keeps (vectors for search); ``images`` shows the rest.
DETAIL_FIELDS: Mapping[str, frozenset[str]] = {"faces": frozenset({"embedding"})}

#: ``(name, embedding)`` pairs a model compares what it finds with (enrolled people).
Known = Sequence[tuple[str, np.ndarray]]


@dataclass(frozen=True)
class Answer:
    """A model's answer for one image, as a prediction carries it."""

    label: str
    score: float
    top_k: list[dict[str, Any]]
    #: Fields of :data:`DETAIL_FIELDS` this answer fills (``{"faces": [...]}``).
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.details) - set(DETAIL_FIELDS)
        if unknown:
            raise ValueError(f"answer details {sorted(unknown)} are not prediction fields")


@dataclass(frozen=True)
class Context:
    """What the stage offers a model for one batch, besides the pixels.

    ``run``: runs a blocking call in the model's own thread (the event loop keeps
    heart-beating); ``sizes``: each image's original (width, height); ``known``: the
    references a model compares with, for its name and version (None: none are kept).
    """

    run: Callable[..., Awaitable[Any]]
    sizes: Sequence[tuple[int, int]]
    known: Callable[[str, str], Awaitable[Known]] | None = None


class Model(Protocol):
    """A loaded model plug-in: its spec, and one call per batch."""

    spec: ModelSpec

    @property
    def input_size(self) -> tuple[int, int]: ...

    async def answer(self, batch: np.ndarray, context: Context) -> list[Answer]: ...


def ranked_answers(results: Sequence[TopK]) -> list[Answer]:
    """A classifier's ranked (label, score) lists as answers: the best names the image."""
    return [
        Answer(top[0][0], float(top[0][1]), [{"label": label, "score": float(score)} for label, score in top])
        for top in results
    ]


def stored_details(details: Mapping[str, Any], full: bool) -> dict[str, Any]:
    """A prediction's details as a collection keeps them: all of them (``full``), or without
    the keys :data:`DETAIL_FIELDS` names for each item (vectors ``images`` does not search)."""
    out: dict[str, Any] = {}
    for name, value in details.items():
        if value is None:
            continue
        private = DETAIL_FIELDS[name]
        out[name] = value if full else [{k: v for k, v in item.items() if k not in private} for item in value]
    return out
