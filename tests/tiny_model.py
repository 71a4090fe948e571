"""A real, tiny Keras classifier for tests: red-dominant images -> first label, blue -> second.

Global average pooling and one dense layer with fixed weights: deterministic,
built in well under a second, and a real model spec that the workers load
like any other.
"""

from __future__ import annotations

from pathlib import Path


def redblue_spec(
    folder: Path,
    *,
    name: str,
    version: str,
    labels: tuple[str, str],
    size: int = 224,
    resize: str = "center_crop",
) -> Path:
    """Write ``<name>.keras``, ``labels.txt`` and ``model.toml`` into ``folder``; return the spec."""
    import keras
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(pooled)
    model = keras.Model(inputs, outputs)
    weights = np.array([[20.0, -20.0], [0.0, 0.0], [-20.0, 20.0]], dtype=np.float32)
    model.layers[-1].set_weights([weights, np.zeros(2, dtype=np.float32)])
    model.save(folder / f"{name}.keras")
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    spec = folder / "model.toml"
    spec.write_text(
        f'name = "{name}"\nversion = "{version}"\nformat = "keras"\nartefact = "{name}.keras"\n'
        f'input_size = [{size}, {size}]\nresize = "{resize}"\npreprocessing = "unit"\n'
        'output = "softmax"\nlabels_file = "labels.txt"\ntop_k = 2\n'
    )
    return spec
