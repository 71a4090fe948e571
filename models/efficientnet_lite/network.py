"""The EfficientNet-Lite0 network, rebuilt layer for layer in Keras, untrained.

The graph follows the checkpoint's source implementation (``efficientnet_lite_pytorch``, a port
of the TensorFlow reference whose weights were converted from TensorFlow), because the weights
only give the published accuracy in the graph they were trained in:

- convolutions pad like TensorFlow's ``SAME``, computed statically for a 224x224 input: a
  stride-2 convolution on an even-sized input pads one pixel less before than after
  (``Conv2dStaticSamePadding``). Symmetric ``(k - 1) // 2`` padding is *not* what the weights
  were trained with; it shifts every stride-2 sampling grid by one pixel and lowers accuracy.
- BatchNorm epsilon is 1e-3 (TensorFlow's), not PyTorch's default 1e-5.
- ReLU6 everywhere, no squeeze-and-excite, stem fixed at 32 channels and head at 1280.

Building the graph also records which Keras layer takes which checkpoint tensors
(:data:`LayerMapping`), so that :mod:`.weights` needs no knowledge of the architecture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import keras

__all__ = [
    "BN_EPSILON",
    "HEAD_CHANNELS",
    "INPUT_SIZE",
    "NUM_CLASSES",
    "STAGES",
    "STEM_CHANNELS",
    "LayerKind",
    "LayerMapping",
    "build_efficientnet_lite0",
]

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

LayerKind = Literal["conv", "depthwise", "bn", "dense"]
# (checkpoint tensor prefix, Keras layer name, kind), in build order.
LayerMapping = list[tuple[str, str, LayerKind]]


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) for one spatial dimension of a static size."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _keras_name(torch_name: str) -> str:
    return torch_name.strip("_").replace("._", "_").replace(".", "_")


class _Builder:
    """Builds the functional graph and remembers which Keras layer takes which torch tensors.

    Keras tensors are typed ``Any``: Keras ships no type information for its symbolic tensors.
    """

    def __init__(self, layers: Any) -> None:
        self.layers = layers
        self.mapping: LayerMapping = []

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


def build_efficientnet_lite0(
    num_classes: int = NUM_CLASSES, input_size: tuple[int, int] = INPUT_SIZE
) -> tuple[keras.Model, LayerMapping]:
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
