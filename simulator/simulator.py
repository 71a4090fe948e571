"""Replay a dataset folder as a live stream of images.

The simulator is a producer: it paces its own sends and either publishes paths
straight to ``imgflow-paths`` (:func:`publish_into_chain`, through the one
publisher every source uses) or copies files into a watched folder
(:func:`copy_into`; atomically: written under a hidden ``.part`` name, then
renamed). Consumers
never poll; they react to messages or file-system events.

Timing is a pure function of the :class:`Pattern` (:func:`schedule`, then
:func:`plan` pairs each send with images), so it is tested without sleeping;
:func:`run` only waits until each send is due. Patterns:

- ``steady``: ``burst`` images every ``burst / rate`` seconds (``rate`` 0: as
  fast as the sender goes).
- ``poisson``: the same average rate with exponential gaps (independent
  arrivals, like many users), reproducible with ``seed``.
- ``spikes``: a steady base ``rate`` (may be 0) plus, every ``spike_every``
  seconds, ``spike_size`` images at once: periodic bursts that exercise
  batching and back-pressure.
- ``ramp``: the rate rises linearly from ``rate`` to ``peak_rate`` over
  ``ramp_seconds``, then stays there: for finding where throughput saturates.

A replay stops at ``count`` images, after ``duration`` seconds (of schedule
time, and of wall time if the sender falls behind), or when the data runs out
(``loop=False``). Images are shuffled per pass over the dataset (``seed``).
If the sender is slower than the schedule, due sends go out back to back until
it catches up, and the largest lag is reported.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PATTERNS = ("steady", "poisson", "spikes", "ramp")


@dataclass(frozen=True)
class Pattern:
    """How to replay (see the module docstring for each ``kind``)."""

    rate: float = 5.0
    burst: int = 1
    count: int | None = None
    duration: float | None = None
    shuffle: bool = True
    loop: bool = True
    seed: int | None = None
    kind: str = "steady"
    spike_every: float = 10.0
    spike_size: int = 20
    peak_rate: float | None = None
    ramp_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.kind not in PATTERNS:
            raise ValueError(f"unknown pattern {self.kind!r} (choose from {', '.join(PATTERNS)})")
        if self.rate < 0:
            raise ValueError("rate must be >= 0 images/s")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")
        if self.duration is not None and self.duration < 0:
            raise ValueError("duration must be >= 0 seconds")
        if self.kind == "poisson" and self.rate <= 0:
            raise ValueError("poisson needs a rate > 0")
        if self.kind == "spikes" and (self.spike_every <= 0 or self.spike_size < 1):
            raise ValueError("spikes needs spike_every > 0 and spike_size >= 1")
        if self.kind == "ramp":
            if self.rate <= 0 or not self.peak_rate or self.peak_rate <= 0:
                raise ValueError("ramp needs rate > 0 and peak_rate > 0")
            if self.ramp_seconds <= 0:
                raise ValueError("ramp needs ramp_seconds > 0")

    def in_words(self) -> str:
        """The pattern as the ``simulate`` command announces it."""
        limits = []
        if self.count is not None:
            limits.append(f"{self.count} images")
        if self.duration is not None:
            limits.append(f"{self.duration:g}s")
        if not self.loop:
            limits.append("one pass")
        if self.kind == "steady":
            detail = f"{self.rate:g}/s in bursts of {self.burst}"
        elif self.kind == "poisson":
            detail = f"{self.rate:g}/s on average, exponential gaps"
        elif self.kind == "spikes":
            detail = f"{self.rate:g}/s plus {self.spike_size} at once every {self.spike_every:g}s"
        else:
            detail = f"{self.rate:g}/s rising to {self.peak_rate:g}/s over {self.ramp_seconds:g}s"
        return f"{self.kind}: {detail}" + (f", until {' or '.join(limits)}" if limits else "")


def _steady(rate: float, burst: int, start: float = 0.0) -> Iterator[tuple[float, int]]:
    interval = burst / rate if rate > 0 else 0.0
    for i in itertools.count():
        yield start + i * interval, burst


def schedule(pattern: Pattern) -> Iterator[tuple[float, int]]:
    """``(seconds after start, images to send)`` for ever, in time order (pure)."""
    if pattern.kind == "steady":
        yield from _steady(pattern.rate, pattern.burst)
    elif pattern.kind == "poisson":
        rng = random.Random(pattern.seed)
        t = 0.0
        while True:
            yield t, pattern.burst
            t += rng.expovariate(pattern.rate / pattern.burst)
    elif pattern.kind == "spikes":
        spikes = ((k * pattern.spike_every, pattern.spike_size) for k in itertools.count(1))
        if pattern.rate > 0:
            yield from heapq.merge(_steady(pattern.rate, pattern.burst), spikes, key=lambda s: s[0])
        else:
            yield from spikes
    else:  # ramp
        assert pattern.peak_rate is not None
        t = 0.0
        while True:
            yield t, pattern.burst
            progress = min(t / pattern.ramp_seconds, 1.0)
            rate = pattern.rate + (pattern.peak_rate - pattern.rate) * progress
            t += pattern.burst / rate


def plan(images: list[Path], pattern: Pattern) -> Iterator[tuple[float, list[Path]]]:
    """``(due time, images)`` sends honouring count, duration and looping (pure)."""
    if not images:
        return
    rng = random.Random(pattern.seed)

    def order() -> list[Path]:
        batch = list(images)
        if pattern.shuffle:
            rng.shuffle(batch)
        return batch

    passes = itertools.count() if pattern.loop else range(1)
    stream: Iterator[Path] = itertools.chain.from_iterable(order() for _ in passes)
    if pattern.count is not None:
        stream = itertools.islice(stream, pattern.count)
    for at, size in schedule(pattern):
        if pattern.duration is not None and at >= pattern.duration:
            return
        burst = list(itertools.islice(stream, size))
        if not burst:
            return
        yield at, burst


@dataclass(frozen=True)
class RunStats:
    sent: int
    sends: int
    elapsed: float
    max_lag: float  # how far behind schedule a send went out, at worst


async def run(
    images: list[Path],
    pattern: Pattern,
    send: Callable[[list[Path]], Awaitable[None]],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> RunStats:
    """Send each planned burst when it is due; stop at count, duration or end of data."""
    started = clock()
    sent = sends = 0
    max_lag = 0.0
    for at, burst in plan(images, pattern):
        now = clock()
        if pattern.duration is not None and now - started >= pattern.duration:
            break
        delay = started + at - now
        if delay > 0:
            await sleep(delay)
        else:
            max_lag = max(max_lag, -delay)
        await send(burst)
        sent += len(burst)
        sends += 1
    return RunStats(sent=sent, sends=sends, elapsed=clock() - started, max_lag=max_lag)


def publish_into_chain(source: str = "simulator") -> Callable[[list[Path]], Awaitable[None]]:
    """A sender that publishes each path to ``imgflow-paths``, acknowledged before the next send."""
    from sources.publish import path_message, publish_paths

    async def send(paths: list[Path]) -> None:
        await publish_paths(path_message(p, source) for p in paths)

    return send


def copy_into(folder: Path) -> Callable[[list[Path]], Awaitable[None]]:
    """A sender that drops files into a watched folder, each under a new name.

    Each file is written as a hidden ``.<name>.part`` and renamed when
    complete, so a folder watcher never sees it half-written.
    """
    folder.mkdir(parents=True, exist_ok=True)

    async def send(paths: list[Path]) -> None:
        for path in paths:
            target = folder / f"{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}"
            tmp = folder / f".{target.name}.part"
            await asyncio.to_thread(shutil.copyfile, path, tmp)
            tmp.rename(target)

    return send
