"""Build the default model into a folder: network + weights -> artefacts, once, at set-up.

The one entry point for every caller: ``faust -A imgflow build-model`` (cli/model.py,
also run by ``make model`` and the Dockerfile), the demo launcher, the tests and the benchmarks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .artefacts import (
    ARTEFACT_NAME,
    KERAS_SPEC_NAME,
    KERAS_VERSION,
    LABELS_NAME,
    MODEL_VERSION,
    SPEC_NAME,
    TFLITE_NAME,
    keras_to_tflite,
    save_keras,
    spec_fields,
    spec_text,
    write_atomically,
)
from .labels import imagenet_labels
from .network import build_efficientnet_lite0
from .weights import load_checkpoint, load_torch_weights

if TYPE_CHECKING:
    import keras

__all__ = ["build_default_model"]

log = logging.getLogger("models.efficientnet_lite")


def build_default_model(
    out_dir: str | Path,
    *,
    force: bool = False,
    checkpoint: str | Path | None = None,
) -> Path:
    """Write the default model, its labels and its specs into ``out_dir``; return the spec path.

    Files: ``efficientnet-lite0.keras`` (the network rebuilt from the checkpoint),
    ``efficientnet-lite0.tflite`` (converted from it), ``labels.txt``, ``model.toml`` (the
    default: TFLite, version 1.0.0) and ``model-keras.toml`` (the same network in Keras,
    version 1.0.0-keras). Existing outputs are kept unless ``force`` (a build takes tens of
    seconds and every worker start would otherwise pay it); a ``model.toml`` from before the
    default became TFLite is replaced. Specs are written last, so an interrupted build never
    leaves a spec pointing at a half-written artefact.
    """
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec_path, keras_spec = out / SPEC_NAME, out / KERAS_SPEC_NAME
    keras_path, tflite_path, labels_path = out / ARTEFACT_NAME, out / TFLITE_NAME, out / LABELS_NAME

    keras_done = keras_path.is_file() and labels_path.is_file()
    tflite_done = tflite_path.is_file() and _is_tflite_spec(spec_path) and keras_spec.is_file()
    if not force and keras_done and tflite_done:
        log.info("default model already built in %s; pass force=True to rebuild", out)
        return spec_path

    started = time.perf_counter()
    model: keras.Model | None = None
    if force or not keras_done:
        source, state = load_checkpoint(checkpoint)
        model, mapping = build_efficientnet_lite0()
        load_torch_weights(model, mapping, state)
        write_atomically(labels_path, ("\n".join(imagenet_labels()) + "\n").encode())
        save_keras(model, keras_path)
        log.info("wrote %s from %s in %.1f s", keras_path, source, time.perf_counter() - started)
    if model is None:
        import keras

        model = keras.saving.load_model(keras_path, compile=False)
    write_atomically(tflite_path, keras_to_tflite(model))
    write_atomically(keras_spec, spec_text(spec_fields("keras", KERAS_VERSION, ARTEFACT_NAME)).encode())
    write_atomically(spec_path, spec_text(spec_fields("tflite", MODEL_VERSION, TFLITE_NAME)).encode())
    log.info("wrote %s and %s in %.1f s", tflite_path, spec_path, time.perf_counter() - started)
    return spec_path


def _is_tflite_spec(path: Path) -> bool:
    """Whether ``path`` is a spec of the TFLite default (not one written before it was)."""
    import tomllib

    try:
        return bool(tomllib.loads(path.read_text()).get("format") == "tflite")
    except (OSError, tomllib.TOMLDecodeError):
        return False
