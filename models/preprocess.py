"""Pure image and score helpers around a model call (numpy and Pillow only).

The decode stage calls :func:`fit_to_input` and ships uint8 pixels; the classify stage calls
:func:`normalize` right before the model and :func:`interpret` right after it. Keeping them
here, free of TensorFlow, lets them be unit-tested and reused by any backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .spec import ModelSpec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TopK",
    "fit_to_input",
    "interpret",
    "normalize",
    "sigmoid",
    "softmax",
    "top_k",
]

#: One image's answer: (label, score) pairs, best first; the classify stage turns it into an
#: :class:`imgflow.records.Prediction` message.
TopK = list[tuple[str, float]]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The largest centred box of the target aspect ratio that fits inside the image."""
    target_h, target_w = size
    if width * target_h > height * target_w:  # image is wider than the target: trim the sides
        crop_w = height * target_w / target_h
        left = (width - crop_w) / 2
        return (left, 0.0, left + crop_w, float(height))
    crop_h = width * target_h / target_w  # taller (or equal): trim top and bottom
    top = (height - crop_h) / 2
    return (0.0, top, float(width), top + crop_h)


def fit_to_input(img: Image.Image, size: tuple[int, int], resize: str) -> np.ndarray:
    """Resize an image to a model's input as a uint8 (height, width, 3) array.

    ``center_crop`` keeps the aspect ratio by cropping the largest centred region of the
    target's aspect ratio before a bilinear resize; ``stretch`` resizes bilinearly without
    cropping; ``letterbox`` scales the whole image to fit (never up) and pads the right and
    bottom with black, so a box found in the tensor is in the image's pixels once divided
    by :func:`letterbox_scale`. Non-RGB images are converted to RGB.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (height, width), got {size}")
    if img.mode != "RGB":
        img = img.convert("RGB")
    if resize == "letterbox":
        return _letterbox(img, size)
    if resize == "center_crop":
        box = _crop_box(img.width, img.height, size)
    elif resize == "stretch":
        box = (0.0, 0.0, float(img.width), float(img.height))
    else:
        raise ValueError(f"unknown resize {resize!r}; expected 'center_crop', 'stretch' or 'letterbox'")
    # Pillow crops with sub-pixel precision inside resize(box=...), with no extra copy.
    resized = img.resize((width, height), Image.Resampling.BILINEAR, box=box)
    array = np.asarray(resized, dtype=np.uint8)
    return np.ascontiguousarray(array)


def letterbox_scale(width: int, height: int, size: tuple[int, int]) -> float:
    """How much ``letterbox`` scales an image of ``width`` x ``height`` into ``size`` (at most 1)."""
    target_h, target_w = size
    return min(1.0, target_w / width, target_h / height)


def _letterbox(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    scale = letterbox_scale(img.width, img.height, size)
    new_w = min(width, max(1, round(img.width * scale)))
    new_h = min(height, max(1, round(img.height * scale)))
    out = np.zeros((height, width, 3), dtype=np.uint8)
    fitted = img if (new_w, new_h) == img.size else img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    out[:new_h, :new_w] = np.asarray(fitted, dtype=np.uint8)
    return out


def normalize(batch_uint8: np.ndarray, preprocessing: str) -> np.ndarray:
    """Map uint8 pixels to the float32 range a model was trained on."""
    x = np.asarray(batch_uint8, dtype=np.float32)
    if preprocessing == "none":
        return x
    if preprocessing == "unit":
        return x / np.float32(255.0)
    if preprocessing == "symmetric":
        return x / np.float32(127.5) - np.float32(1.0)
    if preprocessing == "imagenet":
        return (x / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD
    if preprocessing == "127_128":
        return (x - np.float32(127.0)) / np.float32(128.0)
    raise ValueError(
        f"unknown preprocessing {preprocessing!r}; expected none, unit, symmetric, imagenet or 127_128"
    )


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    probs: np.ndarray = e / e.sum(axis=axis, keepdims=True)
    return probs


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function that does not overflow for large negative inputs."""
    z = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[TopK]:
    """The k best (label, score) pairs per row, best first; ties keep class order."""
    scores = np.asarray(probs)
    if scores.ndim != 2:
        raise ValueError(f"expected scores shaped (batch, classes), got {scores.shape}")
    if scores.shape[1] != len(labels):
        raise ValueError(f"model gives {scores.shape[1]} scores but there are {len(labels)} labels")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(labels[i], float(row[i])) for i in idx] for row, idx in zip(scores, order, strict=True)]


def interpret(raw_outputs: np.ndarray, spec: ModelSpec) -> list[TopK]:
    """Turn one batch of raw model outputs into ranked (label, score) lists per image.

    Softmax models give their top-k classes. Sigmoid models give both outcomes, the chosen one
    first: the positive label when its probability reaches ``spec.threshold``.
    """
    raw = np.asarray(raw_outputs, dtype=np.float64)
    if spec.output == "softmax":
        if raw.ndim != 2:
            raise ValueError(f"softmax model output must be (batch, classes), got {raw.shape}")
        probs = softmax(raw, axis=1) if spec.logits else raw
        return top_k(probs, spec.labels, spec.top_k)

    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise ValueError(f"sigmoid model output must be (batch,) or (batch, 1), got {raw.shape}")
    probs = sigmoid(raw) if spec.logits else raw
    negative, positive = spec.labels
    results: list[TopK] = []
    for p in probs:
        p = float(p)
        pos, neg = (positive, p), (negative, 1.0 - p)
        results.append([pos, neg] if p >= spec.threshold else [neg, pos])
    return results
