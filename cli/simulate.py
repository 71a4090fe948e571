"""``simulate``: replay a dataset folder as a live stream (the simulator itself: ``simulator/``)."""

from __future__ import annotations

from pathlib import Path

import click
from faust.cli import option

from cli.command import EXIT_USAGE, command
from imgflow.app import settings
from simulator.simulator import PATTERNS


@command(
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
    from imgflow.files import list_images
    from simulator.dataset import write_dataset
    from simulator.simulator import Pattern, copy_into, publish_into_chain, run

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
        raise SystemExit(EXIT_USAGE) from None
    root = Path(folder) if folder else settings.dataset_path
    images = list_images(root) if root.exists() else []
    if not images:
        images = write_dataset(root)
    send = copy_into(Path(copy_to)) if copy_to else publish_into_chain("simulator")
    self.say(f"simulating {len(images)} images from {root}: {plan.in_words()}")
    stats = await run(images, plan, send)
    self.say(
        f"sent {stats.sent} images in {stats.sends} sends over {stats.elapsed:.1f}s"
        f" (at most {stats.max_lag:.2f}s behind schedule)"
    )
