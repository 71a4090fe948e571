"""Stage 2, classify: ``imgflow-tensors`` -> ``imgflow-predictions``.

Batches tensors, runs one model call per batch in a dedicated thread so the
event loop keeps heart-beating, and emits one prediction per image with the
model name and version that made it. Every model answers through one interface
(models/answers.py): the stage names no kind of model; what a kind adds (a face model's
faces) is copied into the prediction as the model gives it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from faust.types import EventT, StreamT, TopicT

from agents.stage import Outcome, Stage
from imgflow.app import app, settings
from imgflow.metrics import METRICS
from imgflow.people import People
from imgflow.records import DecodedImage, Prediction, dumps, parse_tensor
from imgflow.retry import retry
from imgflow.tensors import IN_MONGO, TensorStore, blob_id
from imgflow.topics import failed_topic, predictions_topic, tensors_topic
from models.answers import Answer, Context, Model
from models.registry import ModelCache, ModelRegistry, registry_for
from models.spec import ModelSpec

log = logging.getLogger(__name__)


class TensorRejected(ValueError):
    kind = "bad_tensor"


class TensorGone(LookupError):
    kind = "tensor_gone"


@dataclass(frozen=True)
class Tensor:
    """An ``imgflow-tensors`` message, read: the record (a failure record reads it), the pixels,
    and where they are when not in the message (``imgflow.tensors``)."""

    record: DecodedImage
    pixels: bytes
    elsewhere: bytes | None = None

    @property
    def blob(self) -> str:
        return blob_id(self.record.image_id, self.record.decoded_at)


def parse_event(event: EventT[bytes]) -> Tensor:
    return Tensor(*parse_tensor(event.value, event.headers))


def to_array(item: Tensor, expected: tuple[int, int]) -> np.ndarray:
    shape = tuple(item.record.shape)
    if shape != (expected[0], expected[1], 3):
        raise TensorRejected(f"tensor shape {shape} does not match model input {expected}")
    if len(item.pixels) != expected[0] * expected[1] * 3:
        raise TensorRejected(f"tensor has {len(item.pixels)} bytes, expected {expected[0] * expected[1] * 3}")
    return np.frombuffer(item.pixels, dtype=np.uint8).reshape(shape)


def predictions_for(
    items: list[DecodedImage],
    answers: list[Answer],
    spec: ModelSpec,
    inference_ms: float,
) -> list[Prediction]:
    now = time.time()
    return [
        Prediction(
            ref=item.ref,
            predicted_at=now,
            label=answer.label,
            score=answer.score,
            top_k=answer.top_k,
            model=spec.name,
            model_version=spec.version,
            inference_ms=inference_ms,
            batch_size=len(items),
            meta=item.meta,
            attrs=item.attrs,
            **answer.details,
        )
        for item, answer in zip(items, answers, strict=True)
    ]


async def classify_group(
    items: list[DecodedImage],
    arrays: list[np.ndarray],
    model: Model,
    thread: Executor,
    people: People | None = None,
) -> tuple[list[Prediction], list[tuple[DecodedImage, Exception]]]:
    """One model call for the group (in the model's thread); if the model rejects it, isolate the culprits."""
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    context = Context(
        run=partial(loop.run_in_executor, thread),
        sizes=[(item.meta.width, item.meta.height) for item in items],
        known=people.of if people is not None else None,
    )
    try:
        answers = await model.answer(np.stack(arrays), context)
        elapsed = (time.perf_counter() - started) * 1000
        METRICS.inference.labels(model.spec.key).observe(elapsed / 1000)
        METRICS.classified.labels(model.spec.key).inc(len(items))
        return predictions_for(items, answers, model.spec, elapsed), []
    except Exception as exc:
        if len(items) == 1:
            exc.kind = "model_error"  # type: ignore[attr-defined]
            return [], [(items[0], exc)]
        log.warning("model rejected a batch of %d, retrying one by one: %s", len(items), exc)
    preds: list[Prediction] = []
    failed: list[tuple[DecodedImage, Exception]] = []
    for item, array in zip(items, arrays, strict=True):
        p, f = await classify_group([item], [array], model, thread, people)
        preds += p
        failed += f
    return preds, failed


class Classify:
    """Groups a batch by the model each tensor was decoded for; one model call per group."""

    def __init__(
        self,
        models: ModelCache,
        tensors: TensorStore | None = None,
        people: People | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        self.models = models
        self.tensors = tensors
        self.people = people
        self.registry = registry or registry_for(settings.model_dir_paths, settings.model_spec_path)

    async def claim(self, items: list[Tensor], outcome: Outcome) -> list[Tensor]:
        """Fetch the pixels stored beside their messages; mark them done once the batch is safe.

        Pixels already done belong to an image classified before (a redelivery): skipped.
        Pixels gone (expired, ``IMGFLOW_TENSOR_TTL``) fail the image as ``tensor_gone``.
        """
        claimed = [item for item in items if item.elsewhere is not None]
        if not claimed:
            return items
        if self.tensors is None or any(item.elsewhere != IN_MONGO for item in claimed):
            for item in claimed:
                outcome.failed.append((item, TensorRejected(f"pixels stored in {item.elsewhere!r}: unknown")))
            return [item for item in items if item.elsewhere is None]
        store = self.tensors
        found = await retry("read pixels", partial(asyncio.to_thread, store.take, [i.blob for i in claimed]))
        ready: list[Tensor] = []
        for item in items:
            if item.elsewhere is None:
                ready.append(item)
            elif item.blob not in found:
                gone = TensorGone(
                    f"the decoded pixels were dropped before classification (older than IMGFLOW_TENSOR_TTL="
                    f"{store.ttl:g}s); retry the image from its path"
                )
                outcome.failed.append((item, gone))
            elif (pixels := found[item.blob]) is None:
                METRICS.redelivered.labels("classify").inc()
            else:
                ready.append(replace(item, pixels=pixels))
        done = [i.blob for i in claimed if found.get(i.blob) is not None]

        async def mark_done() -> None:
            await retry("mark pixels done", partial(asyncio.to_thread, store.done, done))

        outcome.then = mark_done
        return ready

    async def batch(self, items: list[Tensor]) -> Outcome:
        outcome = Outcome()
        items = await self.claim(items, outcome)
        groups: dict[Path, list[tuple[DecodedImage, np.ndarray]]] = defaultdict(list)
        specs: dict[Path, ModelSpec] = {}
        for item in items:
            try:
                # A registered model only (models/registry.py): the record names it, nothing more.
                spec = await self.registry.aresolve(item.record.model)
                specs[spec.spec_path] = spec
                groups[spec.spec_path].append((item.record, to_array(item, spec.input_size)))
            except Exception as exc:
                outcome.failed.append((item, exc))
        for spec_path, group in groups.items():
            try:
                model = await self.models.get(specs[spec_path])
            except Exception as exc:
                exc.kind = "model_unavailable"  # type: ignore[attr-defined]
                outcome.failed += [(item, exc) for item, _ in group]
                continue
            preds, failed = await classify_group(
                [item for item, _ in group],
                [array for _, array in group],
                model,
                self.models.executor,
                self.people,
            )
            outcome.outputs += [(p, p.image_id, dumps(p)) for p in preds]
            outcome.failed += failed
        return outcome


def stage(
    models: ModelCache,
    output: TopicT = predictions_topic,
    failures: TopicT = failed_topic,
    tensors: TensorStore | None = None,
    people: People | None = None,
    registry: ModelRegistry | None = None,
) -> Stage[Tensor]:
    return Stage(
        "classify",
        parse=parse_event,
        process=Classify(models, tensors, people, registry).batch,
        output=output,
        failures=failures,
        batch_size=settings.batch_size,
    )


@app.agent(tensors_topic)
async def classify(stream: StreamT[bytes]) -> None:
    resources = app.resources
    await stage(
        resources.models, tensors=resources.tensors, people=resources.people, registry=resources.registry
    ).run(stream)
