"""Training a head and evaluating a model (lifecycle/training.py, lifecycle/scoring.py, the commands).

A tiny real Keras base (tests/tiny_model.py: average colour, then a dense layer) keeps these
fast: its pooled features are an image's mean RGB, so warm and cool images separate.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lifecycle.evaluation import Target
from lifecycle.scoring import EvaluationError, evaluate_folder
from lifecycle.training import (
    FeatureCache,
    HeadOptions,
    TrainingError,
    features_for,
    read_labelled_folder,
    split,
    train,
)
from models.spec import load_spec
from tests.support import Pipeline
from tests.tiny_model import redblue_spec

FAST = HeadOptions(epochs=30, learning_rate=0.1, seed=3)


def colour_images(folder: Path, label: str, rgb: tuple[int, int, int], n: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    (folder / label).mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        jitter = [max(0, min(255, c + rng.randint(-40, 40))) for c in rgb]
        path = folder / label / f"{label}-{i:02d}.png"
        Image.new("RGB", (48, 40), tuple(jitter)).save(path)  # type: ignore[arg-type]
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    return load_spec(
        redblue_spec(tmp_path_factory.mktemp("base"), name="tiny", version="1", labels=("r", "b"), size=32)
    )


@pytest.fixture
def warm_cool(tmp_path: Path) -> Path:
    data = tmp_path / "warm-cool"
    colour_images(data, "warm", (220, 60, 40), 12, seed=1)
    colour_images(data, "cool", (40, 70, 220), 12, seed=2)
    return data


def test_a_labelled_folder_binary_and_multi_class(tmp_path: Path):
    for label in ("cat", "dog", "fox"):
        colour_images(tmp_path, label, (100, 100, 100), 2, seed=0)
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()

    multi = read_labelled_folder(tmp_path)
    assert multi.labels == ["cat", "dog", "fox"]
    assert multi.counts == {"cat": 2, "dog": 2, "fox": 2}

    binary = read_labelled_folder(tmp_path, binary="dog")
    assert binary.labels == ["not dog", "dog"]
    assert binary.counts == {"not dog": 4, "dog": 2}
    two = tmp_path / "two"
    colour_images(two, "face", (1, 1, 1), 1, seed=0)
    colour_images(two, "other", (1, 1, 1), 1, seed=0)
    assert read_labelled_folder(two, binary="face").labels == ["other", "face"]


@pytest.mark.parametrize(
    ("folders", "binary", "message"),
    [
        ([], None, "no sub-folders"),
        (["only"], None, "needs at least two"),
        (["a", "b"], "c", "not a sub-folder"),
        (["a"], "a", "needs negative examples"),
    ],
)
def test_folders_that_cannot_train_say_why(tmp_path: Path, folders, binary, message):
    for name in folders:
        colour_images(tmp_path, name, (1, 1, 1), 1, seed=0)
    with pytest.raises(TrainingError, match=message):
        read_labelled_folder(tmp_path, binary=binary)


def test_the_split_is_stratified_and_seeded():
    labels = ["a"] * 10 + ["b"] * 5
    train_idx, held = split(labels, 0.2, seed=7)
    assert sorted(train_idx + held) == list(range(15))
    assert [labels[i] for i in held].count("a") == 2 and [labels[i] for i in held].count("b") == 1
    assert split(labels, 0.2, seed=7) == (train_idx, held)
    assert split(labels, 0.0, seed=7) == (list(range(15)), [])
    with pytest.raises(TrainingError, match="one image"):
        split(["a", "a", "b"], 0.3, seed=0)


def test_features_are_cached_by_content_and_bad_files_skipped(tmp_path: Path, base, warm_cool: Path):
    (warm_cool / "warm" / "notes.png").write_text("not an image")
    examples = read_labelled_folder(warm_cool).examples
    first = features_for(examples, base, FeatureCache(tmp_path / "cache", base))
    assert len(first.examples) == 24 and first.cached == 0
    assert [(p.name, why.split(":")[0]) for p, why in first.skipped] == [("notes.png", "not_an_image")]
    # mean RGB of a warm image (the base's pooled features, after 'unit' scaling): red leads
    warm = first.vectors[[e.label == "warm" for e in first.examples]]
    assert (warm[:, 0] > warm[:, 2]).all()

    again = features_for(examples, base, FeatureCache(tmp_path / "cache", base))
    assert again.cached == 24
    np.testing.assert_allclose(again.vectors, first.vectors, rtol=1e-6)


def test_a_trained_model_is_an_ordinary_spec_that_classifies(tmp_path: Path, base, warm_cool: Path):
    from models.backends import load_classifier

    trained = train(warm_cool, base, tmp_path / "m", name="warmth", version="2", options=FAST, val=0.25)
    spec = load_spec(tmp_path / "m" / "model.toml")
    assert (spec.key, spec.output, spec.labels, spec.format) == (
        "warmth:2",
        "softmax",
        ["cool", "warm"],
        "keras",
    )
    assert (spec.input_size, spec.preprocessing) == (base.input_size, base.preprocessing)

    record = json.loads((tmp_path / "m" / "training.json").read_text())
    assert record["base"] == "tiny:1" and record["counts"] == {"cool": 12, "warm": 12}
    assert len(record["split"]["held_out"]) == 6 and len(record["history"]["loss"]) == FAST.epochs
    assert record["held_out_metrics"]["accuracy"] == trained.record["held_out_metrics"]["accuracy"]

    new = tmp_path / "new"
    colour_images(new, "warm", (200, 50, 50), 3, seed=11)
    colour_images(new, "cool", (50, 50, 200), 3, seed=12)
    model = load_classifier(spec)
    pixels = [np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in sorted(new.rglob("*.png"))]
    top = [answer[0][0] for answer in model.predict(np.stack(pixels))]
    assert top == ["cool"] * 3 + ["warm"] * 3

    with pytest.raises(TrainingError, match="exists"):
        train(warm_cool, base, tmp_path / "m", options=FAST)


def test_the_same_seed_trains_the_same_weights(tmp_path: Path, base, warm_cool: Path):
    import keras

    weights = []
    for run in ("a", "b"):
        train(warm_cool, base, tmp_path / run, version=run, options=FAST, cache_dir=tmp_path / "cache")
        model = keras.saving.load_model(tmp_path / run / f"{warm_cool.name}.keras", compile=False)
        weights.append([w.copy() for w in model.get_weights()])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_binary_model_gets_a_threshold_and_is_judged_on_its_held_out_split(
    tmp_path: Path, base, warm_cool: Path
):
    trained = train(
        warm_cool, base, tmp_path / "m", binary="warm", options=FAST, val=0.25, target=Target("recall", 1.0)
    )
    spec = trained.spec
    assert (spec.output, spec.negative_label, spec.positive_label) == ("sigmoid", "cool", "warm")
    assert spec.threshold == pytest.approx(trained.record["threshold"], abs=1e-4)

    result = evaluate_folder(spec, warm_cool)
    held = {Path(p) for p, _ in trained.record["split"]["held_out"]}
    assert result["held_out"] is True and result["metrics"]["images"] == len(held) == 6
    assert result["binary"]["chosen"]["recall"] == 1.0
    assert result["binary"]["roc_auc"] == pytest.approx(1.0)
    # the whole folder when asked: the training images too
    assert evaluate_folder(spec, warm_cool, every_image=True)["metrics"]["images"] == 24


def test_evaluating_a_folder_whose_labels_the_model_lacks_is_refused(tmp_path: Path, base, warm_cool: Path):
    colour_images(warm_cool, "green", (40, 200, 40), 2, seed=3)
    with pytest.raises(EvaluationError, match="green"):
        evaluate_folder(base, warm_cool)


def test_train_and_evaluate_commands_store_the_evaluation(
    pipeline: Pipeline, tmp_path: Path, base, warm_cool
):
    (warm_cool / "cool" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    trained = pipeline.run(
        "train",
        "--data",
        str(warm_cool),
        "--base",
        str(base.spec_path),
        "--out",
        str(tmp_path / "m"),
        "--binary",
        "warm",
        "--version",
        "7",
        "--epochs",
        "30",
        "--learning-rate",
        "0.1",
        "--seed",
        "3",
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    assert "skipped" in trained.stderr and "broken.png" in trained.stderr
    assert "trained warm-cool:7 from 24 images" in trained.stdout
    spec = tmp_path / "m" / "model.toml"

    test_set = tmp_path / "test-set"
    colour_images(test_set, "warm", (230, 40, 40), 4, seed=21)
    colour_images(test_set, "cool", (40, 40, 230), 4, seed=22)
    judged = pipeline.run("evaluate", "--model", str(spec), "--data", str(test_set), "--json", timeout=300)
    assert judged.returncode == 0, judged.stderr
    result = json.loads(judged.stdout)
    assert result["model"] == "warm-cool:7" and result["held_out"] is False
    assert result["metrics"]["images"] == 8
    assert result["metrics"]["confusion"] == {"labels": ["cool", "warm"], "matrix": [[4, 0], [0, 4]]}
    reports = sorted((tmp_path / "m" / "evaluations").iterdir())
    assert [p.suffix for p in reports] == [".html", ".json"]
    page = reports[0].read_text()
    assert "ROC AUC" in page and "data:image/png;base64," in page

    stored = list(pipeline.mongo().evaluations.find())
    assert [(d["model"], d["metrics"]["accuracy"]) for d in stored] == [("warm-cool:7", 1.0)]

    refused = pipeline.run("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert refused.returncode == 1 and "not a folder" in refused.stderr


def test_a_model_trained_for_tflite_answers_as_its_keras_original(tmp_path: Path, base, warm_cool: Path):
    from models.backends import load_classifier

    trained = train(warm_cool, base, tmp_path / "m", version="3", options=FAST, tflite=True)
    keras_spec = load_spec(tmp_path / "m" / "model-keras.toml")
    assert (trained.spec.format, trained.spec.key) == ("tflite", f"{warm_cool.name}:3")
    assert (keras_spec.format, keras_spec.key) == ("keras", f"{warm_cool.name}:3-keras")

    pixels = np.stack(
        [np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in sorted(warm_cool.rglob("*.png"))]
    )
    fast, original = load_classifier(trained.spec), load_classifier(keras_spec)
    np.testing.assert_allclose(fast.predict_raw(pixels), original.predict_raw(pixels), atol=1e-4)
