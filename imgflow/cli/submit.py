"""``submit`` and ``simulate``: put images into the chain."""

from __future__ import annotations

from pathlib import Path

from faust.cli import argument, option

from imgflow.app import app, settings
from imgflow.cli import expand


@app.command(
    argument("paths", nargs=-1, required=True),
    option("--source", default="submit", help="Source tag stored with each image."),
    option("--model", default=None, help="Pin these images to another model spec file."),
    option("--ids-out", default=None, help="Write the image ids (one per line) to this file."),
    option("--no-recursive", is_flag=True, default=False, help="Do not descend into folders."),
)
async def submit(
    self,
    paths: tuple[str, ...],
    source: str,
    model: str | None,
    ids_out: str | None,
    no_recursive: bool,
) -> None:
    """Submit image files, folders or globs to the chain."""
    from tqdm import tqdm

    from imgflow.ingest import path_message
    from imgflow.ingest import submit as publish_paths

    files = expand(paths, recursive=not no_recursive)
    if not files:
        raise SystemExit("no images found")
    model_path = str(Path(model).resolve()) if model else None
    ids: list[str] = []
    with tqdm(total=len(files), unit="img", desc="submit") as bar:
        for start in range(0, len(files), 100):
            chunk = files[start : start + 100]
            ids += await publish_paths(path_message(p, source, model=model_path) for p in chunk)
            bar.update(len(chunk))
    if ids_out:
        Path(ids_out).write_text("\n".join(ids) + "\n")
    else:
        for path, image_id in zip(files, ids, strict=True):
            self.say(f"{image_id}\t{path}")


@app.command(
    option("--folder", default=None, help="Dataset folder (default: IMGFLOW_DATASET_DIR)."),
    option("--rate", type=float, default=5.0, help="Images per second."),
    option("--burst", type=int, default=1, help="Images sent together."),
    option("--count", type=int, default=None, help="Stop after this many images."),
    option("--duration", type=float, default=None, help="Stop after this many seconds."),
    option("--no-shuffle", is_flag=True, default=False),
    option("--once", is_flag=True, default=False, help="Do not loop over the dataset."),
    option("--copy-to", default=None, help="Copy files into this (watched) folder instead."),
    option("--seed", type=int, default=None),
)
async def simulate(
    self,
    folder: str | None,
    rate: float,
    burst: int,
    count: int | None,
    duration: float | None,
    no_shuffle: bool,
    once: bool,
    copy_to: str | None,
    seed: int | None,
) -> None:
    """Replay a dataset folder as a live stream (writes the demo dataset if empty)."""
    from imgflow.ingest import path_message
    from imgflow.ingest import submit as publish_paths
    from simulator.dataset import list_images, write_dataset
    from simulator.simulator import Pattern, copy_into, run

    root = Path(folder) if folder else settings.dataset_path
    images = list_images(root) if root.exists() else []
    if not images:
        images = write_dataset(root)
    pattern = Pattern(
        rate=rate,
        burst=burst,
        count=count,
        duration=duration,
        shuffle=not no_shuffle,
        loop=not once,
        seed=seed,
    )
    if copy_to:
        send = copy_into(Path(copy_to))
    else:

        async def send(paths: list[Path]) -> None:
            await publish_paths(path_message(p, "simulator") for p in paths)

    self.say(f"simulating {len(images)} images from {root} at {rate:g}/s")
    sent = await run(images, pattern, send)
    self.say(f"sent {sent} images")
