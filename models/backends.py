"""Run a model described by a :class:`~models.spec.ModelSpec`: Keras, SavedModel or TFLite.

One :class:`Classifier` per worker, loaded once on start and called with whole batches from an
executor thread. Keras and SavedModel make one model call per batch; TFLite invokes its
interpreter once per image (or per fixed batch), which is as fast on a CPU and never reallocates.
TensorFlow is imported when a model is loaded, never when this module is imported.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .answers import Answer, Context, Model, ranked_answers
from .preprocess import TopK, interpret, normalize
from .spec import ModelError, ModelLoadError, ModelSpec, ModelSpecError

__all__ = ["Classifier", "ModelLoadError", "load_classifier", "load_model"]

log = logging.getLogger(__name__)


Shape = tuple[int | None, ...]


class _Runner:
    """One loaded model: float32 NHWC batch in, raw output array out."""

    input_shape: Shape
    output_shape: Shape

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _dims(shape: Any) -> Shape:
    """A shape as a tuple of ints, None for unknown dimensions (-1 in TFLite signatures)."""
    out: list[int | None] = []
    for d in shape:
        d = getattr(d, "value", d)  # TensorShape dims in older TF
        out.append(None if d is None or int(d) < 0 else int(d))
    return tuple(out)


class _KerasRunner(_Runner):
    def __init__(self, spec: ModelSpec, threads: int) -> None:
        # TensorFlow sizes its own thread pools (all cores) once per process; ``threads`` is
        # for the interpreters that take it per model (TFLite).
        import keras

        self.model = keras.saving.load_model(spec.artefact, compile=False)
        if len(self.model.inputs) != 1 or len(self.model.outputs) != 1:
            raise ModelSpecError(
                f"{spec.key}: a classifier has one input and one output; {spec.artefact} has "
                f"{len(self.model.inputs)} inputs and {len(self.model.outputs)} outputs"
            )
        self.input_shape = _dims(self.model.inputs[0].shape)
        self.output_shape = _dims(self.model.outputs[0].shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # predict_on_batch runs the compiled graph once; calling the model eagerly is ~10x slower.
        return np.asarray(self.model.predict_on_batch(x))


class _SavedModelRunner(_Runner):
    def __init__(self, spec: ModelSpec, threads: int) -> None:
        import tensorflow as tf

        self._tf = tf
        self.loaded = tf.saved_model.load(str(spec.artefact))  # keeps the signature's vars alive
        signatures = getattr(self.loaded, "signatures", {})
        if "serving_default" not in signatures:
            raise ModelLoadError(
                f"{spec.key}: SavedModel {spec.artefact} has no 'serving_default' signature "
                f"(has: {', '.join(signatures) or 'none'})"
            )
        self.fn = signatures["serving_default"]
        args, kwargs = self.fn.structured_input_signature
        inputs = list(args) + list(kwargs.items())
        if len(inputs) != 1:
            raise ModelSpecError(
                f"{spec.key}: serving_default must take one image tensor, it takes {len(inputs)}"
            )
        self.input_name: str | None
        self.input_name, input_spec = next(iter(kwargs.items())) if kwargs else (None, args[0])
        self.input_dtype = input_spec.dtype
        self.input_shape = _dims(input_spec.shape)
        outputs = self.fn.structured_outputs
        if isinstance(outputs, dict):
            if len(outputs) != 1:
                raise ModelSpecError(
                    f"{spec.key}: serving_default must give one output, it gives {', '.join(sorted(outputs))}"
                )
            self.output_name, output_spec = next(iter(outputs.items()))
        else:
            self.output_name, output_spec = None, outputs
        self.output_shape = _dims(output_spec.shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        tensor = self._tf.constant(x, dtype=self.input_dtype)
        result = self.fn(**{self.input_name: tensor}) if self.input_name else self.fn(tensor)
        if self.output_name is not None:
            result = result[self.output_name]
        return np.asarray(result)


def _tflite_interpreter(path: str, threads: int) -> Any:
    """A TFLite interpreter: LiteRT's if installed, else the one TensorFlow still ships."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            # TF 2.21 warns that tf.lite.Interpreter moves to ai_edge_litert; it still works.
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            return tf.lite.Interpreter(model_path=path, num_threads=threads)
    return Interpreter(model_path=path, num_threads=threads)


