"""Topic-level replay: re-read a range of a topic and re-publish it into the chain.

Replay reads with its own consumer (no group, manual assignment), so it works
while the workers run and leaves their offsets alone; Kafka's group-offset
reset would need stopped consumers and would not mark anything as a replay.

- Selection: a time range on the records' own timestamps (``offsets_for_times``
  is only a starting hint: the embedded broker answers it from append time and
  returns offset 0 on a miss) and/or offset ranges per partition; then optional
  filters (source, current label, failed-only).
- The end of a partition is where it was when the replay started: records that
  arrive later (including the replay's own messages) are never re-read. The
  broker's ``end_offsets`` is only a hint on Tansu (docs/design.md §8), so
  reading stops at the first record newer than the replay, or at an empty
  fetch once past the hint.
- Re-published messages keep their ``image_id`` (results land beside the old
  ones, keyed by image, model and version), carry a ``replay_id`` and the
  origin (topic, partition, offset, timestamp) in ``attrs.replay`` and in
  headers, and may be pinned to another model spec.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imgflow.fields import MalformedMessage
from imgflow.records import Failure, ImagePath, message_id, parse, parse_image_path
from imgflow.settings import Settings, get_settings
from lifecycle.failed import mongo_db
from sources.publish import publish_paths
from sources.results import fresh_partitions

log = logging.getLogger(__name__)

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> float:
    """ISO 8601 time or a duration ago (``90s``, ``15m``, ``2h``, ``1d``) -> epoch seconds."""
    now = time.time() if now is None else now
    match = DURATION.match(text)
    if match:
        return now - float(match.group(1)) * UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO time or a duration like 2h: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_offsets(specs: Iterable[str]) -> dict[int, tuple[int, int | None]]:
    """``"0:100-200"``, ``"1:50-"`` -> {partition: (first, last inclusive or None)}."""
    ranges: dict[int, tuple[int, int | None]] = {}
    for spec in specs:
        match = re.fullmatch(r"\s*(\d+):(\d+)-(\d*)\s*", spec)
        if not match:
            raise ValueError(
                f"offset range must look like PARTITION:FIRST-LAST or PARTITION:FIRST-: {spec!r}"
            )
        first, last = int(match.group(2)), int(match.group(3)) if match.group(3) else None
        if last is not None and last < first:
            raise ValueError(f"empty offset range: {spec!r}")
        ranges[int(match.group(1))] = (first, last)
    return ranges


@dataclass(frozen=True)
class Selection:
    """Which records of a topic to replay."""

    since: float | None = None
    until: float | None = None
    offsets: dict[int, tuple[int, int | None]] = field(default_factory=dict)
    sources: frozenset[str] = frozenset()
    image_ids: frozenset[str] | None = None  # e.g. from a label filter
    include_replays: bool = False  # earlier replays' own messages are skipped by default

    def wants_partition(self, partition: int) -> bool:
        return not self.offsets or partition in self.offsets

    def first_offset(self, partition: int) -> int | None:
        return self.offsets[partition][0] if partition in self.offsets else None

    def past_end(self, partition: int, offset: int) -> bool:
        last = self.offsets.get(partition, (0, None))[1]
        return last is not None and offset > last

    def in_time(self, timestamp_ms: int) -> bool:
        ts = timestamp_ms / 1000
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def accepts(self, item: ImagePath) -> bool:
        if item.replay_id and not self.include_replays:
            return False
        if self.sources and item.source not in self.sources:
            return False
        return self.image_ids is None or item.image_id in self.image_ids


@dataclass
class Candidate:
    partition: int
    offset: int
    timestamp_ms: int
    item: ImagePath


@dataclass
class ReplayReport:
    replay_id: str
    topic: str
    per_partition: Counter = field(default_factory=Counter)
    skipped_malformed: int = 0
    skipped_replays: int = 0
    sent: int = 0

    @property
    def selected(self) -> int:
        return sum(self.per_partition.values())

    def in_words(self, dry_run: bool) -> str:
        """The report as the ``replay`` command prints it."""
        lines = [f"{'would replay' if dry_run else 'replayed'} {self.selected} records from {self.topic}"]
        for partition, n in sorted(self.per_partition.items()):
            lines.append(f"  partition {partition}: {n}")
        if self.skipped_replays:
            lines.append(f"  skipped {self.skipped_replays} messages of earlier replays")
        if self.skipped_malformed:
            lines.append(f"  skipped {self.skipped_malformed} malformed records")
        if not dry_run:
            lines.append(f"replay id {self.replay_id}")
        return "\n".join(lines)


def _item_from(
    topic_kind: str,
    value: bytes | None,
    key: bytes | None,
    fallback: str,
    headers: Sequence[tuple[str, bytes]] | None = None,
) -> ImagePath:
    """A paths message as it was, a frame as its ``frame://`` path (decoded again from
    MongoDB ``frames`` while it is kept), or a dead letter turned back into one."""
    if topic_kind == "frames":
        from imgflow.frames import parse_frame

        return parse_frame(value, key, dict(headers or ()), fallback).record
    if topic_kind == "failed":
        failure = parse(Failure, value)
        if not failure.path:
            raise MalformedMessage(f"failure {failure.image_id} has no path to retry")
        return ImagePath(
            image_id=failure.image_id,
            path=failure.path,
            source=failure.source or "replay",
            submitted_at=failure.submitted_at or time.time(),
            model=None,  # the current default, unless the replay names one (see retry_failed)
        )
    return parse_image_path(value, key, fallback)


async def scan(
    bootstrap: list[str],
    topic: str,
    selection: Selection,
    *,
    topic_kind: str = "paths",
    started_at: float | None = None,
) -> AsyncIterator[Candidate | tuple[str, int]]:
    """Yield the selected records of ``topic`` as it was when the scan started.

    Also yields ``("malformed" | "replayed", partition)`` markers for records it skips.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    started_ms = int((started_at or time.time()) * 1000)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 2**20,
        fetch_max_bytes=64 * 2**20,
    )
    await consumer.start()
    try:
        partitions = await fresh_partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions) if selection.wants_partition(p)]
        if not tps:
            return
        consumer.assign(tps)
        end_hint = await consumer.end_offsets(tps)
        hints: dict[Any, Any] = {}
        if selection.since is not None:
            hints = await consumer.offsets_for_times({tp: int(selection.since * 1000) for tp in tps})
        for tp in tps:
            first = selection.first_offset(tp.partition)
            hint = hints.get(tp)
            if first is not None:
                consumer.seek(tp, first)
            elif hint is not None and hint.offset is not None:
                # Only a hint: Tansu answers from append time and 0 on a miss.
                consumer.seek(tp, max(0, hint.offset - 1))
            else:
                await consumer.seek_to_beginning(tp)
        active = set(tps)
        while active:
            batches = await consumer.getmany(*active, timeout_ms=1000, max_records=500)
            for tp in list(active):
                records = batches.get(tp, [])
                if not records:
                    if await consumer.position(tp) >= end_hint.get(tp, 0):
                        active.discard(tp)  # past the hint and nothing more: the end
                    continue
                for rec in records:
                    if rec.timestamp > started_ms or selection.past_end(tp.partition, rec.offset):
                        active.discard(tp)
                        break
                    if not selection.in_time(rec.timestamp):
                        continue
                    try:
                        item = _item_from(
                            topic_kind,
                            rec.value,
                            rec.key,
                            message_id(topic, tp.partition, rec.offset),
                            rec.headers,
                        )
                    except MalformedMessage:
                        yield ("malformed", tp.partition)
                        continue
                    if selection.accepts(item):
                        yield Candidate(tp.partition, rec.offset, rec.timestamp, item)
                    elif item.replay_id and not selection.include_replays:
                        yield ("replayed", tp.partition)
    finally:
        await consumer.stop()


