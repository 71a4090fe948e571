"""An evaluation as one self-contained HTML page: tables and plots, no external files.

The plots (confusion matrix, ROC curve, threshold sweep) are matplotlib PNGs inlined as
data URIs, so the page can be mailed, archived or opened from the dashboard as it is.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

__all__ = ["render_html"]

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:980px;color:#1d232a;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem} h2{font-size:1.1rem;margin-top:2rem}
.sub{color:#5b6570} table{border-collapse:collapse;margin:.5rem 0}
td,th{padding:.25rem .6rem;border-bottom:1px solid #e3e7eb;text-align:right}
th:first-child,td:first-child{text-align:left} .tiles{display:flex;gap:1rem;flex-wrap:wrap}
.tile{border:1px solid #e3e7eb;border-radius:6px;padding:.6rem 1rem;min-width:8rem}
.tile b{display:block;font-size:1.4rem} code{font-size:12px}
.plots{display:flex;gap:1.5rem;flex-wrap:wrap;align-items:flex-start;margin-top:1.5rem}
.plots img{max-width:100%} .plots figure{margin:0} figcaption{font-weight:600;margin-bottom:.3rem}
"""


NO_PLOTS = (
    "Plots (confusion matrix, ROC curve, threshold sweep) need matplotlib: "
    "pip install 'imgflow[plots]'. The figures above are the same without them."
)


def has_matplotlib() -> bool:
    """Plots are an extra (``imgflow[plots]``): a production install evaluates without them."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def confusion_plot(confusion: dict[str, Any]) -> str:
    labels, matrix = confusion["labels"], confusion["matrix"]
    size = max(3.2, 0.45 * len(labels) + 2)
    fig, ax = _figure(size, size)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    fig.tight_layout()
    return _png(fig)


def roc_plot(binary: dict[str, Any]) -> str:
    fig, ax = _figure(3.6, 3.4)
    ax.plot(binary["roc"]["fpr"], binary["roc"]["tpr"], label=f"AUC {binary['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    chosen = binary["chosen"]
    ax.scatter(
        [1 - chosen["specificity"]],
        [chosen["recall"]],
        color="crimson",
        zorder=3,
        label=f"chosen threshold {chosen['threshold']:.2f}",
    )
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (recall)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _png(fig)


def sweep_plot(binary: dict[str, Any]) -> str:
    sweep = binary["sweep"]
    xs = [r["threshold"] for r in sweep]
    fig, ax = _figure(4.6, 3.4)
    for key in ("precision", "recall", "f1"):
        ax.plot(xs, [r[key] for r in sweep], label=key)
    ax.axvline(
        binary["chosen"]["threshold"],
        color="crimson",
        linestyle="--",
        linewidth=1,
        label=f"chosen ({binary['chosen']['target']})",
    )
    ax.set_xlabel("threshold")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    return _png(fig)


def _tile(name: str, value: str) -> str:
    return f'<div class="tile">{html.escape(name)}<b>{html.escape(value)}</b></div>'


def render_html(evaluation: dict[str, Any]) -> str:
    """The page for one result of :func:`lifecycle.scoring.evaluate_folder`."""
    e = html.escape
    metrics = evaluation["metrics"]
    binary = evaluation.get("binary")
    tiles = [
        _tile("images", f"{metrics['images']:,}"),
        _tile("accuracy", f"{metrics['accuracy']:.3f}"),
        _tile("macro F1", f"{metrics['macro_f1']:.3f}"),
    ]
    if binary and binary.get("roc_auc") is not None:
        chosen = binary["chosen"]
        tiles += [
            _tile("ROC AUC", f"{binary['roc_auc']:.3f}"),
            _tile(f"threshold ({chosen['target']})", f"{chosen['threshold']:.2f}"),
            _tile("accuracy at it", f"{chosen['accuracy']:.3f}"),
        ]
    rows = "".join(
        f"<tr><td>{e(label)}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
        f"<td>{m['f1']:.3f}</td><td>{m['support']}</td></tr>"
        for label, m in metrics["per_class"].items()
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>imgflow evaluation: {e(evaluation['model'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(evaluation['model'])}</h1>",
        f"<div class='sub'>on <code>{e(evaluation['data'])}</code>"
        f"{' (held-out split)' if evaluation.get('held_out') else ''}, {e(evaluation['created_at'])}</div>",
        f"<div class='tiles'>{''.join(tiles)}</div>",
        "<h2>Per class</h2><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th>"
        f"<th>images</th></tr>{rows}</table>",
    ]
    if has_matplotlib():
        figures = [("Confusion matrix", confusion_plot(metrics["confusion"]))]
        if binary and binary.get("roc_auc") is not None:
            figures += [("ROC curve", roc_plot(binary)), ("Threshold sweep", sweep_plot(binary))]
        parts.append(
            "<div class='plots'>"
            + "".join(f"<figure><figcaption>{e(name)}</figcaption>{img}</figure>" for name, img in figures)
            + "</div>"
        )
    else:
        parts.append(f"<p class='sub'>{e(NO_PLOTS)}</p>")
    if binary and binary.get("roc_auc") is not None:
        chosen = binary["chosen"]
        met = "" if chosen["met"] else " (not met: the best recall reachable is shown)"
        parts.append(
            f"<p>Chosen for <b>{e(chosen['target'])}</b>{met}: threshold {chosen['threshold']:.2f}, "
            f"precision {chosen['precision']:.3f}, recall {chosen['recall']:.3f}, F1 {chosen['f1']:.3f} "
            f"({chosen['tp']} TP, {chosen['fp']} FP, {chosen['fn']} FN, {chosen['tn']} TN). "
            f"The spec's threshold: {binary.get('threshold_in_spec')}.</p>"
        )
    if evaluation.get("mistakes"):
        wrong = "".join(
            f"<tr><td><code>{e(m['path'])}</code></td><td>{e(m['label'])}</td><td>{e(m['predicted'])}</td>"
            f"<td>{m['score']:.3f}</td></tr>"
            for m in evaluation["mistakes"]
        )
        parts.append(
            "<h2>Mistakes, most confident first</h2><table><tr><th>image</th><th>true</th>"
            f"<th>predicted</th><th>score</th></tr>{wrong}</table>"
        )
    if evaluation.get("skipped"):
        skipped = "".join(f"<li><code>{e(p)}</code>: {e(why)}</li>" for p, why in evaluation["skipped"])
        parts.append(f"<h2>Skipped files</h2><ul>{skipped}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
