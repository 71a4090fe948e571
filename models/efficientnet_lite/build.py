"""Build the default model into a folder: network + weights -> artefacts, once, at set-up.

The one entry point for every caller: ``faust -A imgflow build-model`` (imgflow/cli/model.py,
also run by ``make model`` and the Dockerfile), the demo launcher, the tests and the benchmarks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .artefacts import (
    ARTEFACT_NAME,
    LABELS_NAME,
    MODEL_VERSION,
    SPEC_NAME,
    TFLITE_NAME,
    TFLITE_SPEC_NAME,
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
    tflite: bool = False,
    checkpoint: str | Path | None = None,
) -> Path:
    """Write the default model, its labels and its spec into ``out_dir``; return the spec path.

    Files: ``efficientnet-lite0.keras``, ``labels.txt``, ``model.toml`` and, with ``tflite``,
    ``efficientnet-lite0.tflite`` and ``model-tflite.toml``. Existing outputs are kept unless
    ``force`` (a conversion takes seconds and every worker start would otherwise pay it); the
    spec is written last, so an interrupted build never leaves a spec pointing at a
    half-written artefact.
    """
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec_path, artefact = out / SPEC_NAME, out / ARTEFACT_NAME
    labels_path = out / LABELS_NAME
    tflite_spec, tflite_path = out / TFLITE_SPEC_NAME, out / TFLITE_NAME

    keras_done = spec_path.is_file() and artefact.is_file() and labels_path.is_file()
    tflite_done = tflite_spec.is_file() and tflite_path.is_file()
    if not force and keras_done and (tflite_done or not tflite):
        log.info("default model already built in %s; pass force=True to rebuild", out)
        return spec_path

    started = time.perf_counter()
    model: keras.Model | None = None
    if force or not keras_done:
        source, state = load_checkpoint(checkpoint)
        model, mapping = build_efficientnet_lite0()
        load_torch_weights(model, mapping, state)
        write_atomically(labels_path, ("\n".join(imagenet_labels()) + "\n").encode())
        save_keras(model, artefact)
        fields = spec_fields("keras", MODEL_VERSION, ARTEFACT_NAME)
        write_atomically(spec_path, spec_text(fields).encode())
        log.info("wrote %s from %s in %.1f s", artefact, source, time.perf_counter() - started)

    if tflite and (force or not tflite_done):
        if model is None:
            import keras

            model = keras.saving.load_model(artefact, compile=False)
        write_atomically(tflite_path, keras_to_tflite(model))
        fields = spec_fields("tflite", f"{MODEL_VERSION}-tflite", TFLITE_NAME)
        write_atomically(tflite_spec, spec_text(fields).encode())
        log.info("wrote %s", tflite_path)
    return spec_path
