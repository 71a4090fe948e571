"""Stage 1, decode: ``imgflow-paths`` -> ``imgflow-tensors``.

Reads the file a path points to, validates and decodes it with Pillow off the
event loop, and emits a uint8 tensor sized for the model that will classify it.
A path outside the image roots (``Settings.image_root_paths``) is refused
before the file is touched: anyone who can write to the paths topic could
otherwise make a worker read any file it can (``/etc/passwd``).
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

from faust.types import EventT, TopicT

from agents.stage import Outcome, Stage
from imgflow.app import app, settings
from imgflow.imaging import ImageRejected, Limits, decode_image
from imgflow.metrics import METRICS
from imgflow.records import DecodedImage, ImageMeta, ImagePath, message_id, parse_image_path, tensor_message
from imgflow.roots import require_inside_roots
from imgflow.storage import retry_forever
from imgflow.tensors import IN_MONGO, TensorStore, blob_id
from imgflow.topics import failed_topic, paths_topic, tensors_topic
from models.registry import spec_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    """One decoded image: its record and its pixels (the ``imgflow-tensors`` message)."""

    record: DecodedImage
    pixels: bytes


def decode_one(item: ImagePath, limits: Limits, roots: Sequence[Path], default_model: Path) -> Decoded:
    """Pure work for one image (runs in a worker thread).

    The roots are checked first and the checked real path is what is read, so
    a link swapped in afterwards cannot redirect the read. An image not pinned to a
    model (a replay's ``--model``) is decoded for ``default_model``.
    """
    real = require_inside_roots(item.path, roots)
    spec = spec_for(item.model or default_model)
    decoded = decode_image(real, spec.input_size, spec.resize, limits, draft=settings.decode_draft)
    record = DecodedImage(
        image_id=item.image_id,
        path=item.path,
        source=item.source,
        submitted_at=item.submitted_at,
        decoded_at=time.time(),
        model=str(spec.spec_path),
        shape=list(decoded.tensor.shape),
        meta=ImageMeta(
            file_name=Path(item.path).name,  # the name it was sent as, not a link's target
            width=decoded.width,
            height=decoded.height,
            format=decoded.format,
            bytes=decoded.bytes,
            sha256=decoded.sha256,
        ),
        replay_id=item.replay_id,
        attrs=item.attrs,
    )
    return Decoded(record, decoded.tensor.tobytes())


def parse_event(event: EventT) -> ImagePath:
    msg = event.message
    return parse_image_path(event.value, event.key, message_id(msg.topic, msg.partition, msg.offset))


class Decoder:
    """Decodes a batch in the decode threads, each image bounded in time."""

    def __init__(
        self,
        pool: Executor,
        roots: Sequence[Path] | None = None,
        tensors: TensorStore | None = None,
        default_model: Callable[[], Awaitable[Path]] | None = None,
    ) -> None:
        self.pool = pool
        self.tensors = tensors
        self.default_model = default_model
        self.limits = Limits(max_file_bytes=settings.max_file_bytes, max_pixels=settings.max_pixels)
        self.roots = settings.image_root_paths if roots is None else roots

    async def one(self, item: ImagePath, default_model: Path) -> Decoded | Exception:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self.pool, decode_one, item, self.limits, self.roots, default_model),
                settings.decode_timeout,
            )
        except TimeoutError:
            return ImageRejected("decode_timeout", f"decoding took longer than {settings.decode_timeout:g}s")
        except Exception as exc:  # a bad image never stops the stage
            return exc

    async def batch(self, items: list[ImagePath]) -> Outcome:
        outcome = Outcome()
        decoded: list[tuple[ImagePath, Decoded]] = []
        # The default for this batch: the promoted model, once this worker knows which it is.
        default = await self.default_model() if self.default_model else settings.model_spec_path
        results = await asyncio.gather(*(self.one(item, default) for item in items))
        for item, result in zip(items, results, strict=True):
            if isinstance(result, Decoded):
                decoded.append((item, result))
            else:
                outcome.failed.append((item, result))
        elsewhere = None
        if self.tensors is not None and decoded:  # the pixels beside the messages, first
            blobs = [(blob_id(d.record.image_id, d.record.decoded_at), d.pixels) for _, d in decoded]
            await retry_forever("store pixels", partial(asyncio.to_thread, self.tensors.put, blobs))
            elsewhere = IN_MONGO
        for item, d in decoded:
            value, headers = tensor_message(d.record, d.pixels, elsewhere)
            outcome.outputs.append((item, item.image_id, value, headers))
        METRICS.decoded.inc(len(outcome.outputs))
        return outcome


def stage(
    pool: Executor,
    output: TopicT = tensors_topic,
    failures: TopicT = failed_topic,
    roots: Sequence[Path] | None = None,
    tensors: TensorStore | None = None,
    default_model: Callable[[], Awaitable[Path]] | None = None,
) -> Stage[ImagePath]:
    return Stage(
        "decode",
        parse=parse_event,
        process=Decoder(pool, roots, tensors, default_model).batch,
        output=output,
        failures=failures,
        batch_size=settings.decode_batch_size,
    )


@app.agent(paths_topic)
async def decode(stream):
    beside = app.resources.tensors if settings.tensor_store == "mongo" else None
    resources = app.resources
    await stage(resources.decode_pool, tensors=beside, default_model=resources.active.default).run(stream)
