"""The architecture as a picture (README.md, docs/architecture.md): ``make screenshots``.

Draws the chain docs/architecture.md's diagram shows (sources, Kafka topics, the agents
between them, MongoDB, the label-count tables, the worker web views and the
dashboard) with matplotlib, so the picture needs no system package and is rebuilt
from this file whenever the chain changes. Writes ``docs/images/architecture.png``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a file, never a window

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "architecture.png"

#: kind -> (face colour, edge colour, text colour, monospace)
STYLES: dict[str, tuple[str, str, str, bool]] = {
    "source": ("#eceff1", "#607d8b", "#263238", False),
    "topic": ("#fff3e0", "#ef6c00", "#4e2600", True),
    "agent": ("#1565c0", "#0d47a1", "#ffffff", False),
    "table": ("#e3f2fd", "#1565c0", "#0d2f5e", False),
    "store": ("#e8f5e9", "#2e7d32", "#1b3d1e", False),
    "view": ("#f3e5f5", "#6a1b9a", "#3b0f55", False),
}
LEGEND = [
    ("source", "where images enter"),
    ("topic", "Kafka topic"),
    ("agent", "Faust agent (a stage)"),
    ("table", "windowed table"),
    ("store", "MongoDB"),
    ("view", "HTTP views, dashboard"),
]


@dataclass(frozen=True)
class Node:
    text: str
    kind: str
    x: float
    y: float
    w: float = 2.0
    h: float = 0.62


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str = ""
    dashed: bool = False
    #: matplotlib connection style: "arc3,rad=0" is straight, "angle,..." a right angle.
    route: str = "arc3,rad=0"
    #: Where the label goes (its bottom centre).
    at: tuple[float, float] | None = None


SX, TX = 1.15, 3.85  # the sources' and the entry topics' columns
CHAIN_Y = 5.0  # the main chain's row

NODES: dict[str, Node] = {
    # Sources, each through the one publisher.
    "watcher": Node("watched folder", "source", SX, 7.55, h=0.52),
    "simulator": Node("simulator", "source", SX, 6.85, h=0.52),
    "upload": Node("HTTP upload", "source", SX, 6.15, h=0.52),
    "submit": Node("submit (CLI)", "source", SX, 5.45, h=0.52),
    "replay": Node("replay (CLI)", "source", SX, 4.75, h=0.52),
    "camera": Node("camera (CLI)", "source", SX, 3.6, h=0.52),
    # The chain.
    "paths": Node("imgflow-paths", "topic", TX, 6.2),
    "frames": Node("imgflow-frames\n(image bytes)", "topic", TX, 3.9, h=0.8),
    "decode": Node("decode", "agent", 6.1, CHAIN_Y, w=1.4),
    "tensors": Node("imgflow-tensors", "topic", 8.45, CHAIN_Y, w=2.1),
    "classify": Node("classify", "agent", 10.75, CHAIN_Y, w=1.4),
    "predictions": Node("imgflow-predictions", "topic", 13.15, CHAIN_Y, w=2.5),
    "store": Node("store", "agent", 15.45, CHAIN_Y, w=1.2),
    "mongo": Node(
        "MongoDB\n\nimages\npredictions\nfailures\nframes\ntensors\ncounters\nrates",
        "store",
        17.75,
        4.1,
        w=1.8,
        h=3.4,
    ),
    # What cannot go on.
    "failed": Node("imgflow-failed", "topic", 8.45, 6.75, w=2.1),
    "record_failures": Node("record_failures", "agent", 11.75, 6.75, w=2.1),
    # Counting and showing.
    "stored": Node("imgflow-stored\n(key = label)", "topic", 15.45, 3.1, w=2.1, h=0.8),
    "count": Node("count_labels", "agent", 12.65, 3.1, w=1.9),
    "tables": Node("label_model_counts\nwindowed tables", "table", 9.5, 3.1, w=2.7, h=0.8),
    "web": Node("worker web views\nGET /counts/", "view", 6.1, 3.1, w=2.5, h=0.8),
    "dashboard": Node(
        "Panel dashboard\ngallery, counts, throughput,\nfailures, Live tab", "view", 6.1, 1.2, w=3.4, h=1.1
    ),
}

EDGES: list[Edge] = [
    *(Edge(name, "paths") for name in ("watcher", "simulator", "upload", "submit", "replay")),
    Edge("replay", "frames", dashed=True),
    Edge("camera", "frames"),
    Edge("paths", "decode"),
    Edge("frames", "decode"),
    Edge("decode", "tensors"),
    Edge("tensors", "classify"),
    Edge("classify", "predictions"),
    Edge("predictions", "store"),
    Edge("store", "mongo"),
    Edge("decode", "failed", "failure records", dashed=True, at=(6.3, 6.2)),
    Edge("classify", "failed", dashed=True),
    Edge("failed", "record_failures"),
    Edge("record_failures", "mongo", route="angle,angleA=0,angleB=90"),
    Edge("store", "stored"),
    Edge("stored", "count"),
    Edge("count", "tables"),
    Edge("tables", "web"),
    Edge("web", "dashboard"),
    Edge("mongo", "dashboard", "results, totals, rates", route="angle,angleA=-90,angleB=0", at=(12.0, 1.3)),
    Edge(
        "dashboard", "frames", "Live tab: webcam, upload", route="angle,angleA=180,angleB=-90", at=(2.2, 2.0)
    ),
]


def box(ax: Axes, node: Node) -> FancyBboxPatch:
    face, edge, ink, mono = STYLES[node.kind]
    patch = FancyBboxPatch(
        (node.x - node.w / 2, node.y - node.h / 2),
        node.w,
        node.h,
        boxstyle="round,pad=0,rounding_size=0.12",
        facecolor=face,
        edgecolor=edge,
        linewidth=1.4,
        zorder=2,
    )
    ax.add_patch(patch)
    ax.text(
        node.x,
        node.y,
        node.text,
        ha="center",
        va="center",
        color=ink,
        fontsize=10.5 if mono else 11.5,
        family="DejaVu Sans Mono" if mono else "DejaVu Sans",
        fontweight="bold" if node.kind == "agent" else "normal",
        linespacing=1.25,
        zorder=3,
    )
    return patch


def arrow(ax: Axes, edge: Edge, patches: dict[str, FancyBboxPatch]) -> None:
    a, b = NODES[edge.src], NODES[edge.dst]
    line = FancyArrowPatch(
        (a.x, a.y),
        (b.x, b.y),
        patchA=patches[edge.src],
        patchB=patches[edge.dst],
        arrowstyle="-|>,head_length=6,head_width=3.5",
        connectionstyle=edge.route,
        linestyle=(0, (4, 3)) if edge.dashed else "-",
        color="#455a64",
        linewidth=1.3,
        shrinkA=2,
        shrinkB=2,
        zorder=1,
    )
    ax.add_patch(line)
    if edge.label:
        x, y = edge.at or ((a.x + b.x) / 2, (a.y + b.y) / 2 + 0.12)
        ax.text(
            x,
            y,
            edge.label,
            ha="center",
            va="bottom",
            fontsize=10.5,
            style="italic",
            color="#37474f",
            zorder=3,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0, "alpha": 0.85},
        )


def legend(ax: Axes, x: float, y: float) -> None:
    """One row of swatches along the bottom, each entry as wide as its words."""
    for kind, meaning in LEGEND:
        face, edge, _, _ = STYLES[kind]
        ax.add_patch(
            FancyBboxPatch(
                (x, y - 0.12),
                0.45,
                0.25,
                boxstyle="round,pad=0,rounding_size=0.05",
                facecolor=face,
                edgecolor=edge,
                linewidth=1.2,
            )
        )
        ax.text(x + 0.6, y + 0.01, meaning, va="center", fontsize=10.5, color="#263238")
        x += 0.6 + 0.114 * len(meaning) + 0.55


def draw(out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(17.0, 8.0), dpi=110)
    ax.set_xlim(0, 18.8)
    ax.set_ylim(-0.05, 8.75)
    ax.set_aspect("equal")
    ax.axis("off")
    patches = {name: box(ax, node) for name, node in NODES.items()}
    for edge in EDGES:
        arrow(ax, edge, patches)
    ax.text(
        0.15,
        8.5,
        "imgflow: images through Kafka topics and Faust agents into MongoDB",
        fontsize=16,
        fontweight="bold",
        color="#1f2933",
        va="center",
    )
    ax.text(
        0.15,
        8.1,
        "message keys are image ids (imgflow-stored: the label); every worker runs every agent, "
        "Kafka partitions spread the work",
        fontsize=11.5,
        color="#37474f",
        va="center",
    )
    legend(ax, 0.2, 0.2)
    out.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" stamp: the same drawing gives the same file, so git sees only real changes.
    fig.savefig(out, facecolor="white", bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})
    plt.close(fig)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/architecture.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    written = draw(args.out)
    print(f"wrote {written} ({written.stat().st_size / 1000:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
