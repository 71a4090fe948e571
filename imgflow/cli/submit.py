"""``submit`` and ``simulate``: put images into the chain.

``submit PATH...`` takes files, folders (recursive unless ``--no-recursive``)
and globs, publishes one ``imgflow-paths`` message per image with a progress
bar, and prints ``image_id<TAB>path`` lines (or writes the ids to
``--ids-out``). With ``--wait`` it then blocks until every image is stored or
failed and prints a summary; with Faust's global ``--json``
(``faust --json -A imgflow submit --wait ...``) the summary is one JSON object.
Exit codes: 0 when every image has a result (failed images are results, listed
in the summary), 1 when nothing was found, 2 when ``--timeout`` passed first.

``simulate`` replays a dataset folder as a live stream; see ``simulator/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from faust.cli import argument, option

from imgflow.app import app, settings
from imgflow.cli import expand
from imgflow.roots import inside_roots
from simulator.simulator import PATTERNS

EXIT_NOTHING_FOUND = 1
EXIT_TIMEOUT = 2
CHUNK = 100


@app.command(
    argument("paths", nargs=-1, required=True),
    option("--source", default="submit", help="Source tag stored with each image."),
    option("--model", default=None, help="Pin these images to another model spec file."),
    option("--ids-out", default=None, help="Write the image ids (one per line) to this file."),
    option("--no-recursive", is_flag=True, default=False, help="Do not descend into folders."),
    option("--wait", is_flag=True, default=False, help="Block until every image is stored or failed."),
    option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds."),
    option("--no-progress", is_flag=True, default=False, help="No progress bars."),
)
async def submit(
    self,
    paths: tuple[str, ...],
    source: str,
    model: str | None,
    ids_out: str | None,
    no_recursive: bool,
    wait: bool,
    timeout: float | None,
    no_progress: bool,
) -> None:
    """Submit image files, folders or globs to the chain (--wait: until stored)."""
    from tqdm import tqdm

    from imgflow.ingest import ResultWatch, path_message, wait_for
    from imgflow.ingest import submit as publish_paths

    files = list(dict.fromkeys(expand(paths, recursive=not no_recursive)))  # each file once
    if not files:
        self.say("no images found", file=self.stderr)
        raise SystemExit(EXIT_NOTHING_FOUND)
    model_path = str(Path(model).resolve()) if model else None
    quiet = no_progress or self.json
    outside = [p for p in files if inside_roots(p, settings.image_root_paths) is None]
    if outside:
        # Workers refuse them (failure kind outside_roots); say so before they are sent.
        self.say(
            f"warning: {len(outside)} of {len(files)} files are outside the image roots "
            f"(e.g. {outside[0]}); the workers will refuse them. Add their folder to IMGFLOW_IMAGE_ROOTS.",
            file=self.stderr,
        )

    watch = ResultWatch(settings) if wait else None
    if watch is not None:
        await watch.start()  # the position to read results from is taken before publishing
    try:
        ids: list[str] = []
        with tqdm(total=len(files), unit="img", desc="submit", disable=quiet) as bar:
            for start in range(0, len(files), CHUNK):
                messages = [path_message(p, source, model=model_path) for p in files[start : start + CHUNK]]
                if watch is not None:
                    watch.expect(m.image_id for m in messages)
                ids += await publish_paths(messages)
                bar.update(len(messages))
        if ids_out:
            Path(ids_out).write_text("\n".join(ids) + "\n")
        elif not self.json:
            for path, image_id in zip(files, ids, strict=True):
                self.say(f"{image_id}\t{path}")
        if watch is None:
            if self.json:
                self.say(json.dumps({"submitted": len(ids), "image_ids": ids}))
            return
        with tqdm(total=len(ids), unit="img", desc="results", disable=quiet) as bar:
            summary = await wait_for(watch, ids, timeout, on_outcome=lambda _: bar.update(1))
    finally:
        if watch is not None:
            await watch.stop()

    if self.json:
        by_id = dict(zip(ids, files, strict=True))
        body = summary.as_json()
        body["images"] = [
            {"image_id": i, "path": str(by_id[i]), "status": "pending"}
            | (summary.outcomes[i].as_json() if i in summary.outcomes else {})
            for i in ids
        ]
        self.say(json.dumps(body))
    else:
        for line in summary.lines():
            self.say(line)
        paths_by_id = dict(zip(ids, files, strict=True))
        for outcome in summary.outcomes.values():
            if outcome.status == "failed":
                self.say(f"FAILED {paths_by_id[outcome.image_id]}: {outcome.kind}: {outcome.message}")
    if summary.timed_out:
        self.say(f"timed out after {timeout:g}s with {summary.pending} images pending", file=self.stderr)
        raise SystemExit(EXIT_TIMEOUT)


@app.command(
    option("--folder", default=None, help="Dataset folder (default: IMGFLOW_DATASET_DIR)."),
    option("--pattern", type=click.Choice(PATTERNS), default="steady", help="How sends are spaced in time."),
    option("--rate", type=float, default=5.0, help="Images per second (base rate; 0 = unpaced)."),
    option("--burst", type=int, default=1, help="Images sent together at each tick."),
    option("--spike-every", type=float, default=10.0, help="spikes: seconds between spikes."),
    option("--spike-size", type=int, default=20, help="spikes: images sent at once in a spike."),
    option("--peak-rate", type=float, default=None, help="ramp: rate reached after --ramp-seconds."),
    option("--ramp-seconds", type=float, default=60.0, help="ramp: seconds to reach --peak-rate."),
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
    pattern: str,
    rate: float,
    burst: int,
    spike_every: float,
    spike_size: int,
    peak_rate: float | None,
    ramp_seconds: float,
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

    try:
        plan = Pattern(
            kind=pattern,
            rate=rate,
            burst=burst,
            spike_every=spike_every,
            spike_size=spike_size,
            peak_rate=peak_rate,
            ramp_seconds=ramp_seconds,
            count=count,
            duration=duration,
            shuffle=not no_shuffle,
            loop=not once,
            seed=seed,
        )
    except ValueError as exc:
        self.say(f"simulate: {exc}", file=self.stderr)
        raise SystemExit(EXIT_NOTHING_FOUND) from None
    root = Path(folder) if folder else settings.dataset_path
    images = list_images(root) if root.exists() else []
    if not images:
        images = write_dataset(root)
    if copy_to:
        send = copy_into(Path(copy_to))
    else:

        async def send(paths: list[Path]) -> None:
            await publish_paths(path_message(p, "simulator") for p in paths)

    self.say(f"simulating {len(images)} images from {root}: {plan.describe()}")
    stats = await run(images, plan, send)
    self.say(
        f"sent {stats.sent} images in {stats.sends} sends over {stats.elapsed:.1f}s"
        f" (at most {stats.max_lag:.2f}s behind schedule)"
    )
