"""Run a model over a labelled folder and judge it: what ``faust -A imgflow evaluate`` reports.

Images go through the pipeline's own decode path (draft JPEG decoding, the spec's resize)
and the model's own backend, so the figures are those of the model as imgflow serves it.
A folder the model was trained from is judged on its held-out split only (read from the
model's ``training.json``) unless every image is asked for: the training images would
flatter it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.evaluation import Target, binary_metrics, classification_metrics
from lifecycle.training import TRAINING_FILE, Example, TrainingError, read_labelled_folder
from models.spec import ModelSpec

__all__ = ["EvaluationError", "evaluate_folder", "examples_to_judge"]

#: How many misclassified images an evaluation lists (worst first).
MISTAKES = 50


class EvaluationError(TrainingError):
    """The folder and the model do not fit together (the message says how)."""


@dataclass
class Selection:
    examples: list[Example]
    held_out: bool  # only the split the model did not train on


def _label_folder(data: Path, spec: ModelSpec) -> list[Example]:
    """The folder's examples, labelled with the model's labels.

    A sigmoid model (or a softmax over two labels) reads its positive label's folder as
    positive and every other folder as negative; a softmax model needs a folder per label
    it is judged on, each named after a label it has.
    """
    binary = spec.output == "sigmoid"
    if binary:
        names = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
        if spec.positive_label not in names:
            raise EvaluationError(
                f"{data} has no {spec.positive_label!r} folder (the positive label of {spec.key}); "
                f"found: {', '.join(names) or 'none'}"
            )
        folder = read_labelled_folder(data, binary=spec.positive_label)
        return [
            Example(e.path, spec.positive_label if e.label == spec.positive_label else spec.negative_label)
            for e in folder.examples
        ]
    folder = read_labelled_folder(data)
    unknown = sorted(set(folder.labels) - set(spec.labels))
    if unknown:
        raise EvaluationError(
            f"{data} has folders for labels {spec.key} does not know: {', '.join(unknown)} "
            f"(its labels: {', '.join(spec.labels[:20])}{'...' if len(spec.labels) > 20 else ''})"
        )
    return folder.examples


def examples_to_judge(spec: ModelSpec, data: Path, every_image: bool = False) -> Selection:
    """The examples to evaluate on: the held-out split when ``data`` trained this model."""
    data = Path(data).resolve()
    if not data.is_dir():
        raise EvaluationError(f"{data} is not a folder of labelled sub-folders")
    examples = _label_folder(data, spec)
    record_path = spec.spec_path.parent / TRAINING_FILE
    if every_image or not record_path.exists():
        return Selection(examples, held_out=False)
    record = json.loads(record_path.read_text())
    if Path(record.get("data", "")) != data:
        return Selection(examples, held_out=False)
    held = {path for path, _ in record["split"]["held_out"]}
    if not held:
        raise EvaluationError(
            f"{spec.key} was trained on every image of {data} (--val 0): nothing is held out; "
            "evaluate on another folder, or pass --all to judge it on its training images"
        )
    return Selection([e for e in examples if str(e.path) in held], held_out=True)


def evaluate_folder(
    spec: ModelSpec,
    data: Path,
    *,
    target: Target = Target(),
    every_image: bool = False,
    batch_size: int = 32,
    classifier: Any = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """Accuracy, per-class figures, the confusion matrix (and ROC AUC, a sweep and a chosen
    threshold for a binary model) of ``spec`` on ``data``, as one JSON-ready dict."""
    from imgflow.imaging import ImageRejected, decode_image
    from models.backends import load_classifier

    started = time.perf_counter()
    selection = examples_to_judge(spec, data, every_image)
    model = classifier or load_classifier(spec)
    step = progress("evaluate", len(selection.examples)) if progress else None
    truths: list[str] = []
    paths: list[str] = []
    rows: list[np.ndarray] = []
    skipped: list[list[str]] = []
    batch: list[tuple[Example, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        raw = np.asarray(model.predict_raw(np.stack([pixels for _, pixels in batch])), dtype=np.float64)
        for (example, _), row in zip(batch, raw.reshape(len(batch), -1), strict=True):
            truths.append(example.label)
            paths.append(str(example.path))
            rows.append(row)
        batch.clear()

    for example in selection.examples:
        try:
            decoded = decode_image(example.path, spec.input_size, spec.resize)
        except ImageRejected as exc:
            skipped.append([str(example.path), f"{exc.kind}: {exc.message}"])
        else:
            batch.append((example, decoded.tensor))
            if len(batch) >= batch_size:
                flush()
        if step is not None:
            step(1)
    flush()
    if not truths:
        raise EvaluationError(f"no readable images to evaluate in {data}")
    scores = probabilities(np.stack(rows), spec)
    binary = spec.output == "sigmoid" or len(spec.labels) == 2
    result: dict[str, Any] = {
        "model": spec.key,
        "spec": str(spec.spec_path),
        "data": str(Path(data).resolve()),
        "held_out": selection.held_out,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "skipped": skipped,
    }
    positive: np.ndarray | None
    if spec.output == "sigmoid":
        positive = scores[:, 0]
        predicted = [spec.labels[int(p >= spec.threshold)] for p in positive]
        confidence = np.where(positive >= spec.threshold, positive, 1 - positive)
    else:
        predicted = [spec.labels[int(i)] for i in scores.argmax(axis=1)]
        confidence = scores.max(axis=1)
        positive = scores[:, 1] if binary else None
    labels = (
        spec.labels if binary else [label for label in spec.labels if label in set(truths) | set(predicted)]
    )
    result["metrics"] = classification_metrics(truths, predicted, labels)
    if binary and positive is not None:
        result["binary"] = {
            "positive_label": spec.labels[1],
            "threshold_in_spec": spec.threshold if spec.output == "sigmoid" else None,
            **binary_metrics([t == spec.labels[1] for t in truths], positive, target),
        }
    wrong = [i for i, (t, p) in enumerate(zip(truths, predicted, strict=True)) if t != p]
    wrong.sort(key=lambda i: -float(confidence[i]))
    result["mistakes"] = [
        {"path": paths[i], "label": truths[i], "predicted": predicted[i], "score": float(confidence[i])}
        for i in wrong[:MISTAKES]
    ]
    result["seconds"] = time.perf_counter() - started
    return result


def probabilities(raw: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Scores in [0, 1] per image: (n, classes) for softmax, (n, 1) positive-class for sigmoid."""
    from models.preprocess import sigmoid, softmax

    if spec.output == "sigmoid":
        column = raw.reshape(len(raw), -1)[:, :1]
        return sigmoid(column) if spec.logits else column
    return softmax(raw, axis=1) if spec.logits else raw