def replayed(item: ImagePath, cand: Candidate, topic: str, replay_id: str, model: str | None) -> ImagePath:
    """The message to re-publish: same image, tagged as a replay, maybe pinned to a model."""
    attrs = dict(item.attrs)
    attrs["replay"] = {
        "id": replay_id,
        "topic": topic,
        "partition": cand.partition,
        "offset": cand.offset,
        "timestamp": cand.timestamp_ms / 1000,
        "submitted_at": item.submitted_at,
    }
    return ImagePath(
        image_id=item.image_id,
        path=item.path,
        source=item.source,
        submitted_at=time.time(),
        model=model if model is not None else item.model,
        replay_id=replay_id,
        attrs=attrs,
    )


async def replay(
    *,
    topic_kind: str = "paths",
    selection: Selection = Selection(),
    model: str | None = None,
    dry_run: bool = False,
    replay_id: str | None = None,
    settings: Settings | None = None,
    progress: Callable[[int], object] | None = None,
) -> ReplayReport:
    """Select records of ``imgflow-<topic_kind>`` and (unless ``dry_run``) re-publish them."""
    settings = settings or get_settings()
    if topic_kind not in ("paths", "frames", "failed"):
        raise ValueError("replay reads the paths topic, the frames topic or the failed topic (dead letters)")
    if model is not None:
        from models.registry import registry_for

        # A registered model only (the workers refuse any other): fail here, not on every worker.
        registry = registry_for(settings.model_dir_paths, settings.model_spec_path)
        registry.scan()
        model = str(registry.resolve(model).spec_path)
    replay_id = replay_id or f"replay-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    topic = settings.topic(topic_kind)
    report = ReplayReport(replay_id=replay_id, topic=topic)
    batch: list[ImagePath] = []

    async def flush() -> None:
        if batch and not dry_run:
            report.sent += len(await publish_paths(batch, settings=settings))
            if progress:
                progress(len(batch))
        batch.clear()

    async for found in scan(settings.bootstrap_servers, topic, selection, topic_kind=topic_kind):
        if isinstance(found, tuple):
            if found[0] == "replayed":
                report.skipped_replays += 1
            else:
                report.skipped_malformed += 1
            continue
        report.per_partition[found.partition] += 1
        batch.append(replayed(found.item, found, topic, replay_id, model))
        if len(batch) >= 200:
            await flush()
    await flush()
    return report


def image_ids_with_label(settings: Settings, labels: Iterable[str]) -> frozenset[str]:
    """Images whose current label (latest prediction) is one of ``labels``."""
    client, db = mongo_db(settings)
    try:
        return frozenset(d["_id"] for d in db.images.find({"label": {"$in": list(labels)}}, {"_id": 1}))
    finally:
        client.close()


def since_until(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    now = time.time()
    return (parse_time(since, now) if since else None, parse_time(until, now) if until else None)


__all__ = [
    "ReplayReport",
    "Selection",
    "parse_offsets",
    "parse_time",
    "replay",
]