def default_threads() -> int:
    """All the cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _TFLiteRunner(_Runner):
    def __init__(self, spec: ModelSpec, threads: int) -> None:
        # The interpreter runs one thread unless told; XNNPACK scales to the cores given.
        self.interpreter = _tflite_interpreter(str(spec.artefact), threads)
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelSpecError(
                f"{spec.key}: a classifier has one input and one output; {spec.artefact} has "
                f"{len(inputs)} inputs and {len(outputs)} outputs"
            )
        self.input_detail, self.output_detail = inputs[0], outputs[0]
        signature = _dims(self.input_detail.get("shape_signature", self.input_detail["shape"]))
        out_signature = self.output_detail.get("shape_signature", self.output_detail["shape"])
        self.output_shape = (None, *_dims(out_signature)[1:])
        self.input_shape = (None, *signature[1:]) if signature else ()
        # One invoke per image (or per fixed batch, for models converted with one): XNNPACK
        # parallelises inside each image, so a bigger batch buys nothing on a CPU (measured
        # with the default model, 2 threads: 241 images/s one at a time, 202 at 32), and one
        # shape means the tensors are allocated once, not again for every batch of a new size.
        self.batch_resizable = bool(signature) and signature[0] is None
        self.chunk = 1 if self.batch_resizable else int(self.input_detail["shape"][0])
        if self.batch_resizable:
            height, width = spec.input_size
            self.interpreter.resize_tensor_input(self.input_detail["index"], [1, height, width, 3])
        else:
            log.info("%s: TFLite batch size is fixed at %s", spec.key, self.chunk)
        self.interpreter.allocate_tensors()

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input_detail["dtype"]
        if np.issubdtype(dtype, np.floating):
            return x.astype(dtype, copy=False)
        scale, zero_point = self.input_detail["quantization"]
        if scale:
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
        return x.astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        scale, zero_point = self.output_detail["quantization"]
        if scale and not np.issubdtype(y.dtype, np.floating):
            dequantized: np.ndarray = (y.astype(np.float32) - zero_point) * scale
            return dequantized
        return y

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_detail["index"], self._quantize(x))
        self.interpreter.invoke()
        # get_tensor copies, so the buffer can be reused by the next invoke.
        return self._dequantize(self.interpreter.get_tensor(self.output_detail["index"]))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = self.chunk
        parts = [self._invoke(x[i : i + n]) for i in range(0, x.shape[0], n)]
        return np.concatenate(parts, axis=0)


_RUNNERS: dict[str, Callable[[ModelSpec, int], _Runner]] = {
    "keras": _KerasRunner,
    "savedmodel": _SavedModelRunner,
    "tflite": _TFLiteRunner,
}


class Classifier:
    """A loaded model and its spec: ``predict`` takes a uint8 batch and names the answers.

    Thread-safe: calls are serialised, because a TFLite interpreter and a Keras model's first
    traced call must not run concurrently. TensorFlow parallelises inside each call.
    """

    def __init__(self, spec: ModelSpec, runner: _Runner) -> None:
        self.spec = spec
        self._runner = runner
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Classifier({self.spec.key!r}, format={self.spec.format!r})"

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    def predict_raw(self, batch: np.ndarray) -> np.ndarray:
        """One model call for the whole batch: uint8 (N, H, W, 3) in, raw outputs out."""
        x = np.asarray(batch)
        height, width = self.spec.input_size
        if x.ndim != 4 or x.shape[1:] != (height, width, 3):
            raise ValueError(f"{self.spec.key} takes a batch shaped (N, {height}, {width}, 3), got {x.shape}")
        if x.dtype != np.uint8:
            raise ValueError(f"{self.spec.key} takes uint8 pixels, got {x.dtype}")
        inputs = normalize(x, self.spec.preprocessing)
        with self._lock:
            return self._runner(inputs)

    def predict(self, batch: np.ndarray) -> list[TopK]:
        """Ranked (label, score) lists, one per image, best first."""
        if len(batch) == 0:
            return []
        return interpret(self.predict_raw(batch), self.spec)

    async def answer(self, batch: np.ndarray, context: Context) -> list[Answer]:
        """The plug-in interface (models/answers.py): one call in the model's thread."""
        return ranked_answers(await context.run(self.predict, batch))


