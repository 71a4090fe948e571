"""Training data: a labelled folder read, and its images as a base model's pooled features.

Every image goes through the pipeline's own decode path (draft JPEG decoding, the spec's
resize) and the base model up to the input of its last dense layer; features are cached by the
file's SHA-256 per base model version (:class:`FeatureCache`), so a second training run decodes
and runs nothing again. Used by :mod:`lifecycle.training` and :mod:`lifecycle.scoring`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.preprocess import fit_to_input, normalize
from models.spec import ModelSpec, ModelSpecError, load_spec

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


class TrainingError(ValueError):
    """The data or the options cannot make a model (the message says what to change)."""


@dataclass(frozen=True)
class Example:
    path: Path
    label: str


@dataclass
class LabelledFolder:
    root: Path
    labels: list[str]  # the model's class order; binary: [negative, positive]
    examples: list[Example]
    folders: dict[str, str] = field(default_factory=dict)  # sub-folder -> label

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(e.label for e in self.examples)
        return {label: found[label] for label in self.labels}


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_labelled_folder(root: Path, binary: str | None = None) -> LabelledFolder:
    """The examples under ``root``: one sub-folder per label (files in nested folders count).

    ``binary``: the sub-folder of the positive class; every other one is negative, named
    after that folder when there is one, else ``not <positive>``.
    """
    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"{root} is not a folder of labelled sub-folders")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise TrainingError(f"{root} has no sub-folders: put each label's images in a folder named after it")
    names = [p.name for p in folders]
    if binary is not None:
        if binary not in names:
            raise TrainingError(
                f"--binary {binary!r} is not a sub-folder of {root} (found: {', '.join(names)})"
            )
        others = [n for n in names if n != binary]
        if not others:
            raise TrainingError(f"{root} has only {binary!r}: a binary model needs negative examples too")
        negative = others[0] if len(others) == 1 else f"not {binary}"
        mapping = {n: (binary if n == binary else negative) for n in names}
        labels = [negative, binary]
    else:
        if len(names) < 2:
            raise TrainingError(f"{root} has one label ({names[0]}): a classifier needs at least two")
        mapping = {n: n for n in names}
        labels = names
    examples = [Example(path, mapping[folder.name]) for folder in folders for path in _image_files(folder)]
    found = LabelledFolder(root, labels, examples, mapping)
    empty = [label for label, n in found.counts.items() if n == 0]
    if empty:
        raise TrainingError(f"no images for label(s) {', '.join(empty)} under {root}")
    return found


def keras_base(spec: ModelSpec) -> ModelSpec:
    """The Keras spec to take features from: ``spec`` itself, or its Keras sibling.

    A TFLite model has no layers to cut at, so a TFLite base (the default model) is taken
    from the Keras artefact of the same model beside it (``build-model`` writes both).
    """
    if spec.format == "keras":
        return spec
    for candidate in sorted(spec.spec_path.parent.glob("*.toml")):
        if candidate == spec.spec_path:
            continue
        try:
            sibling = load_spec(candidate)
        except ModelSpecError:
            continue
        if sibling.format == "keras" and sibling.name == spec.name:
            return sibling
    raise TrainingError(
        f"{spec.key} is a {spec.format} model: training needs a Keras base; pass --base a Keras "
        f"spec (no Keras spec of {spec.name} beside {spec.spec_path})"
    )


def cut_at_head(model: keras.Model) -> tuple[Any, Any]:
    """The model's input and the tensor its last dense layer reads (the pooled features)."""
    import keras

    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Dense):
            return model.inputs[0], layer.input
    raise TrainingError(f"{model.name} has no dense layer to replace")


class FeatureCache:
    """Pooled features by file SHA-256, for one base model version, in one ``.npz`` file."""

    def __init__(self, folder: Path | None, base: ModelSpec) -> None:
        slug = "".join(c if c.isalnum() or c in "-._" else "_" for c in base.key)
        self.path = Path(folder) / f"{slug}.npz" if folder else None
        self.vectors: dict[str, np.ndarray] = {}
        self.added = 0
        if self.path is not None and self.path.exists():
            try:
                with np.load(self.path) as data:
                    self.vectors = dict(zip(data["keys"].tolist(), data["features"], strict=True))
            except Exception as exc:  # a torn or foreign file: start again, say so
                log.warning("ignoring the feature cache %s: %s", self.path, exc)

    def get(self, sha256: str) -> np.ndarray | None:
        return self.vectors.get(sha256)

    def put(self, sha256: str, vector: np.ndarray) -> None:
        self.vectors[sha256] = vector
        self.added += 1

    def save(self) -> None:
        if self.path is None or not self.added:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.vectors), dtype=str)
        features = np.stack(list(self.vectors.values())).astype(np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, keys=keys, features=features)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, self.path)


@dataclass
class Features:
    vectors: np.ndarray  # (n, d) float32
    examples: list[Example]  # the ones that gave a vector, in order
    skipped: list[tuple[Path, str]]  # (file, why)
    cached: int  # how many came from the cache


def features_for(
    examples: Sequence[Example],
    base: ModelSpec,
    cache: FeatureCache,
    *,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> Features:
    """Pooled features of every example that decodes; the rest are skipped with the reason."""
    from imgflow.imaging import DRAFT_MARGIN, ImageRejected, Limits, decode_bytes, read_file

    extractor: Callable[[np.ndarray], np.ndarray] | None = None
    vectors: list[np.ndarray | None] = []
    kept: list[Example] = []
    skipped: list[tuple[Path, str]] = []
    pending: list[tuple[int, str, np.ndarray]] = []  # (slot, sha256, pixels)
    cached = 0

    def flush() -> None:
        nonlocal extractor
        if not pending:
            return
        if extractor is None:
            extractor = feature_extractor(base)
        out = extractor(np.stack([pixels for _, _, pixels in pending]))
        for (slot, sha, _), vector in zip(pending, out, strict=True):
            vectors[slot] = vector
            cache.put(sha, vector)
        pending.clear()

    limits = Limits()
    for example in examples:
        try:
            data = read_file(example.path, limits)
        except ImageRejected as exc:
            skipped.append((example.path, f"{exc.kind}: {exc.message}"))
        else:
            sha = hashlib.sha256(data).hexdigest()
            hit = cache.get(sha)
            if hit is not None:
                cached += 1
                kept.append(example)
                vectors.append(hit)
            else:
                try:
                    opened = decode_bytes(
                        data, example.path.name, limits, DRAFT_MARGIN * max(base.input_size)
                    )
                    pixels = fit_to_input(opened.image, base.input_size, base.resize)
                except ImageRejected as exc:
                    skipped.append((example.path, f"{exc.kind}: {exc.message}"))
                else:
                    kept.append(example)
                    vectors.append(None)
                    pending.append((len(vectors) - 1, sha, pixels))
                    if len(pending) >= batch_size:
                        flush()
        if progress is not None:
            progress(1)
    flush()
    cache.save()
    dims = next((len(v) for v in vectors if v is not None), 0)
    matrix = np.stack([v for v in vectors if v is not None]) if kept else np.zeros((0, dims))
    return Features(matrix.astype(np.float32), kept, skipped, cached)


def feature_extractor(base: ModelSpec) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a uint8 batch to the base model's pooled features."""
    import keras

    model = keras.saving.load_model(base.artefact, compile=False)
    inputs, pooled = cut_at_head(model)
    cut = keras.Model(inputs, pooled)

    def extract(batch: np.ndarray) -> np.ndarray:
        return np.asarray(cut.predict_on_batch(normalize(batch, base.preprocessing)), dtype=np.float32)

    return extract
