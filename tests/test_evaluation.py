"""Evaluation figures against values computed by hand on tiny sets (lifecycle/evaluation.py)."""

from __future__ import annotations

import pytest

from lifecycle.evaluation import (
    Target,
    binary_metrics,
    choose_threshold,
    classification_metrics,
    parse_target,
    threshold_sweep,
)


def test_accuracy_per_class_figures_and_confusion_by_hand():
    # cat: 3 images, 2 right (one called dog); dog: 2 images, 1 right (one called cat); bird: 1, right.
    truth = ["cat", "cat", "cat", "dog", "dog", "bird"]
    called = ["cat", "cat", "dog", "dog", "cat", "bird"]
    m = classification_metrics(truth, called, ["cat", "dog", "bird", "fish"])

    assert m["images"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # cat: TP 2, FP 1 (the dog called cat), FN 1 -> precision 2/3, recall 2/3, F1 2/3
    assert m["per_class"]["cat"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    # dog: TP 1, FP 1 (the cat called dog), FN 1 -> 1/2 each
    assert m["per_class"]["dog"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["bird"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1})
    # a label with no images and no predictions: zeros, and left out of the macro F1
    assert m["per_class"]["fish"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert m["confusion"] == {
        "labels": ["cat", "dog", "bird", "fish"],
        "matrix": [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]],
    }


def test_threshold_sweep_counts_at_a_threshold_by_hand():
    positive = [True, True, True, False, False]
    scores = [0.9, 0.6, 0.3, 0.6, 0.1]
    at = {row["threshold"]: row for row in threshold_sweep(positive, scores)}

    # >= 0.6 calls 0.9, 0.6 (positive) and 0.6 (negative) positive
    assert {k: at[0.6][k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert at[0.6]["precision"] == pytest.approx(2 / 3)
    assert at[0.6]["recall"] == pytest.approx(2 / 3)
    assert at[0.6]["specificity"] == pytest.approx(1 / 2)
    assert at[0.6]["accuracy"] == pytest.approx(3 / 5)
    # 0 calls everything positive; above every score calls nothing
    assert at[0.0]["recall"] == 1.0 and at[0.0]["fp"] == 2
    assert at[0.95]["tp"] == 0 and at[0.95]["precision"] == 0.0 and at[0.95]["f1"] == 0.0


def test_the_chosen_threshold_for_best_f1_and_for_a_minimum_recall():
    positive = [True, True, True, False, False]
    scores = [0.9, 0.6, 0.3, 0.6, 0.1]
    sweep = threshold_sweep(positive, scores)

    best = choose_threshold(sweep, Target())
    # F1 at (0.1, 0.3]: TP 3, FP 1 -> 6/7, the best; of its thresholds, the nearest 0.5 is 0.3
    assert best["f1"] == pytest.approx(6 / 7)
    assert best["threshold"] == pytest.approx(0.3)
    # recall >= 0.6 (2 of 3): the highest threshold still finding two is 0.6
    screen = choose_threshold(sweep, Target("recall", 0.6))
    assert screen["threshold"] == pytest.approx(0.6) and screen["met"]
    # recall 1.0 needs every positive: 0.3 at most
    assert choose_threshold(sweep, Target("recall", 1.0))["threshold"] == pytest.approx(0.3)


def test_an_unreachable_recall_is_reported_not_met():
    sweep = threshold_sweep([True, False], [0.4, 0.2], thresholds=[0.5, 0.9])
    chosen = choose_threshold(sweep, Target("recall", 0.9))
    assert chosen["met"] is False
    assert chosen["recall"] == 0.0


def test_roc_auc_by_hand_and_undefined_for_one_class():
    # pairs (positive, negative): 0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1 -> 3 of 4 ordered right
    found = binary_metrics([True, True, False, False], [0.9, 0.4, 0.5, 0.1])
    assert found["roc_auc"] == pytest.approx(0.75)
    assert (found["positives"], found["negatives"]) == (2, 2)
    assert found["roc"]["fpr"][-1] == 1.0 and found["roc"]["tpr"][-1] == 1.0
    assert binary_metrics([True, True], [0.9, 0.4])["roc_auc"] is None


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("best-f1", Target()),
        ("F1", Target()),
        ("recall:0.95", Target("recall", 0.95)),
        ("recall>=0.9", Target("recall", 0.9)),
    ],
)
def test_targets_as_typed(text, target):
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["precision:0.9", "recall:1.5", "recall:abc", ""])
def test_unknown_targets_are_refused(text):
    with pytest.raises(ValueError):
        parse_target(text)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="3 true labels but 2"):
        classification_metrics(["a", "b", "a"], ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="no images"):
        classification_metrics([], [], ["a"])
    with pytest.raises(ValueError):
        threshold_sweep([True, False], [0.5])
