"""Stage 1, decode: ``imgflow-paths`` -> ``imgflow-tensors``.

Reads the file a path points to, validates and decodes it with Pillow off the
event loop, and emits a uint8 tensor sized for the model that will classify it.
A path outside the image roots (``Settings.image_root_paths``) is refused
before the file is touched: anyone who can write to the paths topic could
otherwise make a worker read any file it can (``/etc/passwd``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agents.acks import hold, release
from agents.failures import failure_for, malformed
from imgflow.app import app, settings
from imgflow.imaging import ImageRejected, Limits, decode_image
from imgflow.metrics import METRICS
from imgflow.records import (
    DecodedImage,
    ImageMeta,
    ImagePath,
    MalformedMessage,
    dumps,
    message_id,
    parse_image_path,
)
from imgflow.roots import require_inside_roots
from imgflow.topics import failed_topic, paths_topic, publish, publish_all, tensors_topic
from models.registry import spec_for

log = logging.getLogger(__name__)


def decode_one(item: ImagePath, limits: Limits, roots: Sequence[Path]) -> DecodedImage:
    """Pure work for one image (runs in a worker thread).

    The roots are checked first and the checked real path is what is read, so
    a link swapped in afterwards cannot redirect the read.
    """
    real = require_inside_roots(item.path, roots)
    spec = spec_for(item.model or settings.model_spec_path)
    decoded = decode_image(real, spec.input_size, spec.resize, limits)
    return DecodedImage(
        image_id=item.image_id,
        path=item.path,
        source=item.source,
        submitted_at=item.submitted_at,
        decoded_at=time.time(),
        model=str(spec.spec_path),
        shape=list(decoded.tensor.shape),
        tensor_b64=base64.b64encode(decoded.tensor.tobytes()).decode("ascii"),
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


@app.agent(paths_topic)
async def decode(stream):
    limits = Limits(max_file_bytes=settings.max_file_bytes, max_pixels=settings.max_pixels)
    roots = settings.image_root_paths
    pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="imgflow-decode")
    loop = asyncio.get_running_loop()

    async def run(item: ImagePath) -> DecodedImage | Exception:
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(pool, decode_one, item, limits, roots), settings.decode_timeout
            )
        except TimeoutError:
            return ImageRejected("decode_timeout", f"decoding took longer than {settings.decode_timeout:g}s")
        except Exception as exc:  # a bad image never stops the agent
            return exc

    async for events in stream.take_events(settings.decode_batch_size, settings.batch_wait):
        hold(events)
        items: list[ImagePath] = []
        failures = []
        for event in events:
            msg = event.message
            try:
                items.append(
                    parse_image_path(event.value, event.key, message_id(msg.topic, msg.partition, msg.offset))
                )
            except MalformedMessage as exc:
                failures.append(malformed("decode", exc, event))
        results = await asyncio.gather(*(run(item) for item in items))
        tensors = []
        decoded: list[ImagePath] = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, DecodedImage):
                tensors.append((item.image_id, dumps(result)))
                decoded.append(item)
            else:
                failures.append(failure_for("decode", item, result))
        too_large = await publish(tensors_topic, tensors)
        failures += [failure_for("decode", decoded[i], exc) for i, exc in too_large.items()]
        await publish_all(failed_topic, failures)
        release(events)
        METRICS.decoded.inc(len(tensors) - len(too_large))
        METRICS.batch_size.labels("decode").observe(len(events))
