"""Transfer learning: a new head on a base model's pooled features, written as an ordinary spec.

``faust -A imgflow train`` calls :func:`train`. The steps, each measured:

1. **Read the folder** (:func:`read_labelled_folder`): one sub-folder per label; with
   ``binary`` one of them is the positive class and the rest are the negative one.
2. **Features** (:func:`features_for`): every image goes through the same decode path as the
   pipeline (draft JPEG decoding, the spec's resize) and the base model up to the input of its
   last dense layer (EfficientNet-Lite0: the 1280-d average pool). Features are cached by the
   file's SHA-256 per base model version, so a second run (more epochs, another split, another
   positive class) decodes and runs nothing again. A file that cannot be read or decoded is
   reported and skipped.
3. **Split** (:func:`split`): stratified and seeded; ``val`` of each class is held out.
4. **Head** (:func:`fit_head`): dropout and one dense layer (softmax over the labels, or one
   sigmoid score), seeded; on the held-out split a sigmoid model's threshold is chosen for a
   target (:mod:`lifecycle.evaluation`).
5. **Write** (:func:`write_model`): the base network with the new head as one Keras model, its
   spec (a new version; the base's input size, resize and preprocessing), labels, and
   ``training.json``: the data, split, history, timings and held-out metrics.

Everything heavy (TensorFlow, Keras, scikit-learn) is imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tomli_w

from lifecycle.evaluation import Target, binary_metrics, classification_metrics
from lifecycle.features import (
    Example,
    FeatureCache,
    LabelledFolder,
    TrainingError,
    cut_at_head,
    features_for,
    keras_base,
    read_labelled_folder,
)
from models.spec import ModelSpec, load_spec

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

__all__ = [
    "Example",
    "FeatureCache",
    "LabelledFolder",
    "Trained",
    "TrainingError",
    "features_for",
    "keras_base",
    "read_labelled_folder",
    "split",
    "train",
]

#: The file name of a trained model's record beside its spec.
TRAINING_FILE = "training.json"
SPEC_FILE = "model.toml"
KERAS_SPEC_FILE = "model-keras.toml"


def split(labels: Sequence[str], val: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held out): ``val`` of each class held out, the same for the same seed."""
    from sklearn.model_selection import train_test_split

    indices = list(range(len(labels)))
    if val <= 0:
        return indices, []
    if not val < 1:
        raise TrainingError(f"--val is the share held out, in [0, 1): got {val:g}")
    counts = Counter(labels)
    few = sorted(label for label, n in counts.items() if n < 2)
    if few:
        raise TrainingError(
            f"label(s) {', '.join(few)} have one image: a held-out split needs two per label (or --val 0)"
        )
    held = max(len(counts), round(val * len(indices)))
    if len(indices) - held < len(counts):
        raise TrainingError(f"{len(indices)} images cannot hold out {held} and still train on every label")
    train_idx, val_idx = train_test_split(indices, test_size=held, stratify=list(labels), random_state=seed)
    return sorted(train_idx), sorted(val_idx)


@dataclass(frozen=True)
class HeadOptions:
    epochs: int = 40
    learning_rate: float = 3e-3
    batch_size: int = 32
    dropout: float = 0.2
    seed: int = 0


def fit_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: int,
    binary: bool,
    options: HeadOptions,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """A dropout + dense head on the features, seeded (same data and seed, same weights)."""
    import keras

    keras.utils.set_random_seed(options.seed)
    head = keras.Sequential(
        [
            keras.Input((x_train.shape[1],), name="pooled"),
            keras.layers.Dropout(options.dropout, name="head_dropout"),
            keras.layers.Dense(
                1 if binary else classes, activation="sigmoid" if binary else "softmax", name="head"
            ),
        ],
        name="head",
    )
    head.compile(
        optimizer=keras.optimizers.Adam(options.learning_rate),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks = []
    if on_epoch is not None:
        report = on_epoch
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: report(epoch, {k: float(v) for k, v in (logs or {}).items()})
            )
        )
    fitted = head.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val) if len(x_val) else None,
        epochs=options.epochs,
        batch_size=options.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    return head, history


def write_model(
    out: Path,
    base: ModelSpec,
    head: keras.Model,
    *,
    name: str,
    version: str,
    labels: list[str],
    binary: bool,
    threshold: float,
    record: dict[str, Any],
    tflite: bool = False,
) -> ModelSpec:
    """The base network with the new head, as a Keras artefact and its spec.

    With ``tflite`` the spec (``model.toml``) is a TFLite conversion, the fastest backend on a
    CPU, and ``model-keras.toml`` the Keras original (version ``<version>-keras``), as
    ``build-model`` writes the default model.
    """
    import keras

    from models.efficientnet_lite.artefacts import keras_to_tflite, save_keras, write_atomically

    out.mkdir(parents=True, exist_ok=True)
    model = keras.saving.load_model(base.artefact, compile=False)
    inputs, pooled = cut_at_head(model)
    full = keras.Model(inputs, head(pooled), name=name.replace(" ", "_"))
    artefact = f"{name}.keras"
    save_keras(full, out / artefact)
    spec: dict[str, Any] = {
        "name": name,
        "version": version,
        "format": "keras",
        "artefact": artefact,
        "input_size": list(base.input_size),
        "resize": base.resize,
        "preprocessing": base.preprocessing,
    }
    if binary:
        spec |= {"output": "sigmoid", "negative_label": labels[0], "positive_label": labels[1]}
        spec["threshold"] = round(threshold, 4)
    else:
        write_atomically(out / "labels.txt", ("\n".join(labels) + "\n").encode())
        spec |= {"output": "softmax", "labels_file": "labels.txt", "top_k": min(5, len(labels))}
    header = (
        f"# Trained by `faust -A imgflow train`: a new head on {base.key}'s pooled features,\n"
        f"# from {record['data']} (see {TRAINING_FILE}).\n"
    )
    if tflite:
        keras_spec = {**spec, "version": f"{version}-keras"}
        write_atomically(out / KERAS_SPEC_FILE, (header + tomli_w.dumps(keras_spec)).encode())
        write_atomically(out / f"{name}.tflite", keras_to_tflite(full))
        spec |= {"format": "tflite", "artefact": f"{name}.tflite"}
    write_atomically(out / SPEC_FILE, (header + tomli_w.dumps(spec)).encode())
    return load_spec(out / SPEC_FILE)


