"""Stage 1, decode: ``imgflow-paths`` and ``imgflow-frames`` -> ``imgflow-tensors``.

Reads the file a path points to (or takes a frame's bytes), validates and decodes
it with Pillow off the event loop, and emits a uint8 tensor sized for the model
that will classify it. A path outside the image roots (``Settings.image_root_paths``)
is refused before the file is touched: anyone who can write to the paths topic
could otherwise make a worker read any file it can (``/etc/passwd``).

Frames (imgflow/frames.py) are kept in MongoDB once decoded, before their tensors
are published, so that a stored result's preview can always be read; a
``frame://`` path on the paths topic (a replay) is decoded from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from weakref import WeakKeyDictionary

from faust.types import EventT, StreamT, TopicT

from agents.stage import Outcome, Stage
from imgflow.app import app, settings
from imgflow.frames import Frame, FrameStore, frame_key, is_frame, parse_frame
from imgflow.imaging import (
    DecodedFile,
    ImageRejected,
    Limits,
    MemoryBudget,
    decode_data,
    decode_limits,
)
from imgflow.metrics import METRICS
from imgflow.originals import Origins, read_original
from imgflow.records import DecodedImage, ImagePath, message_id, parse_image_path, tensor_message
from imgflow.retry import retry
from imgflow.tensors import IN_MONGO, TensorStore, blob_id
from imgflow.topics import failed_topic, frames_topic, paths_topic, tensors_topic
from models.registry import ModelRegistry, registry_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    """One decoded image: its record and its pixels (the ``imgflow-tensors`` message)."""

    record: DecodedImage
    pixels: bytes


def decode_one(
    item: ImagePath,
    limits: Limits,
    roots: Sequence[Path],
    default_model: Path,
    data: bytes | None = None,
    frames: FrameStore | None = None,
    registry: ModelRegistry | None = None,
) -> Decoded:
    """Pure work for one image (runs in a worker thread).

    A file's roots are checked first and the checked real path is what is opened, and the
    open file is checked again (a regular file, not a link, really inside a root:
    models/safeio.py), so nothing swapped in between is read. A frame is decoded from
    ``data`` (its message's bytes) or, for a ``frame://`` path without them (a replay),
    from ``frames``. An image not pinned to a model (a replay's ``--model``) is decoded
    for ``default_model``; one pinned to a model gets it only if it is registered
    (models/registry.py): a message names a model, it never makes a worker open a file.
    """
    if is_frame(item.path) and data is not None:  # a frame's bytes, in its message
        name = str(item.attrs.get("file_name") or frame_key(item.path)[1])
    else:  # a file, an object or a kept frame (a replay): read by the one rule for all three
        origins = Origins(roots, settings.object_roots, frames)
        data, name = read_original(item.path, origins, limits)
        if is_frame(item.path):
            name = str(item.attrs.get("file_name") or name)
    registry = registry or registry_for(settings.model_dir_paths, settings.model_spec_path)
    spec = registry.resolve(item.model or default_model)
    decoded: DecodedFile = decode_data(
        data, name, spec.input_size, spec.resize, limits, draft=settings.decode_draft
    )
    record = DecodedImage(
        ref=item.ref,
        decoded_at=time.time(),
        model=str(spec.spec_path),
        shape=list(decoded.tensor.shape),
        meta=decoded.meta,
        attrs=item.attrs,
    )
    return Decoded(record, decoded.tensor.tobytes())


def parse_event(event: EventT[bytes]) -> ImagePath:
    msg = event.message
    return parse_image_path(event.value, event.key, message_id(msg.topic, msg.partition, msg.offset))


def parse_frame_event(event: EventT[bytes]) -> Frame:
    msg = event.message
    headers = dict(msg.headers or ())
    return parse_frame(event.value, event.key, headers, message_id(msg.topic, msg.partition, msg.offset))


#: One semaphore per decode pool, as many slots as it has threads, shared by every stage that
#: decodes on it (paths and frames): an image's decode timeout starts when a thread takes it.
_SLOTS: WeakKeyDictionary[Executor, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = WeakKeyDictionary()


def thread_slots(pool: Executor) -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    found = _SLOTS.get(pool)
    if found is None or found[0] is not loop:  # a semaphore belongs to one event loop
        found = _SLOTS[pool] = (
            loop,
            asyncio.Semaphore(getattr(pool, "_max_workers", settings.decode_threads)),
        )
    return found[1]


#: One memory budget per decode pool, shared by every stage that decodes on it.
_BUDGETS: WeakKeyDictionary[Executor, MemoryBudget] = WeakKeyDictionary()


def budget_for(pool: Executor) -> MemoryBudget:
    found = _BUDGETS.get(pool)
    if found is None:
        found = _BUDGETS[pool] = MemoryBudget(settings.decode_memory_mb * 2**20)
    return found


class Decoder:
    """Decodes a batch in the decode threads, each image bounded in time from when a thread
    takes it (a decode that overruns keeps its thread until it ends: the slot is given back at
    the timeout, so a stuck read delays the images after it but cannot hold the stage)."""

    def __init__(
        self,
        pool: Executor,
        roots: Sequence[Path] | None = None,
        tensors: TensorStore | None = None,
        default_model: Callable[[], Awaitable[Path]] | None = None,
        frames: FrameStore | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        self.pool = pool
        self.tensors = tensors
        self.frames = frames
        self.default_model = default_model
        self.registry = registry or registry_for(settings.model_dir_paths, settings.model_spec_path)
        self.limits = decode_limits(settings, budget_for(pool))
        self.roots = settings.image_root_paths if roots is None else roots

    async def one(
        self, item: ImagePath, default_model: Path, data: bytes | None = None
    ) -> Decoded | Exception:
        loop = asyncio.get_running_loop()
        work = partial(
            decode_one, item, self.limits, self.roots, default_model, data, self.frames, self.registry
        )
        try:
            # A free thread first, then the clock: an image waiting behind a batch larger than
            # the threads is not slow, and must not fail as decode_timeout.
            async with thread_slots(self.pool):
                return await asyncio.wait_for(loop.run_in_executor(self.pool, work), settings.decode_timeout)
        except TimeoutError:
            return ImageRejected("decode_timeout", f"decoding took longer than {settings.decode_timeout:g}s")
        except Exception as exc:  # a bad image never stops the stage
            return exc

    async def batch(self, items: Sequence[ImagePath | Frame]) -> Outcome:
        outcome = Outcome()
        decoded: list[tuple[ImagePath | Frame, Decoded]] = []
        # The default for this batch: the promoted model, once this worker knows which it is.
        default = await self.default_model() if self.default_model else settings.model_spec_path
        results = await asyncio.gather(
            *(
                self.one(item.record, default, item.data)
                if isinstance(item, Frame)
                else self.one(item, default)
                for item in items
            )
        )
        for item, result in zip(items, results, strict=True):
            if isinstance(result, Decoded):
                decoded.append((item, result))
            else:
                outcome.failed.append((item, result))
        kept = [item for item, _ in decoded if isinstance(item, Frame)]
        if kept:  # a frame is kept before its result can exist, so its preview always can be read
            if self.frames is None:
                raise RuntimeError("a decode stage that takes frames needs a FrameStore")
            await retry("keep frames", partial(asyncio.to_thread, self.frames.put, kept))
        elsewhere = None
        if self.tensors is not None and decoded:  # the pixels beside the messages, first
            blobs = [(blob_id(d.record.image_id, d.record.decoded_at), d.pixels) for _, d in decoded]
            await retry("store pixels", partial(asyncio.to_thread, self.tensors.put, blobs))
            elsewhere = IN_MONGO
        for item, d in decoded:
            value, headers = tensor_message(d.record, d.pixels, elsewhere)
            outcome.outputs.append((item, d.record.image_id, value, headers))
        METRICS.decoded.inc(len(outcome.outputs))
        return outcome


def stage(
    pool: Executor,
    output: TopicT = tensors_topic,
    failures: TopicT = failed_topic,
    roots: Sequence[Path] | None = None,
    tensors: TensorStore | None = None,
    default_model: Callable[[], Awaitable[Path]] | None = None,
    frames: FrameStore | None = None,
    parse: Callable[[EventT[bytes]], ImagePath | Frame] = parse_event,
    registry: ModelRegistry | None = None,
) -> Stage[ImagePath | Frame]:
    return Stage(
        "decode",
        parse=parse,
        process=Decoder(pool, roots, tensors, default_model, frames, registry).batch,
        output=output,
        failures=failures,
        batch_size=settings.decode_batch_size,
    )


def worker_stage(
    parse: Callable[[EventT[bytes]], ImagePath | Frame] = parse_event,
) -> Stage[ImagePath | Frame]:
    """The stage as a worker runs it, on the worker's resources."""
    resources = app.resources
    return stage(
        resources.decode_pool,
        tensors=resources.tensors if settings.tensor_store == "mongo" else None,
        default_model=resources.active.default,
        frames=resources.frames,
        parse=parse,
        registry=resources.registry,
    )


@app.agent(paths_topic)
async def decode(stream: StreamT[bytes]) -> None:
    await worker_stage().run(stream)


@app.agent(frames_topic)
async def decode_frames(stream: StreamT[bytes]) -> None:
    """The same stage for frames: bytes in the message instead of a path."""
    await worker_stage(parse_frame_event).run(stream)
