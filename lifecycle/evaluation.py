"""How good a model is on labelled images: pure metrics over true labels and scores.

Everything here takes arrays and returns plain dicts (JSON as it is), so the
``evaluate`` command, the training's threshold choice and the dashboard share one
definition of each figure, and the figures can be checked by hand on tiny sets.
scikit-learn computes them; this module picks which and names them.

A binary model (sigmoid, or a softmax over two labels) also gets ROC AUC and a
threshold sweep, and a threshold is chosen for a target: the best F1, or the highest
threshold that still finds a minimum share of the positives (a screen that must not
miss its cases, say ``recall >= 0.95``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Target",
    "binary_metrics",
    "choose_threshold",
    "classification_metrics",
    "parse_target",
    "threshold_sweep",
]

#: The thresholds a sweep tries: 0.00, 0.01, ... 1.00.
THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)


@dataclass(frozen=True)
class Target:
    """What a chosen threshold optimises: ``best_f1``, or ``recall`` with a minimum."""

    kind: str = "best_f1"
    minimum: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind == "best_f1" else f"recall>={self.minimum:g}"


def parse_target(text: str) -> Target:
    """``best-f1`` or ``recall:0.95`` (also ``recall>=0.95``), as the command line gives it."""
    cleaned = text.strip().lower().replace("_", "-")
    if cleaned in ("best-f1", "f1"):
        return Target()
    for sep in (">=", ":", "="):
        if cleaned.startswith("recall" + sep):
            try:
                minimum = float(cleaned[len("recall" + sep) :])
            except ValueError:
                break
            if not 0.0 < minimum <= 1.0:
                raise ValueError(f"a minimum recall is in (0, 1], got {minimum:g}")
            return Target("recall", minimum)
    raise ValueError(f"unknown target {text!r}: use best-f1 or recall:0.95")


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix.

    ``labels`` orders the classes (the model's); a label neither true nor predicted still
    gets a row. ``confusion[i][j]`` counts images of ``labels[i]`` predicted as ``labels[j]``.
    A class never predicted has precision 0 (scikit-learn's ``zero_division=0``).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no images to evaluate")
    names = list(labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=names, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=names)
    correct = sum(t == p for t, p in zip(y_true, y_pred, strict=True))
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    present = [name for name in names if per_class[name]["support"]]
    return {
        "images": len(y_true),
        "accuracy": correct / len(y_true),
        "macro_f1": float(np.mean([per_class[name]["f1"] for name in present])) if present else 0.0,
        "per_class": per_class,
        "confusion": {"labels": names, "matrix": matrix.tolist()},
    }


def _binary_counts(positive: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    predicted = scores >= threshold
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    tn = int(np.sum(~predicted & ~positive))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": f1,
        "accuracy": (tp + tn) / len(scores),
    }


def threshold_sweep(
    positive: ArrayLike, scores: ArrayLike, thresholds: Sequence[float] = tuple(THRESHOLDS)
) -> list[dict[str, Any]]:
    """Counts and rates at each threshold: an image is called positive when its score >= it."""
    truth = np.asarray(positive, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    if truth.shape != values.shape or truth.ndim != 1:
        raise ValueError(f"{truth.shape} truths but {values.shape} scores")
    if not len(values):
        raise ValueError("no images to sweep")
    return [_binary_counts(truth, values, float(t)) for t in thresholds]


def choose_threshold(sweep: list[dict[str, Any]], target: Target = Target()) -> dict[str, Any]:
    """The sweep's row for ``target``.

    ``best_f1``: the highest F1; ties go to the threshold nearest 0.5 (the least surprising).
    ``recall``: the highest threshold whose recall still reaches the minimum (the fewest
    false alarms for that recall); if none does, the row with the best recall, marked
    ``met: False``.
    """
    if not sweep:
        raise ValueError("an empty sweep")
    if target.kind == "best_f1":
        row = max(sweep, key=lambda r: (r["f1"], -abs(r["threshold"] - 0.5)))
        return {**row, "target": str(target), "met": True}
    if target.kind != "recall":
        raise ValueError(f"unknown target {target.kind!r}")
    reaching = [r for r in sweep if r["recall"] >= target.minimum]
    if reaching:
        return {**max(reaching, key=lambda r: r["threshold"]), "target": str(target), "met": True}
    best = max(sweep, key=lambda r: (r["recall"], r["threshold"]))
    return {**best, "target": str(target), "met": False}


def binary_metrics(positive: ArrayLike, scores: ArrayLike, target: Target = Target()) -> dict[str, Any]:
    """ROC AUC, the ROC curve, the threshold sweep and the threshold chosen for ``target``.

    AUC is None when the images hold only one class (it is undefined then).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    truth = np.asarray(positive, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    sweep = threshold_sweep(truth, values)
    both = 0 < int(truth.sum()) < len(truth)
    fpr, tpr, _ = roc_curve(truth, values) if both else (np.array([]), np.array([]), None)
    return {
        "positives": int(truth.sum()),
        "negatives": int((~truth).sum()),
        "roc_auc": float(roc_auc_score(truth, values)) if both else None,
        "roc": {"fpr": [float(x) for x in fpr], "tpr": [float(x) for x in tpr]},
        "sweep": sweep,
        "chosen": choose_threshold(sweep, target),
    }