@dataclass
class Trained:
    spec: ModelSpec
    record: dict[str, Any]


def default_version() -> str:
    """A new version per training run: its UTC time, sortable (``2026.12.02-201500``)."""
    return time.strftime("%Y.%m.%d-%H%M%S", time.gmtime())


def train(
    data: Path,
    base_spec: ModelSpec,
    out: Path,
    *,
    name: str | None = None,
    version: str | None = None,
    binary: str | None = None,
    val: float = 0.2,
    target: Target = Target(),
    options: HeadOptions = HeadOptions(),
    cache_dir: Path | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    tflite: bool = False,
) -> Trained:
    """Train a head on ``data`` over ``base_spec`` and write the model to ``out`` (module docstring).

    ``progress(what, total)`` gives a callback advanced per image (a progress bar).
    """
    if (out / SPEC_FILE).exists():
        raise TrainingError(f"{out / SPEC_FILE} exists: train into a new folder (each version its own)")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    base = keras_base(base_spec)
    folder = read_labelled_folder(data, binary)
    cache = FeatureCache(cache_dir, base)
    step = progress("features", len(folder.examples)) if progress else None
    features = features_for(folder.examples, base, cache, progress=step)
    timings["features_s"] = time.perf_counter() - started
    truth = [e.label for e in features.examples]
    if len(set(truth)) < len(folder.labels):
        missing = sorted(set(folder.labels) - set(truth))
        raise TrainingError(f"no readable images left for label(s) {', '.join(missing)}")
    train_idx, val_idx = split(truth, val, options.seed)
    index = {label: i for i, label in enumerate(folder.labels)}
    y = np.array([index[label] for label in truth], dtype=np.float32 if binary else np.int64)
    x = features.vectors
    fitted = time.perf_counter()
    head, history = fit_head(
        x[train_idx],
        y[train_idx],
        x[val_idx],
        y[val_idx],
        len(folder.labels),
        binary is not None,
        options,
        on_epoch,
    )
    timings["head_s"] = time.perf_counter() - fitted
    held_out: dict[str, Any] | None = None
    threshold = 0.5
    if val_idx:
        scores = np.asarray(head.predict_on_batch(x[val_idx]))
        actual = [truth[i] for i in val_idx]
        if binary is not None:
            positive = scores.reshape(-1)
            curves = binary_metrics([a == folder.labels[1] for a in actual], positive, target)
            threshold = float(curves["chosen"]["threshold"])
            predicted = [folder.labels[int(s >= threshold)] for s in positive]
            held_out = {**classification_metrics(actual, predicted, folder.labels), "binary": curves}
        else:
            predicted = [folder.labels[int(i)] for i in scores.argmax(axis=1)]
            held_out = classification_metrics(actual, predicted, folder.labels)
    record: dict[str, Any] = {
        "base": base.key,
        "base_spec": str(base.spec_path),
        "data": str(Path(data).resolve()),
        "labels": folder.labels,
        "folders": folder.folders,
        "counts": Counter(truth),
        "skipped": [[str(p), why] for p, why in features.skipped],
        "seed": options.seed,
        "options": {**options.__dict__, "val": val, "target": str(target)},
        "features": {
            "dims": int(x.shape[1]),
            "computed": len(features.examples) - features.cached,
            "cached": features.cached,
            "cache": str(cache.path) if cache.path else None,
        },
        "split": {
            "train": [[str(features.examples[i].path), truth[i]] for i in train_idx],
            "held_out": [[str(features.examples[i].path), truth[i]] for i in val_idx],
        },
        "history": history,
        "threshold": threshold if binary is not None else None,
        "held_out_metrics": held_out,
    }
    wrote = time.perf_counter()
    spec = write_model(
        out,
        base,
        head,
        name=name or Path(data).resolve().name,
        version=version or default_version(),
        labels=folder.labels,
        binary=binary is not None,
        threshold=threshold,
        record=record,
        tflite=tflite,
    )
    timings["write_s"] = time.perf_counter() - wrote
    timings["total_s"] = time.perf_counter() - started
    record["seconds"] = timings
    from models.efficientnet_lite.artefacts import write_atomically

    write_atomically(out / TRAINING_FILE, json.dumps(record, indent=1).encode())
    return Trained(spec, record)
