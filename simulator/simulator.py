"""Replay a dataset folder as a live stream of images.

The simulator is a producer: it paces its own sends (rate, bursts) and either
publishes paths straight to ``imgflow-paths`` or copies files into a watched
folder (atomically: written under a temporary name, then renamed). Consumers
never poll; they react to messages or file-system events.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pattern:
    """How to replay: ``rate`` images/s on average, sent ``burst`` at a time."""

    rate: float = 5.0
    burst: int = 1
    count: int | None = None
    duration: float | None = None
    shuffle: bool = True
    loop: bool = True
    seed: int | None = None


def plan(images: list[Path], pattern: Pattern) -> Iterator[list[Path]]:
    """The bursts to send, in order, honouring count and looping (pure)."""
    if not images:
        return
    rng = random.Random(pattern.seed)

    def order() -> list[Path]:
        batch = list(images)
        if pattern.shuffle:
            rng.shuffle(batch)
        return batch

    stream = itertools.chain.from_iterable(order() for _ in (itertools.count() if pattern.loop else range(1)))
    if pattern.count is not None:
        stream = itertools.islice(stream, pattern.count)
    while burst := list(itertools.islice(stream, max(1, pattern.burst))):
        yield burst


async def run(
    images: list[Path],
    pattern: Pattern,
    send: Callable[[list[Path]], Awaitable[None]],
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Send bursts at the pattern's rate until count, duration or data run out."""
    started = clock()
    sent = 0
    interval = max(1, pattern.burst) / pattern.rate if pattern.rate > 0 else 0.0
    for i, burst in enumerate(plan(images, pattern)):
        if pattern.duration is not None and clock() - started >= pattern.duration:
            break
        delay = started + i * interval - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(burst)
        sent += len(burst)
    return sent


def copy_into(folder: Path) -> Callable[[list[Path]], Awaitable[None]]:
    """A sender that drops files into a watched folder, each under a new name."""
    folder.mkdir(parents=True, exist_ok=True)

    async def send(paths: list[Path]) -> None:
        for path in paths:
            target = folder / f"{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}"
            tmp = folder / f".{target.name}.part"
            await asyncio.to_thread(shutil.copyfile, path, tmp)
            tmp.rename(target)

    return send