def _check_artefact(spec: ModelSpec) -> None:
    path = spec.artefact
    if not path.exists():
        raise ModelLoadError(f"{spec.key}: artefact {path} (named in {spec.spec_path}) is missing")
    if spec.format == "savedmodel":
        if not (path / "saved_model.pb").is_file():
            raise ModelLoadError(f"{spec.key}: {path} is not a SavedModel directory (no saved_model.pb)")
    elif not path.is_file():
        raise ModelLoadError(f"{spec.key}: artefact {path} is not a file")


def _check_shapes(spec: ModelSpec, runner: _Runner) -> None:
    height, width = spec.input_size
    shape = runner.input_shape
    if len(shape) != 4 or shape[3] not in (3, None):
        raise ModelSpecError(f"{spec.key}: model input is {shape}; expected an image batch (N, H, W, 3)")
    if (shape[1] not in (height, None)) or (shape[2] not in (width, None)):
        raise ModelSpecError(
            f"{spec.key}: spec input_size is {height}x{width} but the model takes "
            f"{shape[1]}x{shape[2]} ({spec.artefact})"
        )
    _check_output(spec, runner.output_shape)


def _check_output(spec: ModelSpec, shape: Shape) -> None:
    if spec.output == "softmax":
        if len(shape) != 2 or shape[1] not in (len(spec.labels), None):
            raise ModelSpecError(
                f"{spec.key}: the model gives outputs shaped {shape} but the spec has "
                f"{len(spec.labels)} labels"
            )
    elif not (len(shape) == 1 or (len(shape) == 2 and shape[1] in (1, None))):
        raise ModelSpecError(f"{spec.key}: a sigmoid model must give one score per image, it gives {shape}")


def load_model(spec: ModelSpec, threads: int | None = None) -> Model:
    """Any model plug-in a spec names, loaded and warmed up: what the model cache holds."""
    if spec.format == "faces":  # the built-in detector + embedder, weights in its packages
        from models.face_model import load_face_model

        return load_face_model(spec, threads)
    return load_classifier(spec, threads=threads)


def load_classifier(spec: ModelSpec, *, warm_up: bool = True, threads: int | None = None) -> Classifier:
    """Load the spec's artefact with the backend its ``format`` names.

    ``threads``: how many threads one model call may use (TFLite; TensorFlow sizes its own
    pools); all the cores unless given.

    Checks that the model's input and output shapes agree with the spec and, unless
    ``warm_up`` is false, runs one blank image through it so the first real batch does not pay
    for graph tracing and a broken model fails here, at start, not on the first message.
    Safe to call from a worker thread.
    """
    if spec.format == "faces":
        raise ModelSpecError(f"{spec.key}: a face model answers with faces (load it with load_model)")
    _check_artefact(spec)
    started = time.perf_counter()
    try:
        runner = _RUNNERS[spec.format](spec, threads or default_threads())
    except ModelError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{spec.key}: cannot load {spec.format} artefact {spec.artefact}: {exc}"
        ) from exc
    _check_shapes(spec, runner)
    classifier = Classifier(spec, runner)
    if warm_up:
        height, width = spec.input_size
        blank = np.zeros((1, height, width, 3), dtype=np.uint8)
        try:
            raw = classifier.predict_raw(blank)
        except Exception as exc:
            raise ModelLoadError(f"{spec.key}: the model fails on a blank image: {exc}") from exc
        _check_output(spec, raw.shape)
    log.info(
        "loaded model %s (%s, %s) in %.1f s",
        spec.key,
        spec.format,
        spec.artefact,
        time.perf_counter() - started,
    )
    return classifier
